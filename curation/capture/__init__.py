"""Pure capture logic: from the bytes of a call to the row a curator sees. No I/O."""

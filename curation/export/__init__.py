"""The export path: included rows -> validated, token-counted training files."""

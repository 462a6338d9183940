"""The curation path: list, decide, correct, audit, purge."""

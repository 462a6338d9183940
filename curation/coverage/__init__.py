"""Clusters and coverage (issue 16): pure functions over prompts and their MinHash
signatures. ``signatures`` turns prompts into signatures, ``groups`` clusters them,
assigns new ones, orders a review and finds near-duplicates. No I/O: the database
side is ``curation.db.coverage``, the orchestration ``curation.curate.coverage``."""

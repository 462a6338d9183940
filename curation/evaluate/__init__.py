"""The evaluate path: replay held-out curated rows against models and compare."""

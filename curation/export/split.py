"""The train/validation split, keyed on the prompt alone.

A row's split depends only on its normalised user_prompt, so it never moves
as the dataset grows: a nightly rebuild cannot leak validation rows into
training.
"""

from __future__ import annotations

import hashlib


def normalise(user_prompt: str) -> str:
    return " ".join(user_prompt.lower().split())


def is_validation(user_prompt: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha256(normalise(user_prompt).encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64

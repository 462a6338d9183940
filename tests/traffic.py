"""Generated traffic from known templates, so the true clusters are known (coverage
tests and bench/coverage.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

TEMPLATES = (
    "what will the weather be like in {} on {} and should I bring an umbrella",
    "translate the phrase {} into {} for a formal business letter to a client",
    "book a table for {} people at the {} restaurant tonight around eight",
    "how many calories are in a bowl of {} served with {} and a side salad",
    "write a short haiku about {} and the quiet {} of early morning",
    "convert {} us dollars to {} using today's exchange rate and show the fee",
    "who won the football match between {} and {} last weekend and what was the score",
    "remind me to call my colleague {} about the {} report before friday",
)
_OPENERS = ("", "", "", "please ", "hey, ", "quick question: ")
_CLOSERS = ("", "", "", " thanks", "?", " - urgent", "!!")


def filler(rng: random.Random) -> str:
    """A slot's value: one or two made-up words, so no two templates share them by design."""
    words = [
        "".join(rng.choices("bcdfghklmnprstvz", k=2))
        + rng.choice("aeiou")
        + str(rng.randrange(100))
        for _ in range(rng.choice((1, 1, 2)))
    ]
    return " ".join(words)


def prompt(template: int, rng: random.Random) -> str:
    text = TEMPLATES[template].format(filler(rng), filler(rng))
    if rng.random() < 0.3:
        text = text.capitalize()
    if rng.random() < 0.1:
        text = text.upper()
    return rng.choice(_OPENERS) + text + rng.choice(_CLOSERS)


def traffic(n: int, seed: int = 16, groups: int = len(TEMPLATES)) -> Iterator[tuple[int, str]]:
    """``n`` (template, prompt) pairs over the first ``groups`` templates; a few
    templates are much more frequent than others, as in production."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(groups)]
    for _ in range(n):
        (t,) = rng.choices(range(groups), weights)
        yield t, prompt(t, rng)

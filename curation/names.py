"""Namespace names become part of SQL identifiers, so they are checked first."""

from __future__ import annotations

import re

from curation.errors import InvalidInput

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
TABLE_SUFFIX = "_openai_chat_completion"


def is_valid(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def validate(name: str) -> str:
    """Return ``name`` if it may be a namespace, else raise InvalidInput."""
    if not is_valid(name):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise InvalidInput(
            f"invalid namespace name {shown!r}: use 1-40 characters, a lowercase letter "
            "first, then lowercase letters, digits or '_' (e.g. 'locations')"
        )
    return name


def table_name(namespace: str) -> str:
    """The per-namespace partition a curator queries in psql."""
    return validate(namespace) + TABLE_SUFFIX

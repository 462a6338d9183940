"""A doctor check's result, the three ways to make one, and what they share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from curation.db import doctor as db
from curation.errors import CurationError

Status = Literal["ok", "warn", "fail"]

SHOWN = 3  # namespaces, tables or rows named in one line before "and N more"


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: Status
    message: str


def ok(name: str, message: str) -> Check:
    return Check(name=name, status="ok", message=message)


def warn(name: str, message: str) -> Check:
    return Check(name=name, status="warn", message=message)


def fail(name: str, message: str) -> Check:
    return Check(name=name, status="fail", message=message)


def healthy(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that cannot be answered (a refused query, a bad models file) fails alone."""
    try:
        with db.answering(name):
            return check()
    except CurationError as exc:
        return fail(name, str(exc))


def listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"

"""Type-checked reads of untrusted JSON, and the one error capture parsing raises.

A request or a response is production traffic: any JSON value can sit where
the API reference promises an object. Capture code reads it only through
these accessors, so a wrong type is a value to skip or an ``Unrecordable``,
never an ``AttributeError`` that stops the recorder.
"""

from __future__ import annotations

from typing import Any

INT32 = 2**31


class Unrecordable(ValueError):
    """A capture that cannot become a row (the reason, never the body, in the message)."""


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def arr(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def int32(value: Any) -> int | None:
    """``value`` if it is an integer a PostgreSQL ``integer`` column holds, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and -INT32 <= value < INT32:
        return value
    return None


def index(value: Any, default: int, limit: int, what: str) -> int:
    """A small non-negative array index (``default`` when absent), else Unrecordable."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit:
        return value
    raise Unrecordable(f"{what} index is not an integer in [0, {limit})")


def expect_obj(value: Any, what: str) -> dict[str, Any]:
    """``value`` as an object (None reads as empty), else Unrecordable."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unrecordable(f"{what} is not a JSON object")
    return value


def expect_text(value: Any, what: str) -> str | None:
    """``value`` as a string or None, else Unrecordable."""
    if value is None or isinstance(value, str):
        return value
    raise Unrecordable(f"{what} is not a string")

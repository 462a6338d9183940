"""Shared output helpers: one ``--json`` option, one table printer, and
``visible`` for captured text, which is untrusted: printed raw, an escape
sequence in a prompt would retitle or clear the curator's terminal."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def dumps(data: Any) -> str:
    """JSON as readable UTF-8, but with the characters a terminal acts on (DEL, C1, bidi
    overrides) as ``\\uXXXX`` escapes: the same data, safe to print (json.dumps already
    escapes C0)."""
    text = json.dumps(data, indent=2, default=_default, ensure_ascii=False)
    return _CONTROL.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


# C0 controls but newline and tab, DEL, C1 controls, and the bidi overrides that reorder text
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """``str(value)`` with control characters written as escapes (``\\x1b``)."""
    return _CONTROL.sub(_escape, str(value))


def cell(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    text = " ".join(visible(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aligned plain-text columns, like psql's default output."""
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        click.echo(dumps(data))
    elif columns is not None:
        click.echo(table(data, columns))
    else:
        for key, value in data.items():
            click.echo(f"{key}: {visible(value) if value is not None else ''}")

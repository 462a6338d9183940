"""Named SQL queries, loaded once from ``sql/*.sql``.

Each query sits under a ``-- name: <name>`` header and uses ``%(param)s``
placeholders. Queries on a namespace's own table use ``{table}`` and are
composed with ``psycopg.sql.Identifier`` after the name is validated. A query
may leave other ``{placeholders}`` to be filled with named fragments (a WHERE
condition, an ORDER BY list), so each combination is a fixed query text that
an index can serve, never a catch-all of ``(%(x)s IS NULL OR ...)``.

psycopg is imported when a query is first composed, not with this module: the
CLI imports it for every command, ``curation --help`` included.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from curation import names

if TYPE_CHECKING:
    from psycopg import sql
    from psycopg.sql import Composed as Composed

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _all() -> dict[str, str]:
    from importlib import resources

    found: dict[str, str] = {}
    for entry in resources.files("curation.db.sql").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        parts = _HEADER.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name} defined twice")
            found[name] = body.strip()
    return found


def get(name: str) -> sql.SQL:
    from psycopg import sql

    return sql.SQL(_all()[name])


def compose(name: str, **parts: str | Sequence[str]) -> Composed:
    """Query ``name`` with each ``{part}`` filled by the named fragments (joined by newlines)."""
    return get(name).format(**_fragments(parts))


def for_namespace(name: str, namespace: str, **parts: str | Sequence[str]) -> Composed:
    """A query over ``<namespace>_openai_chat_completion`` (``parts`` as in ``compose``)."""
    from psycopg import sql

    table = sql.Identifier(names.table_name(namespace))
    return get(name).format(table=table, **_fragments(parts))


def _fragments(parts: dict[str, str | Sequence[str]]) -> dict[str, sql.Composable]:
    from psycopg import sql

    return {
        key: sql.SQL("\n").join([get(n) for n in ([value] if isinstance(value, str) else value)])
        for key, value in parts.items()
    }

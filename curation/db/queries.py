"""Named SQL queries, loaded once from ``sql/*.sql``.

Each query sits under a ``-- name: <name>`` header and uses ``%(param)s``
placeholders. Queries on a namespace's own table use ``{table}`` and are
composed with ``psycopg.sql.Identifier`` after the name is validated.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from psycopg import sql

from curation import names

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _all() -> dict[str, str]:
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
    return sql.SQL(_all()[name])


def for_namespace(name: str, namespace: str) -> sql.Composed:
    """A query over ``<namespace>_openai_chat_completion``."""
    table = sql.Identifier(names.table_name(namespace))
    return get(name).format(table=table)

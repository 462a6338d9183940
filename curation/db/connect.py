"""Connections: which database, and turning connection failures into one line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.config import Settings, mask_url
from curation.db import embedded
from curation.errors import DatabaseUnavailable, NotFound

Connection = psycopg.Connection[dict[str, Any]]


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's URL (started if needed)."""
    if settings.database_url:
        return settings.database_url
    return embedded.ensure_running(settings.data_dir)


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {mask_url(url)}: {reason}; "
        "check DATABASE_URL and that the server is running"
    )


def open_connection(url: str, *, autocommit: bool = False, timeout: int = 5) -> Connection:
    try:
        return psycopg.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=timeout
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[Connection]:
    """A connection that commits on success and rolls back on error."""
    conn = open_connection(url, autocommit=autocommit)
    try:
        with conn:
            yield conn
    except psycopg.errors.UndefinedTable as exc:
        raise unknown_namespace(exc) or exc from exc
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc


def unknown_namespace(exc: psycopg.errors.UndefinedTable) -> NotFound | None:
    """A query on <ns>_openai_chat_completion for a namespace that does not exist."""
    found = re.search(
        r'relation "([a-z][a-z0-9_]*)_openai_chat_completion" does not exist', str(exc)
    )
    if found is None:
        return None
    return NotFound(f"unknown namespace {found.group(1)!r}; see: curation ns list")

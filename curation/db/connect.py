"""Connections: which database, and turning connection failures into one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row

from curation.config import Settings, mask_url
from curation.db import embedded
from curation.errors import DatabaseUnavailable

Connection = psycopg.Connection[dict[str, object]]


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
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc

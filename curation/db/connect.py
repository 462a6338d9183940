"""Connections: which database, and turning database errors into one line.

``translate`` is the one place a ``psycopg.Error`` becomes a ``CurationError``:
what the user can fix (the URL, a value, a privilege, a namespace) is told in
one line; anything else stays a bug and propagates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from curation.config import Settings, mask_url
from curation.db import embedded
from curation.db.errors import first_line
from curation.errors import (
    CurationError,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    PermissionDenied,
)

Connection = psycopg.Connection[dict[str, Any]]

URL_HINT = "use postgresql://USER@HOST:PORT/DBNAME or 'host=HOST dbname=DBNAME'"


def database_url(settings: Settings) -> str:
    """DATABASE_URL (checked), or the embedded server's URL (started if needed)."""
    if settings.database_url:
        check_url(settings.database_url)
        return settings.database_url
    return embedded.ensure_running(settings.data_dir)


def check_url(url: str) -> dict[str, str]:
    """The URL's libpq parameters, or InvalidInput (never echoing a password)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        secret = mask_url(url) != url  # libpq's reason quotes the text: keep it out
        reason = "" if secret else f" ({first_line(exc)})"
        raise InvalidInput(
            f"DATABASE_URL is not a PostgreSQL connection string{reason}: {URL_HINT}"
        ) from exc
    return {k: str(v) for k, v in params.items() if v is not None}


def psql_invocation(url: str) -> tuple[str, dict[str, str]]:
    """psql's connection argument and extra environment for ``url``.

    The password travels in PGPASSWORD: an argument is visible to every user
    of the machine in ``ps``, the environment only to the same user.
    """
    params = check_url(url)
    if "sslpassword" in params:
        raise InvalidInput(
            "DATABASE_URL holds an sslpassword, which psql could only take on its command line "
            "(visible in ps): run psql yourself with a service file (PGSERVICEFILE)"
        )
    password = params.pop("password", None)
    return conninfo.make_conninfo("", **params), {"PGPASSWORD": password} if password else {}


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {mask_url(url)}: {first_line(exc)}; "
        "check DATABASE_URL and that the server is running"
    )


def translate(url: str, exc: psycopg.Error) -> CurationError | None:
    """The one-line error a user can act on, or None (a bug: let it propagate)."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(
            f"the database refused: {first_line(exc)}; grant this login the curation_curator "
            "role (or the owner's), or use another DATABASE_URL"
        )
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return unknown_namespace(exc)
    if isinstance(exc, psycopg.DataError):
        return InvalidInput(f"the database refused a value: {first_line(exc)}; check the arguments")
    if isinstance(exc, psycopg.OperationalError):
        return unavailable(url, exc)
    return None


def open_connection(url: str, *, autocommit: bool = False, timeout: int = 5) -> Connection:
    try:
        return psycopg.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=timeout
        )
    except psycopg.Error as exc:
        error = translate(url, exc)
        if error is None:
            raise
        raise error from exc


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[Connection]:
    """A connection that commits on success and rolls back on error."""
    conn = open_connection(url, autocommit=autocommit)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        error = translate(url, exc)
        if error is None:
            raise
        raise error from exc


def unknown_namespace(exc: psycopg.errors.UndefinedTable) -> NotFound | None:
    """A query on <ns>_openai_chat_completion for a namespace that does not exist."""
    found = re.search(
        r'relation "([a-z][a-z0-9_]*)_openai_chat_completion" does not exist', str(exc)
    )
    if found is None:
        return None
    return NotFound(f"unknown namespace {found.group(1)!r}; see: curation ns list")

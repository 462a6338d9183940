"""psycopg's errors become the project's here, for the proxy's async connections.

Callers above ``db/`` never see a psycopg exception: ``wrap_errors`` turns a
failure into ``DatabaseUnavailable`` (PostgreSQL is away: retry later) or
``RowRefused`` (PostgreSQL refused the data: set the row aside); anything else
is a bug and propagates unchanged. The CLI's one-line translation of the sync
connections, into the errors a user can act on, is ``connect.translate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from curation.errors import CurationError, DatabaseUnavailable, RowRefused

# The connection itself failed: the server is away, the network cut, a socket error.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)
# Any failure of the database: a reason to retry later rather than a bug.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, OSError)


@contextmanager
def wrap_errors(
    unavailable: tuple[type[BaseException], ...] = DATABASE_ERRORS,
    *,
    rows_on: psycopg.AsyncConnection[Any] | None = None,
    refused: str | None = None,
) -> Iterator[None]:
    """Raise the project's error for what the block raised.

    ``unavailable``: the exceptions that mean PostgreSQL is away. ``rows_on``: the
    block writes rows on this connection, and a failure that leaves it healthy is
    the rows' fault, whatever it is (a value psycopg could not send, a constraint):
    ``RowRefused``. One that broke the connection means PostgreSQL is away.
    ``refused``: any other psycopg error becomes a ``CurationError`` saying this.
    """
    try:
        yield
    except CurationError:
        raise  # translated already, by a block inside this one
    except Exception as exc:
        if rows_on is not None and not (rows_on.broken or rows_on.closed):
            raise RowRefused(first_line(exc)) from exc
        if isinstance(exc, unavailable):
            raise DatabaseUnavailable(first_line(exc)) from exc
        if refused is not None and isinstance(exc, psycopg.Error):
            raise CurationError(f"{refused}: {first_line(exc)}") from exc
        raise


def first_line(exc: BaseException) -> str:
    """The first line of an error's text, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

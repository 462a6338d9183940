"""What ``curation doctor`` asks the database: read-only questions, one function each.

Every question runs inside ``answering``, which turns any database error into
a one-line ``CurationError``: a check that cannot be answered is reported as
failed, and the other checks still run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from curation.db import export, queries
from curation.db.connect import Connection
from curation.errors import CurationError


@contextmanager
def answering(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CurationError(f"cannot check {what}: {first}") from exc


def revision(conn: Connection) -> str | None:
    """The schema's alembic revision (None: never migrated)."""
    row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL AS ok").fetchone()
    if not (row and row["ok"]):
        return None
    got = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(got["version_num"]) if got else None


def citext(conn: Connection) -> tuple[str | None, str | None]:
    """(installed version, version the server could install); None where there is none."""
    row = conn.execute(queries.get("doctor_citext")).fetchone()
    return (row["installed"], row["available"]) if row else (None, None)


def curator_role_exists(conn: Connection) -> bool:
    return conn.execute(queries.get("doctor_curator_role")).fetchone() is not None


@dataclass(frozen=True, kw_only=True)
class GrantGap:
    table: str
    missing: list[str]  # privileges the curator role should hold and does not
    extra: list[str]  # privileges it holds and should not


def grant_gaps(conn: Connection) -> list[GrantGap]:
    """Tables whose grants to curation_curator differ from what the migrations set."""
    shared = [
        GrantGap(table=r["table_name"], missing=["SELECT"], extra=[])
        for r in conn.execute(queries.get("doctor_shared_grant_gaps"))
    ]
    return shared + [
        GrantGap(table=r["table_name"], missing=list(r["missing"]), extra=list(r["extra"]))
        for r in conn.execute(queries.get("doctor_table_grant_gaps"))
    ]


def spool_checkpoint(conn: Connection, spool_id: str) -> tuple[int, int] | None:
    """(segment, byte offset) the spool ``spool_id`` is written up to; None: nothing yet."""
    row = conn.execute(queries.get("get_checkpoint"), {"spool_id": spool_id}).fetchone()
    return (int(row["segment"]), int(row["byte_offset"])) if row else None


def corrections(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """(namespace, id, original, correction) of corrected text answers, at most ``limit``."""
    return list(conn.execute(queries.get("doctor_corrections"), {"limit": limit}))


def included_counts(conn: Connection) -> dict[str, int]:
    return {
        r["namespace"]: int(r["included"]) for r in conn.execute(queries.get("doctor_included"))
    }


def first_included(conn: Connection, namespace: str, limit: int) -> bytes:
    """The first ``limit`` rows an export of ``namespace`` would read, as the exporter reads
    them (``export.copy_rows``: binary COPY tuples, concatenated)."""
    ids = [
        int(r["id"])
        for r in conn.execute(
            queries.for_namespace("doctor_first_included", namespace), {"limit": limit}
        )
    ]
    if not ids:
        return b""
    return b"".join(export.copy_rows(conn, namespace, export.Filters(ids=ids)))

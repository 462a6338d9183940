"""Feedback from production in PostgreSQL: call ids, feedback events, proposals.

A call's id may reach the database by two roads in either order: the writer
maps it to its row (``recorded_call``) with the batch, and feedback names it.
Neither takes a lock of its own; the primary key of ``recorded_call`` is the
meeting point. Feedback first inserts a placeholder mapping (``ON CONFLICT DO
NOTHING``) and only then, in a new statement, reads the mapping; the writer
upserts the mapping and only then, in a new statement, looks for feedback to
attach. Whichever inserts the key second waits for the first to commit, so its
next statement sees what the first wrote: feedback is attached exactly once,
by whichever side comes second, and nothing depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.db import queries
from curation.db.connect import Connection
from curation.db.errors import CONNECTION_ERRORS, wrap_errors

AsyncConnection = psycopg.AsyncConnection[dict[str, Any]]
CURATOR = "feedback"  # changed_by of proposals from feedback in curation_audit


@dataclass(frozen=True, kw_only=True)
class Event:
    """One feedback event, checked (proxy/feedback.py): ``correction`` is the JSON text
    of an assistant message."""

    call_id: str
    score: float | None = None
    label: str | None = None
    comment: str | None = None
    correction: str | None = None


@dataclass(frozen=True, kw_only=True)
class Stored:
    id: int
    namespace: str | None  # None: the call is not recorded (yet)
    row_id: int | None
    proposed: bool


async def connect(url: str) -> AsyncConnection:
    """The proxy's feedback connection; a statement never holds a request long."""
    with _translated():
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=5
        )
        await conn.execute(queries.get("feedback_session"))
    return conn


def _translated() -> AbstractContextManager[None]:
    """PostgreSQL away (or too slow: a statement timeout) is DatabaseUnavailable; any
    other refusal is a bug (the event was checked) and a plain CurationError."""
    return wrap_errors(CONNECTION_ERRORS, refused="PostgreSQL refused the feedback")


async def close(conn: AsyncConnection) -> None:
    with _translated():
        await conn.close()


async def add(conn: AsyncConnection, event: Event) -> Stored:
    """Store ``event``, attached to its row if the call is recorded, in one transaction."""
    with _translated():
        return await _add(conn, event)


async def _add(conn: AsyncConnection, event: Event) -> Stored:
    async with conn.transaction():
        await conn.execute(queries.get("feedback_claim_call"), {"call_id": event.call_id})
        cur = await conn.execute(
            queries.get("feedback_insert"),
            {
                "call_id": event.call_id,
                "score": event.score,
                "label": event.label,
                "comment": event.comment,
                "correction": event.correction,
            },
        )
        row = await cur.fetchone()
        assert row is not None  # the claim above made sure the mapping exists
        proposed = 0
        if row["row_id"] is not None and event.correction is not None:
            proposed = await propose(conn, [{**row, "correction": event.correction}])
    return Stored(
        id=int(row["id"]), namespace=row["namespace"], row_id=row["row_id"], proposed=proposed > 0
    )


async def propose(conn: AsyncConnection, attached: Iterable[dict[str, Any]]) -> int:
    """Each correction becomes its row's proposal (as the curator "feedback")."""
    done = 0
    await conn.execute(queries.get("feedback_as_curator"), {"curator": CURATOR})
    for f in attached:
        cur = await conn.execute(
            queries.get("feedback_propose"),
            {
                "correction": f["correction"],
                "feedback_id": f["id"],
                "namespace": f["namespace"],
                "row_id": f["row_id"],
            },
        )
        done += cur.rowcount
    await conn.execute(queries.get("feedback_as_curator"), {"curator": ""})
    return done


# -- what curators read (sync, the CLI) ----------------------------------


def counts(conn: Connection, namespace: str, row_id: int) -> dict[str, int]:
    row = conn.execute(
        queries.get("feedback_counts"), {"namespace": namespace, "row_id": row_id}
    ).fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


def events(conn: Connection, namespace: str, row_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The row's latest feedback events, newest first."""
    return conn.execute(
        queries.get("feedback_events"), {"namespace": namespace, "row_id": row_id, "limit": limit}
    ).fetchall()


def counts_of_rows(
    conn: Connection, namespace: str, ids: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Positive and negative events of each of ``ids`` that has any."""
    found = conn.execute(
        queries.get("feedback_counts_of_rows"), {"namespace": namespace, "ids": list(ids)}
    )
    return {int(r["row_id"]): {"positive": r["positive"], "negative": r["negative"]} for r in found}

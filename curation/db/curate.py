"""The curator's queries (curate.sql): rows listed, read, decided, corrected, purged.

``curation/curate/`` decides what to ask; this module only runs the named
queries and hands back plain rows, ids and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from curation.db import queries

if TYPE_CHECKING:  # psycopg itself is imported with the first query, not for `curation --help`
    from curation.db.connect import Connection
    from curation.db.queries import Composed


def set_curator(conn: Connection, curator: str) -> None:
    """Name who changes rows in this transaction, for the audit trigger."""
    conn.execute(queries.get("set_curator"), {"curator": curator})


def list_query(
    namespace: str,
    *,
    filters: Sequence[str],
    order: str,
    search: str | None,
    since: datetime | None,
    limit: int,
    flag: str | None = None,
) -> tuple[Composed, dict[str, Any]]:
    """list_rows with the named filter fragments and order: one fixed text per combination."""
    query = queries.for_namespace("list_rows", namespace, filters=filters, order=order)
    params = {"namespace": namespace, "search": search, "since": since, "limit": limit}
    return query, {**params, "flag": flag}


def list_rows(
    conn: Connection,
    namespace: str,
    *,
    filters: Sequence[str],
    order: str,
    search: str | None,
    since: datetime | None,
    limit: int,
    flag: str | None = None,
) -> list[dict[str, Any]]:
    query, params = list_query(
        namespace, filters=filters, order=order, search=search, since=since, limit=limit, flag=flag
    )
    return conn.execute(query, params).fetchall()


def get_row(conn: Connection, namespace: str, row_id: int) -> dict[str, Any] | None:
    return conn.execute(
        queries.for_namespace("get_row", namespace), {"namespace": namespace, "id": row_id}
    ).fetchone()


def ids_matching(conn: Connection, namespace: str, search: str) -> list[int]:
    return [
        int(r["id"])
        for r in conn.execute(
            queries.for_namespace("ids_matching", namespace),
            {"namespace": namespace, "search": search},
        )
    ]


def row_states(conn: Connection, namespace: str, ids: Sequence[int]) -> dict[int, str]:
    """The state of each of ``ids`` that exists."""
    return {
        int(r["id"]): r["state"]
        for r in conn.execute(
            queries.for_namespace("row_states", namespace),
            {"namespace": namespace, "ids": list(ids)},
        )
    }


def set_state(
    conn: Connection, namespace: str, ids: Sequence[int], state: str, note: str | None
) -> None:
    conn.execute(
        queries.for_namespace("set_state", namespace),
        {"namespace": namespace, "ids": list(ids), "state": state, "note": note},
    )


def set_correction(conn: Connection, namespace: str, row_id: int, correction: str) -> None:
    """``correction``: the JSON text of an assistant message."""
    conn.execute(
        queries.for_namespace("set_correction", namespace),
        {"namespace": namespace, "id": row_id, "correction": correction},
    )


def history(conn: Connection, namespace: str, row_id: int) -> list[dict[str, Any]]:
    return conn.execute(queries.get("history"), {"namespace": namespace, "id": row_id}).fetchall()


def purge_batch(
    conn: Connection,
    namespace: str,
    *,
    curator: str,
    after: int,
    older_than: str,
    include_excluded: bool,
    force: bool,
    batch: int,
) -> list[int]:
    """Delete up to ``batch`` old rows with ids above ``after`` in one short transaction
    (audited as ``curator``); returns the ids deleted."""
    with conn.transaction():
        set_curator(conn, curator)
        return [
            int(r["id"])
            for r in conn.execute(
                queries.for_namespace("purge_batch", namespace),
                {
                    "namespace": namespace,
                    "after": after,
                    "older_than": older_than,
                    "include_excluded": include_excluded,
                    "force": force,
                    "batch": batch,
                },
            )
        ]


def next_pending(conn: Connection, namespace: str, skip: Sequence[int]) -> dict[str, Any] | None:
    """Lock and return the next row to review (call inside a transaction)."""
    return conn.execute(
        queries.for_namespace("next_pending", namespace),
        {"namespace": namespace, "skip": list(skip)},
    ).fetchone()


def review_progress(conn: Connection, namespace: str) -> tuple[int, int]:
    """(reviewed, total) rows of ``namespace``."""
    row = conn.execute(
        queries.for_namespace("review_progress", namespace), {"namespace": namespace}
    ).fetchone()
    assert row is not None
    return int(row["reviewed"]), int(row["total"])


def stats(conn: Connection, namespace: str | None) -> list[dict[str, Any]]:
    """Counts per namespace and model, of every namespace or of ``namespace``."""
    filters = [] if namespace is None else ["stats_namespace"]
    return conn.execute(
        queries.compose("stats", filters=filters), {"namespace": namespace}
    ).fetchall()


def new_since_last_job(conn: Connection, namespace: str | None) -> list[dict[str, Any]]:
    """Rows included since each namespace's last job, and its training prompt."""
    with conn.transaction():
        conn.execute(queries.get("stats_without_jit"))
        return conn.execute(queries.get("new_since_last_job"), {"namespace": namespace}).fetchall()

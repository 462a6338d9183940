"""Clusters and assignments (coverage.sql): read rows to cluster, write clusters back.

``curation.curate.coverage`` decides; this module runs the named queries and hands
back plain rows. Signatures travel as the bytes stored in ``coverage_row``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from psycopg import sql
from psycopg.rows import tuple_row

from curation import names
from curation.db import queries
from curation.db.connect import Connection
from curation.db.export import Filters

FETCH = 10_000  # rows per round trip when reading a whole namespace


def lock(conn: Connection, namespace: str) -> None:
    """Hold the namespace's coverage lock until the transaction ends."""
    conn.execute(queries.get("coverage_lock"), {"namespace": namespace})


def prompts(conn: Connection, namespace: str, *, unassigned: bool) -> Iterator[dict[str, Any]]:
    """(id, user_prompt, times_seen) of the namespace's rows, or of those not assigned yet,
    by id; read through a server-side cursor, so memory holds one batch of rows."""
    name = "coverage_unassigned" if unassigned else "coverage_all_rows"
    with conn.cursor(name="coverage_prompts") as cur:
        cur.itersize = FETCH
        yield from cur.execute(queries.for_namespace(name, namespace), {"namespace": namespace})


def representatives(conn: Connection, namespace: str) -> list[tuple[int, bytes]]:
    """(cluster id, its example's signature) of each cluster (plain tuples: tens of
    thousands of them)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(queries.get("coverage_representatives"), {"namespace": namespace})
        return [(int(c), bytes(s)) for c, s in cur]


def clear(conn: Connection, namespace: str) -> None:
    conn.execute(queries.get("coverage_clear"), {"namespace": namespace})


def new_clusters(conn: Connection, namespace: str, count: int) -> list[int]:
    """Ids of ``count`` new (empty) clusters."""
    if count == 0:
        return []
    ids = [int(r["id"]) for r in conn.execute(queries.get("coverage_new_ids"), {"count": count})]
    conn.execute(queries.get("coverage_add_clusters"), {"ids": ids, "namespace": namespace})
    return ids


def write_rows(conn: Connection, namespace: str, rows: Iterable[tuple[int, int, bytes]]) -> None:
    """(row id, cluster id, signature) assignments, by binary COPY."""
    query = sql.SQL(
        "COPY coverage_row (row_id, namespace, cluster_id, signature) FROM STDIN (FORMAT binary)"
    )
    with conn.cursor() as cur, cur.copy(query) as copy:
        copy.set_types(["int8", "text", "int8", "bytea"])
        for row_id, cluster_id, signature in rows:
            copy.write_row((row_id, namespace, cluster_id, signature))


def refresh(conn: Connection, namespace: str) -> None:
    """Cluster sizes, traffic and examples as the rows are now; empty clusters dropped."""
    conn.execute(queries.for_namespace("coverage_refresh", namespace), {"namespace": namespace})


def add_totals(conn: Connection, totals: dict[int, tuple[int, int, int]]) -> None:
    """Per cluster: (rows, traffic, most-seen row) that an assignment run added."""
    clusters = sorted(totals)
    conn.execute(
        queries.get("coverage_add_totals"),
        {
            "clusters": clusters,
            "sizes": [totals[c][0] for c in clusters],
            "traffic": [totals[c][1] for c in clusters],
            "examples": [totals[c][2] for c in clusters],
        },
    )


def report(conn: Connection, namespace: str) -> list[dict[str, Any]]:
    return conn.execute(
        queries.for_namespace("coverage_report", namespace), {"namespace": namespace}
    ).fetchall()


def review_plan(conn: Connection, namespace: str) -> list[tuple[int, int, bool]]:
    """(cluster id, traffic, covered) of every cluster with a pending row."""
    found = conn.execute(
        queries.for_namespace("coverage_review_plan", namespace), {"namespace": namespace}
    )
    return [(int(r["cluster_id"]), int(r["traffic"]), bool(r["covered"])) for r in found]


def covered(conn: Connection, namespace: str, cluster_id: int) -> bool:
    row = conn.execute(
        queries.for_namespace("coverage_cluster_covered", namespace), {"cluster_id": cluster_id}
    ).fetchone()
    return bool(row and row["covered"])


def cluster_rows(
    conn: Connection,
    namespace: str,
    cluster_id: int,
    *,
    pending: bool,
    skip: Sequence[int] = (),
    limit: int = 1000,
) -> list[tuple[int, bytes]]:
    """(id, signature) of a cluster's pending rows (not in ``skip``) or its included rows."""
    state = "coverage_pending" if pending else "coverage_included"
    query = queries.for_namespace("coverage_candidates", namespace, state=state)
    found = conn.execute(query, {"cluster_id": cluster_id, "skip": list(skip), "limit": limit})
    return [(int(r["id"]), bytes(r["signature"])) for r in found]


def lock_pending(conn: Connection, namespace: str, row_id: int) -> dict[str, Any] | None:
    """The row, locked, if it is pending and nobody else holds it (inside a transaction)."""
    return conn.execute(
        queries.for_namespace("coverage_lock_pending", namespace),
        {"namespace": namespace, "id": row_id},
    ).fetchone()


def included_signatures(
    conn: Connection, namespace: str, other_than: Sequence[int]
) -> list[dict[str, Any]]:
    """(id, user_prompt, signature or None) of the included rows other than ``other_than``."""
    return conn.execute(
        queries.for_namespace("coverage_included_signatures", namespace),
        {"namespace": namespace, "ids": list(other_than)},
    ).fetchall()


def rows_by_id(conn: Connection, namespace: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """(id, user_prompt, signature or None) of ``ids``."""
    return conn.execute(
        queries.for_namespace("coverage_prompts", namespace),
        {"namespace": namespace, "ids": list(ids)},
    ).fetchall()


def export_rows(conn: Connection, namespace: str, filters: Filters) -> list[dict[str, Any]]:
    """(id, user_prompt, times_seen, corrected, signature or None) of the rows an export
    with ``filters`` writes."""
    table = sql.Identifier(names.table_name(namespace))
    query = queries.get("coverage_export_rows").format(
        export=queries.for_namespace("export_rows", namespace), table=table
    )
    return conn.execute(query, {**filters.params(), "namespace": namespace}).fetchall()

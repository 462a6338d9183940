"""Eval runs, relabel proposals and serving settings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from curation.db import queries
from curation.db.connect import Connection


def latest_dataset(conn: Connection, namespace: str) -> int | None:
    row = conn.execute(queries.get("latest_dataset"), {"namespace": namespace}).fetchone()
    return int(row["id"]) if row else None


def eval_rows(
    conn: Connection, namespace: str, *, ids: Sequence[int] | None, dataset_id: int | None
) -> list[dict[str, Any]]:
    return conn.execute(
        queries.for_namespace("eval_rows", namespace),
        {
            "ids": list(ids) if ids else None,
            "dataset_id": dataset_id,
        },
    ).fetchall()


def record_run(conn: Connection, run: dict[str, Any], results: Iterable[tuple[Any, ...]]) -> int:
    row = conn.execute(
        queries.get("insert_eval_run"), {**run, "summary": Jsonb(run["summary"])}
    ).fetchone()
    assert row is not None
    run_id = int(row["id"])
    with conn.cursor() as cur, cur.copy(queries.get("copy_eval_results")) as copy:
        for result in results:
            copy.write_row((run_id, *result))
    return run_id


def history(conn: Connection, namespace: str, limit: int = 20) -> list[dict[str, Any]]:
    return conn.execute(
        queries.get("eval_history"), {"namespace": namespace, "limit": limit}
    ).fetchall()


def has_clean_eval(conn: Connection, namespace: str, model: str) -> bool:
    row = conn.execute(
        queries.get("has_clean_eval"), {"namespace": namespace, "model": model}
    ).fetchone()
    return bool(row and row["ok"])


def relabel_rows(
    conn: Connection, namespace: str, ids: Sequence[int] | None, limit: int
) -> list[dict[str, Any]]:
    return conn.execute(
        queries.for_namespace("relabel_rows", namespace),
        {
            "ids": list(ids) if ids else None,
            "limit": limit,
        },
    ).fetchall()


def set_proposal(
    conn: Connection, namespace: str, row_id: int, proposal: dict[str, Any], model: str
) -> None:
    conn.execute(
        queries.for_namespace("set_proposal", namespace),
        {
            "id": row_id,
            "proposal": json.dumps(proposal),
            "model": model,
        },
    )


def decide_proposals(
    conn: Connection, namespace: str, ids: Sequence[int], accept: bool
) -> list[int]:
    name = "accept_proposals" if accept else "reject_proposals"
    return [
        int(r["id"])
        for r in conn.execute(queries.for_namespace(name, namespace), {"ids": list(ids)})
    ]


def set_serving(
    conn: Connection,
    namespace: str,
    model: str | None,
    percent: int,
    *,
    endpoint: str | None = None,
    key_env: str | None = None,
) -> None:
    """Serve with ``model``: at ``endpoint`` (its key in the variable ``key_env``), or upstream."""
    conn.execute(
        queries.get("set_serving"),
        {
            "namespace": namespace,
            "model": model,
            "percent": percent,
            "endpoint": endpoint,
            "key_env": key_env,
        },
    )


def serving(conn: Connection, namespace: str) -> dict[str, Any]:
    row = conn.execute(queries.get("get_serving"), {"namespace": namespace}).fetchone()
    return row or {}

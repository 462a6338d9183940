"""Fine-tuning job records."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from curation.db import queries
from curation.db.connect import Connection
from curation.errors import NotFound

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def insert(
    conn: Connection,
    *,
    namespace: str,
    dataset_id: int,
    base_model: str,
    suffix: str | None,
    method: str,
    hyperparameters: dict[str, Any],
    backend: str = "openai",
) -> dict[str, Any]:
    row = conn.execute(
        queries.get("insert_job"),
        {
            "namespace": namespace,
            "dataset_id": dataset_id,
            "base_model": base_model,
            "suffix": suffix,
            "method": method,
            "hyperparameters": Jsonb(hyperparameters),
            "backend": backend,
        },
    ).fetchone()
    assert row is not None
    return row


def update(
    conn: Connection, job_id: int, *, clear_error: bool = False, **fields: Any
) -> dict[str, Any]:
    params = {
        k: fields.get(k)
        for k in (
            "provider_job_id",
            "training_file_id",
            "validation_file_id",
            "status",
            "fine_tuned_model",
            "result_location",
            "trained_tokens",
            "error",
        )
    }
    row = conn.execute(
        queries.get("update_job"),
        {
            **params,
            "id": job_id,
            "clear_error": clear_error,
            "finished": fields.get("status") in TERMINAL,
        },
    ).fetchone()
    assert row is not None
    return row


def get(conn: Connection, ref: str) -> dict[str, Any]:
    row = conn.execute(queries.get("get_job"), {"ref": ref}).fetchone()
    if row is None:
        raise NotFound(f"unknown job {ref!r}; see: curation finetune list")
    return row


def list_for(conn: Connection, namespace: str | None, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(
        queries.get("list_jobs"), {"namespace": namespace, "limit": limit}
    ).fetchall()


def last_submitted(conn: Connection, namespace: str, backend: str) -> dict[str, Any] | None:
    return conn.execute(
        queries.get("last_submitted_job"), {"namespace": namespace, "backend": backend}
    ).fetchone()


def reusable(
    conn: Connection, namespace: str, dataset_id: int, base_model: str, backend: str
) -> dict[str, Any] | None:
    return conn.execute(
        queries.get("reusable_job"),
        {
            "namespace": namespace,
            "dataset_id": dataset_id,
            "base_model": base_model,
            "backend": backend,
        },
    ).fetchone()


def try_lock(conn: Connection, namespace: str) -> bool:
    """A session-level advisory lock per namespace; held until the connection closes."""
    row = conn.execute(queries.get("try_namespace_lock"), {"namespace": namespace}).fetchone()
    return bool(row and row["locked"])

"""The local backend's job state: claiming, heartbeats, finishing, cancel flags, events.

The queue is ``fine_tune_job`` itself (see ``sql/local_jobs.sql``): the row
every backend and ``curation finetune`` already read is the only copy of
the job's state, so nothing can drift between a queue and the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from curation.db import queries
from curation.db.connect import Connection
from curation.errors import NotFound

SESSION_PREFIX = "curation-worker "


@dataclass(frozen=True, kw_only=True)
class LocalJob:
    id: int
    namespace: str
    status: str
    base_model: str
    method: str
    suffix: str | None
    training_file: str | None
    validation_file: str | None
    hyperparameters: dict[str, Any]
    checkpoint_dir: str | None
    worker: str | None
    attempts: int
    cancel_requested_at: datetime | None
    fine_tuned_model: str | None
    result_location: str | None
    trained_tokens: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LocalJob:
        return cls(
            id=row["id"],
            namespace=row["namespace"],
            status=row["status"],
            base_model=row["base_model"],
            method=row["method"],
            suffix=row["suffix"],
            training_file=row["training_file_id"],
            validation_file=row["validation_file_id"],
            hyperparameters=dict(row["hyperparameters"] or {}),
            checkpoint_dir=row["checkpoint_dir"],
            worker=row["worker"],
            attempts=row["attempts"],
            cancel_requested_at=row["cancel_requested_at"],
            fine_tuned_model=row["fine_tuned_model"],
            result_location=row["result_location"],
            trained_tokens=row["trained_tokens"],
            error=row["error"],
        )


def _one(conn: Connection, name: str, params: dict[str, Any]) -> LocalJob | None:
    row = conn.execute(queries.get(name), params).fetchone()
    return LocalJob.from_row(row) if row else None


def name_session(conn: Connection, worker: str) -> None:
    """Name the session after the worker: its liveness is that the session exists."""
    conn.execute(queries.get("name_session"), {"application_name": SESSION_PREFIX + worker})


def submit(
    conn: Connection,
    job_id: int,
    *,
    base_model: str,
    method: str,
    training_file: str,
    validation_file: str | None,
    checkpoint_dir: str,
    hyperparameters: dict[str, Any],
) -> LocalJob:
    job = _one(
        conn,
        "submit_local_job",
        {
            "id": job_id,
            "base_model": base_model,
            "method": method,
            "training_file": training_file,
            "validation_file": validation_file,
            "checkpoint_dir": checkpoint_dir,
            "hyperparameters": Jsonb(hyperparameters),
        },
    )
    if job is None:
        raise NotFound(f"unknown job {job_id}; see: curation finetune list")
    return job


def claim(
    conn: Connection, worker: str, *, stale_after: float, job_id: int | None = None
) -> LocalJob | None:
    """The next job for ``worker`` (only ``job_id`` if given), now running, or None."""
    return _one(
        conn,
        "claim_local_job",
        {"worker": worker, "stale_after": stale_after, "job_id": job_id},
    )


def beat(conn: Connection, job_id: int, worker: str) -> tuple[bool, bool]:
    """(still ours, cancel requested)."""
    row = conn.execute(queries.get("beat_local_job"), {"id": job_id, "worker": worker}).fetchone()
    if row is None:
        return False, False
    return True, row["cancel_requested_at"] is not None


def finish(
    conn: Connection,
    job_id: int,
    worker: str,
    status: str,
    *,
    fine_tuned_model: str | None = None,
    result_location: str | None = None,
    trained_tokens: int | None = None,
    error: str | None = None,
) -> LocalJob | None:
    """Record the end; None if the job is no longer this worker's."""
    return _one(
        conn,
        "finish_local_job",
        {
            "id": job_id,
            "worker": worker,
            "status": status,
            "fine_tuned_model": fine_tuned_model,
            "result_location": result_location,
            "trained_tokens": trained_tokens,
            "error": error,
        },
    )


def release(conn: Connection, job_id: int, worker: str) -> LocalJob | None:
    return _one(conn, "release_local_job", {"id": job_id, "worker": worker})


def request_cancel(conn: Connection, job_id: int) -> LocalJob:
    """Flag the job (a job no worker holds ends at once); an ended job is returned as is."""
    return _one(conn, "cancel_local_job", {"id": job_id}) or get(conn, job_id)


def cancel_orphaned(conn: Connection, job_id: int, worker: str) -> LocalJob | None:
    return _one(conn, "cancel_orphaned_local_job", {"id": job_id, "worker": worker})


def worker_connected(conn: Connection, worker: str) -> bool:
    row = conn.execute(queries.get("worker_connected"), {"worker": worker}).fetchone()
    return bool(row and row["connected"])


def workers_connected(conn: Connection) -> int:
    row = conn.execute(queries.get("workers_connected")).fetchone()
    return int(row["workers"]) if row else 0


def get(conn: Connection, job_id: int) -> LocalJob:
    job = _one(conn, "get_local_job", {"id": job_id})
    if job is None:
        raise NotFound(f"unknown local job {job_id}; see: curation finetune list")
    return job


def list_jobs(conn: Connection, limit: int) -> list[LocalJob]:
    rows = conn.execute(queries.get("list_local_jobs"), {"limit": limit}).fetchall()
    return [LocalJob.from_row(r) for r in rows]


def add_event(
    conn: Connection, job_id: int, message: str, data: dict[str, Any], level: str = "info"
) -> None:
    conn.execute(
        queries.get("insert_job_event"),
        {"job_id": job_id, "level": level, "message": message, "data": Jsonb(data)},
    )


def events(conn: Connection, job_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` events, oldest first."""
    return conn.execute(queries.get("job_events"), {"job_id": job_id, "limit": limit}).fetchall()

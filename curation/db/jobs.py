"""Fine-tuning job records: rows of ``fine_tune_job`` become ``Job`` here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from curation.db import queries
from curation.db.connect import Connection
from curation.errors import NotFound


class JobStatus(enum.StrEnum):
    """A job's state: ours before it reaches a backend, then OpenAI's vocabulary
    (jobs/backends ``STATUSES``). A ``str``: JSON and SQL see the plain value."""

    PENDING = "pending"
    UPLOAD_FAILED = "upload_failed"
    CREATE_FAILED = "create_failed"
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True, kw_only=True)
class Job:
    """One ``fine_tune_job`` row, its columns in the table's order."""

    id: int
    namespace: str
    dataset_id: int | None
    provider_job_id: str | None
    base_model: str
    suffix: str | None
    method: str
    hyperparameters: dict[str, Any]
    training_file_id: str | None
    validation_file_id: str | None
    status: JobStatus
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    backend: str
    result_location: str | None
    checkpoint_dir: str | None
    worker: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    cancel_requested_at: datetime | None
    attempts: int
    dataset_sha256: str | None = None  # its dataset's hash, where the query joins it
    joined: bool = field(default=False, repr=False)  # read with dataset_sha256

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """A column this record lacks is a TypeError: add it here, or --json loses it."""
        columns = dict(row)
        status = JobStatus(columns.pop("status"))
        return cls(**columns, status=status, joined="dataset_sha256" in columns)

    def as_dict(self) -> dict[str, Any]:
        """The row as it was read (what ``--json`` prints): columns in order, the dataset's
        hash only where the query joined it."""
        shown = [f.name for f in fields(self) if f.name != "joined"]
        if not self.joined:
            shown.remove("dataset_sha256")
        return {name: getattr(self, name) for name in shown}


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
) -> Job:
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
    return Job.from_row(row)


def update(conn: Connection, job_id: int, *, clear_error: bool = False, **changes: Any) -> Job:
    params = {
        k: changes.get(k)
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
            "finished": changes.get("status") in TERMINAL,
        },
    ).fetchone()
    assert row is not None
    return Job.from_row(row)


def get(conn: Connection, ref: str) -> Job:
    row = conn.execute(queries.get("get_job"), {"ref": ref}).fetchone()
    if row is None:
        raise NotFound(f"unknown job {ref!r}; see: curation finetune list")
    return Job.from_row(row)


def list_for(conn: Connection, namespace: str | None, limit: int = 50) -> list[Job]:
    found = conn.execute(queries.get("list_jobs"), {"namespace": namespace, "limit": limit})
    return [Job.from_row(row) for row in found.fetchall()]


def last_submitted(conn: Connection, namespace: str, backend: str) -> Job | None:
    row = conn.execute(
        queries.get("last_submitted_job"), {"namespace": namespace, "backend": backend}
    ).fetchone()
    return None if row is None else Job.from_row(row)


def reusable(
    conn: Connection, namespace: str, dataset_id: int, base_model: str, backend: str
) -> Job | None:
    row = conn.execute(
        queries.get("reusable_job"),
        {
            "namespace": namespace,
            "dataset_id": dataset_id,
            "base_model": base_model,
            "backend": backend,
        },
    ).fetchone()
    return None if row is None else Job.from_row(row)


def try_lock(conn: Connection, namespace: str) -> bool:
    """A session-level advisory lock per namespace; held until the connection closes."""
    row = conn.execute(queries.get("try_namespace_lock"), {"namespace": namespace}).fetchone()
    return bool(row and row["locked"])

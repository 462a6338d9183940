"""Submit, follow and cancel fine-tuning jobs; every step is recorded first.

Each step commits on its own (the connection is autocommit), so a failure
leaves an honest record: an upload that worked before job creation failed
is kept, and the next submit of the same dataset reuses the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curation.db import jobs
from curation.db.connect import Connection
from curation.errors import Conflict, TooFewExamples, UpstreamError
from curation.export.run import MIN_EXAMPLES, ExportResult
from curation.jobs.provider import Provider


@dataclass(frozen=True)
class SubmitOptions:
    namespace: str
    method: str = "supervised"
    epochs: int | None = None
    suffix: str | None = None
    seed: int | None = None


def submit(
    conn: Connection, provider: Provider, export: ExportResult, opts: SubmitOptions
) -> dict[str, Any]:
    manifest = export.manifest
    train_examples = int(manifest["counts"]["train"])
    if train_examples < MIN_EXAMPLES:
        raise TooFewExamples(
            f"{train_examples} valid training examples in {opts.namespace}; fine-tuning needs at least "
            f"{MIN_EXAMPLES}: include {MIN_EXAMPLES - train_examples} more (curation export shows skipped rows)"
        )
    base_model = manifest["base_model"]
    epochs = opts.epochs or manifest["epochs"]
    job = jobs.reusable(conn, opts.namespace, export.dataset_id, base_model) or jobs.insert(
        conn,
        namespace=opts.namespace,
        dataset_id=export.dataset_id,
        base_model=base_model,
        suffix=opts.suffix or opts.namespace,
        method=opts.method,
        hyperparameters={"n_epochs": epochs, "seed": opts.seed},
    )
    try:
        train_id = job["training_file_id"] or provider.upload(export.train_path)
        job = jobs.update(conn, job["id"], training_file_id=train_id)
        valid_id = job["validation_file_id"]
        if export.validation_path is not None and not valid_id:
            valid_id = provider.upload(export.validation_path)
            job = jobs.update(conn, job["id"], validation_file_id=valid_id)
    except UpstreamError as exc:
        jobs.update(conn, job["id"], status="upload_failed", error=str(exc))
        raise
    params: dict[str, Any] = {
        "model": base_model,
        "training_file": train_id,
        "suffix": (opts.suffix or opts.namespace)[:64],
        "method": {"type": opts.method, opts.method: {"hyperparameters": {"n_epochs": epochs}}},
        "metadata": {
            "namespace": opts.namespace,
            "dataset_sha256": export.sha256,
            "dataset_id": str(export.dataset_id),
        },
    }
    if valid_id:
        params["validation_file"] = valid_id
    if opts.seed is not None:
        params["seed"] = opts.seed
    try:
        created = provider.create_job(**params)
    except UpstreamError as exc:
        jobs.update(conn, job["id"], status="create_failed", error=str(exc))
        raise
    return jobs.update(
        conn, job["id"], provider_job_id=created["id"], status=created["status"], clear_error=True
    )


def refresh(conn: Connection, provider: Provider, job: dict[str, Any]) -> dict[str, Any]:
    """Bring the local record up to date with the provider's."""
    if not job["provider_job_id"]:
        return job
    remote = provider.retrieve(job["provider_job_id"])
    error = remote.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    return jobs.update(
        conn,
        job["id"],
        status=remote["status"],
        fine_tuned_model=remote.get("fine_tuned_model"),
        trained_tokens=remote.get("trained_tokens"),
        error=message,
    )


def wait(
    conn: Connection,
    provider: Provider,
    job: dict[str, Any],
    *,
    interval: float = 5.0,
    max_interval: float = 60.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll with backoff until the job ends; show each new event once."""
    if not job["provider_job_id"]:
        raise Conflict(
            f"job {job['id']} never reached the provider ({job['status']}): submit it again"
        )
    shown: set[str] = set()
    while True:
        job = refresh(conn, provider, job)
        for event in provider.events(job["provider_job_id"]):
            if event["id"] not in shown:
                shown.add(event["id"])
                if on_event:
                    on_event(event)
        if job["status"] in jobs.TERMINAL:
            return job
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def cancel(conn: Connection, provider: Provider, job: dict[str, Any]) -> dict[str, Any]:
    if not job["provider_job_id"]:
        return jobs.update(conn, job["id"], status="cancelled")
    remote = provider.cancel(job["provider_job_id"])
    return jobs.update(conn, job["id"], status=remote["status"])

"""Submit, follow and cancel fine-tuning jobs on any backend; every step is recorded first.

Each step commits on its own (the connection is autocommit), so a failure
leaves an honest record: an upload that worked before job creation failed
is kept, and the next submit of the same dataset to the same backend reuses
the file. The row's ``backend`` says who trains it; status, wait and cancel
ask that backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.db import jobs
from curation.db.connect import Connection
from curation.db.jobs import Job, JobStatus
from curation.errors import Conflict, TooFewExamples, UpstreamError
from curation.export.run import MIN_EXAMPLES, ExportResult
from curation.jobs.backends import TERMINAL, Backend, JobEvent, JobSpec, RemoteJob

# Backends whose worker writes the job's state into fine_tune_job itself: a
# refresh reads the row back instead of writing over the worker's progress.
SELF_RECORDING = frozenset({"local"})


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    namespace: str
    method: str = "supervised"
    epochs: int | None = None
    suffix: str | None = None
    seed: int | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)  # passed to the backend


def submit(conn: Connection, backend: Backend, export: ExportResult, opts: SubmitOptions) -> Job:
    """Record the job, upload its files, and create it at ``backend``."""
    check_size(export, opts.namespace)
    manifest = export.manifest
    base_model = manifest["base_model"]
    epochs = opts.epochs or manifest["epochs"]
    job = jobs.reusable(
        conn, opts.namespace, export.dataset_id, base_model, backend.name
    ) or jobs.insert(
        conn,
        namespace=opts.namespace,
        dataset_id=export.dataset_id,
        base_model=base_model,
        suffix=opts.suffix or opts.namespace,
        method=opts.method,
        hyperparameters={**opts.hyperparameters, "n_epochs": epochs, "seed": opts.seed},
        backend=backend.name,
    )
    job = upload(conn, backend, job, export)
    assert job.training_file_id is not None  # upload() recorded it or raised
    spec = JobSpec(
        base_model=base_model,
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        method=opts.method,
        epochs=epochs,
        suffix=opts.suffix or opts.namespace,
        seed=opts.seed,
        hyperparameters=opts.hyperparameters,
        metadata={
            "namespace": opts.namespace,
            "dataset_sha256": export.sha256,
            "dataset_id": str(export.dataset_id),
        },
        local_job_id=job.id,
    )
    try:
        remote = backend.submit(spec)
    except UpstreamError as exc:
        jobs.update(conn, job.id, status=JobStatus.CREATE_FAILED, error=str(exc))
        raise
    if backend.name in SELF_RECORDING:  # its worker may be running it already
        return jobs.update(conn, job.id, provider_job_id=remote.id)
    return jobs.update(
        conn, job.id, provider_job_id=remote.id, status=remote.status, clear_error=True
    )


def check_size(export: ExportResult, namespace: str) -> None:
    train_examples = int(export.manifest["counts"]["train"])
    if train_examples < MIN_EXAMPLES:
        raise TooFewExamples(
            f"{train_examples} valid training examples in {namespace}; fine-tuning needs at least "
            f"{MIN_EXAMPLES}: include {MIN_EXAMPLES - train_examples} more (curation export shows skipped rows)"
        )


def upload(conn: Connection, backend: Backend, job: Job, export: ExportResult) -> Job:
    """Upload what this job has not uploaded yet; each reference is recorded at once."""
    try:
        if not job.training_file_id:
            job = jobs.update(conn, job.id, training_file_id=backend.upload(export.train_path))
        if export.validation_path is not None and not job.validation_file_id:
            valid_id = backend.upload(export.validation_path)
            job = jobs.update(conn, job.id, validation_file_id=valid_id)
    except UpstreamError as exc:
        jobs.update(conn, job.id, status=JobStatus.UPLOAD_FAILED, error=str(exc))
        raise
    return job


def refresh(conn: Connection, backend: Backend, job: Job) -> Job:
    """Bring the local record up to date with the backend's."""
    if not job.provider_job_id:
        return job
    return record(conn, backend, job, backend.status(job.provider_job_id))


def record(conn: Connection, backend: Backend, job: Job, remote: RemoteJob) -> Job:
    if backend.name in SELF_RECORDING:
        return jobs.get(conn, str(job.id))
    return jobs.update(
        conn,
        job.id,
        status=remote.status,
        fine_tuned_model=remote.model,
        result_location=remote.result_location,
        trained_tokens=remote.trained_tokens,
        error=remote.error,
    )


def wait(
    conn: Connection,
    backend: Backend,
    job: Job,
    *,
    interval: float = 5.0,
    max_interval: float = 60.0,
    on_event: Callable[[JobEvent], None] | None = None,
) -> Job:
    """Poll with backoff until the job ends; show each new event once."""
    reference = job.provider_job_id
    if not reference:
        raise Conflict(
            f"job {job.id} never reached the {backend.name} backend ({job.status}): submit it again"
        )
    shown: set[str] = set()
    while True:
        job = refresh(conn, backend, job)
        for event in backend.events(reference):
            if event.id not in shown:
                shown.add(event.id)
                if on_event:
                    on_event(event)
        if job.status in TERMINAL:
            return job
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def cancel(conn: Connection, backend: Backend, job: Job) -> Job:
    if not job.provider_job_id:
        return jobs.update(conn, job.id, status=JobStatus.CANCELLED)
    return record(conn, backend, job, backend.cancel(job.provider_job_id))

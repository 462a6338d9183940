"""The ``local`` backend: a LoRA adapter trained here, by ``curation train-worker``.

Submitting queues the recorded ``fine_tune_job`` row itself (the local
backend's job reference is ``local-<id>``); a worker process claims it from
PostgreSQL and trains it with TRL and PEFT (``curation/train``). Nothing
here imports torch: this module only reads and writes the job's row and
events, and starts a worker when nobody else will run the job.

Where the job's files go: ``<data dir>/train/job-<id>/`` (``checkpoints/``,
``adapter/``, ``merged/`` with ``merge=true``, ``worker.log``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from curation.config import Settings
from curation.db import connect, local_jobs
from curation.db.local_jobs import LocalJob
from curation.errors import InvalidInput, UpstreamError
from curation.jobs.backends import TERMINAL, JobEvent, JobSpec, RemoteJob
from curation.train import config as train_config
from curation.train import data, trainer
from curation.train.checkpoints import JobDirs

PREFIX = "local-"


def create(settings: Settings) -> LocalBackend:
    return LocalBackend(settings)


def job_ref(job_id: int) -> str:
    return f"{PREFIX}{job_id}"


def parse_ref(ref: str) -> int:
    """``local-12`` or ``12`` -> 12."""
    text = ref.removeprefix(PREFIX)
    if not text.isdigit():
        raise InvalidInput(f"{ref!r} is not a local job: local jobs are named local-<id>")
    return int(text)


def remote(job: LocalJob) -> RemoteJob:
    status = "queued" if job.status == "pending" else job.status
    return RemoteJob(
        id=job_ref(job.id),
        status=status,
        model=job.fine_tuned_model,
        result_location=job.result_location,
        trained_tokens=job.trained_tokens,
        error=job.error,
        raw={"worker": job.worker, "attempts": job.attempts, "checkpoint_dir": job.checkpoint_dir},
    )


def model_reference(base_model: str) -> str:
    """A local model directory as an absolute path (the worker runs elsewhere);
    anything else is a hub id (``Qwen/Qwen2.5-0.5B-Instruct``), kept as given."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if base_model.startswith(("/", "./", "../", "~")):
        raise InvalidInput(f"model directory {base_model} does not exist")
    return base_model


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._url: str | None = None
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def url(self) -> str:
        if self._url is None:
            self._url = connect.database_url(self.settings)
        return self._url

    def upload(self, path: Path) -> str:
        """Nothing to send: the worker reads the file where the export wrote it."""
        if not path.is_file():
            raise InvalidInput(f"training file {path} does not exist: export again")
        return str(path.resolve())

    def submit(self, spec: JobSpec) -> RemoteJob:
        if spec.local_job_id is None:
            raise InvalidInput("the local backend trains a recorded job: give its local id")
        if spec.method not in data.METHODS:
            raise InvalidInput(
                f"method {spec.method!r}: the local trainer runs {' or '.join(data.METHODS)}"
            )
        if not spec.lora:
            raise InvalidInput("the local trainer trains LoRA adapters only")
        settings = dict(spec.hyperparameters)
        for key, value in (("n_epochs", spec.epochs), ("seed", spec.seed)):
            if value is not None:
                settings[key] = value
        train_config.parse(settings)  # a typo fails here, not in the worker
        dirs = JobDirs.of(self.settings.data_dir, spec.local_job_id)
        with connect.connection(self.url(), autocommit=True) as conn:
            job = local_jobs.submit(
                conn,
                spec.local_job_id,
                base_model=model_reference(spec.base_model),
                method=spec.method,
                training_file=spec.training_file,
                validation_file=spec.validation_file,
                checkpoint_dir=str(dirs.checkpoints),
                hyperparameters=settings,
            )
            local_jobs.add_event(conn, job.id, f"queued: {job.base_model} ({job.method})", {})
        return remote(job)

    def status(self, job_id: str) -> RemoteJob:
        with connect.connection(self.url(), autocommit=True) as conn:
            job = local_jobs.get(conn, parse_ref(job_id))
        self._restart_if_crashed(job)
        return remote(job)

    def events(self, job_id: str, limit: int = 50) -> list[JobEvent]:
        with connect.connection(self.url(), autocommit=True) as conn:
            rows = local_jobs.events(conn, parse_ref(job_id), limit)
        return [
            JobEvent(
                id=str(r["id"]),
                created_at=r["created_at"].timestamp(),
                message=r["message"],
                level=r["level"],
                data=r["data"],
            )
            for r in rows
        ]

    def cancel(self, job_id: str) -> RemoteJob:
        """Flag the job; its worker stops within a second or two. A job nobody runs ends now."""
        with connect.connection(self.url(), autocommit=True) as conn:
            job = local_jobs.request_cancel(conn, parse_ref(job_id))
            if (
                job.status not in TERMINAL
                and job.worker
                and not local_jobs.worker_connected(conn, job.worker)
            ):
                job = local_jobs.cancel_orphaned(conn, job.id, job.worker) or job
        return remote(job)

    def list(self, limit: int = 100) -> list[RemoteJob]:
        with connect.connection(self.url(), autocommit=True) as conn:
            return [remote(j) for j in local_jobs.list_jobs(conn, limit)]

    def ensure_worker(self, job_id: str) -> bool:
        """Start ``curation train-worker --once --job ID`` as a child process
        unless the job has ended or a connected worker will run it; True if started."""
        ident = parse_ref(job_id)
        with connect.connection(self.url(), autocommit=True) as conn:
            job = local_jobs.get(conn, ident)
            if job.status in TERMINAL:
                return False
            if job.worker and local_jobs.worker_connected(conn, job.worker):
                return False
            if not job.worker and local_jobs.workers_connected(conn) > 0:
                return False
        return self._start_child(job)

    def _start_child(self, job: LocalJob) -> bool:
        child = self.children.get(job.id)
        if child is not None and child.poll() is None:
            return False
        trainer.require_extra()
        dirs = JobDirs.of(self.settings.data_dir, job.id)
        dirs.root.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "curation", "train-worker", "--once", "--job", str(job.id)]
        env = {
            **os.environ,
            "DATABASE_URL": self.url(),
            "CURATION_DATA_DIR": str(self.settings.data_dir),
        }
        with dirs.log.open("ab") as out:
            self.children[job.id] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return True

    def _restart_if_crashed(self, job: LocalJob) -> None:
        """A child that died mid-job (OOM, SIGKILL) is started again: the job
        resumes from its checkpoint, and fails after ``max_attempts``."""
        child = self.children.get(job.id)
        if child is None or child.poll() is None or job.status in TERMINAL:
            return
        if job.status == "queued" and job.worker is None and child.returncode != 0:
            raise UpstreamError(
                f"the training worker of job {job.id} exited with code {child.returncode} "
                f"before starting: see {JobDirs.of(self.settings.data_dir, job.id).log}"
            )
        self.ensure_worker(job_ref(job.id))

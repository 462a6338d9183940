"""``curation train-worker``: run queued local jobs, their state in PostgreSQL.

A worker claims a job (``db/local_jobs``), trains it (``train/trainer``) and
records how it ended. Beside the training, a heartbeat thread beats on the
job every second on its own connection and reads the cancel flag, so a
cancel stops the job within a training step. A worker that dies (even by
SIGKILL) leaves its job ``running`` under a session that no longer exists:
the next worker claims it and resumes from its last checkpoint. SIGTERM or
SIGINT checkpoints, hands the job back to the queue and exits.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from curation.db import connect, local_jobs
from curation.db.local_jobs import LocalJob
from curation.errors import CurationError, InvalidInput
from curation.train import config as train_config
from curation.train import progress, trainer
from curation.train.checkpoints import JobDirs

log = logging.getLogger(__name__)

CANCEL = "cancel"
LOST = "lost"  # another worker claimed the job (this one was taken for dead)


@dataclass(frozen=True, kw_only=True)
class Options:
    once: bool = False  # run one waiting job (if any), then exit
    poll: float = 5.0  # seconds between looks at an empty queue
    job_id: int | None = None  # only this job
    stale_after: float = 60.0  # a running job whose worker is silent this long is claimed again
    heartbeat: float = 1.0  # seconds between beats (and cancel checks)
    max_attempts: int = 3  # claims before a job that keeps killing its worker is failed


def worker_name() -> str:
    """host:pid, in ASCII and short: PostgreSQL truncates an application_name
    past 63 bytes and replaces non-ASCII, and the session must match the name."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32]
    return f"{host}:{os.getpid()}"


def student_name(job: LocalJob) -> str:
    """The model name the trained adapter is served under."""
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in (job.suffix or job.namespace))
    return f"{base.lower()}-{job.id}"


def run(url: str, data_dir: Path, opts: Options, say: Callable[[str], None] = print) -> int:
    """Run jobs until stopped (or one, with ``once``); returns how many ran."""
    worker = worker_name()
    shutdown = threading.Event()
    ran = 0
    with _signals(shutdown), connect.connection(url, autocommit=True) as conn:
        local_jobs.name_session(conn, worker)
        say(f"train-worker {worker}: waiting for local jobs")
        while not shutdown.is_set():
            job = local_jobs.claim(conn, worker, stale_after=opts.stale_after, job_id=opts.job_id)
            if job is None:
                if opts.once:
                    break
                shutdown.wait(opts.poll)
                continue
            say(f"train-worker {worker}: job {job.id} ({job.namespace}), attempt {job.attempts}")
            status = run_job(conn, url, data_dir, job, worker, opts, shutdown)
            say(f"train-worker {worker}: job {job.id} {status}")
            ran += 1
            if opts.once:
                break
    return ran


@contextmanager
def _signals(shutdown: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT: checkpoint and hand the job back; a second one stops at once."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if shutdown.is_set():
            raise KeyboardInterrupt
        shutdown.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def run_job(
    conn: connect.Connection,
    url: str,
    data_dir: Path,
    job: LocalJob,
    worker: str,
    opts: Options,
    shutdown: threading.Event,
) -> str:
    """Train one claimed job and record how it ended; returns its status."""
    events = Events(conn, job.id)
    if job.cancel_requested_at is not None:
        events("cancelled before training started", {})
        local_jobs.finish(conn, job.id, worker, "cancelled")
        return "cancelled"
    if job.attempts > opts.max_attempts:
        return _failed(
            conn, job, worker, f"the worker died in each of {opts.max_attempts} attempts", events
        )
    events(f"worker {worker} took the job (attempt {job.attempts})", {"attempt": job.attempts})
    with Heartbeat(url, job.id, worker, opts, shutdown) as beat:
        try:
            outcome = trainer.train(training_job(job, data_dir), Hooks(events, beat))
        except progress.Stopped as stop:
            return _stopped(conn, job, worker, stop, events)
        except CurationError as exc:
            return _failed(conn, job, worker, str(exc), events)
        except KeyboardInterrupt:
            events("worker interrupted: the job is queued again", {}, "warn")
            local_jobs.release(conn, job.id, worker)
            raise
        except Exception as exc:
            traceback.print_exc()
            return _failed(conn, job, worker, f"{type(exc).__name__}: {exc}", events)
    if not outcome.finished:
        events(
            f"worker {worker} stopped at step {outcome.global_step}: the job is queued again",
            {"step": outcome.global_step},
            "warn",
        )
        local_jobs.release(conn, job.id, worker)
        return "queued"
    return _succeeded(conn, job, worker, outcome, events)


def training_job(job: LocalJob, data_dir: Path) -> trainer.Job:
    if not job.training_file:
        raise InvalidInput(f"job {job.id} has no training file: submit it again")
    dirs = (
        JobDirs(Path(job.checkpoint_dir).parent)
        if job.checkpoint_dir
        else JobDirs.of(data_dir, job.id)
    )
    return trainer.Job(
        base_model=job.base_model,
        method=job.method,
        train_file=Path(job.training_file),
        validation_file=Path(job.validation_file) if job.validation_file else None,
        dirs=dirs,
        config=train_config.parse(job.hyperparameters),
        meta={"job_id": job.id, "namespace": job.namespace, "model": student_name(job)},
    )


def _succeeded(
    conn: connect.Connection,
    job: LocalJob,
    worker: str,
    outcome: trainer.Outcome,
    events: Events,
) -> str:
    name = student_name(job)
    merged = f"; merged model at {outcome.merged}" if outcome.merged else ""
    events(
        f"succeeded: adapter at {outcome.adapter}{merged}; serve it as {name}",
        {
            "step": outcome.global_step,
            "adapter": str(outcome.adapter),
            "merged": str(outcome.merged) if outcome.merged else None,
            "model": name,
            "trained_tokens": outcome.trained_tokens,
            "examples_per_second": outcome.examples_per_second,
            "tokens_per_second": outcome.tokens_per_second,
        },
    )
    local_jobs.finish(
        conn,
        job.id,
        worker,
        "succeeded",
        fine_tuned_model=name,
        result_location=str(outcome.adapter),
        trained_tokens=outcome.trained_tokens,
    )
    return "succeeded"


def _stopped(
    conn: connect.Connection, job: LocalJob, worker: str, stop: progress.Stopped, events: Events
) -> str:
    if stop.reason == LOST:
        log.warning("job %s was claimed by another worker; leaving it", job.id)
        return "lost"
    events(f"cancelled at step {stop.step}", {"step": stop.step})
    local_jobs.finish(conn, job.id, worker, "cancelled")
    return "cancelled"


def _failed(
    conn: connect.Connection, job: LocalJob, worker: str, error: str, events: Events
) -> str:
    line = error.strip().splitlines()[0] if error.strip() else "unknown error"
    events(f"failed: {line}", {}, "error")
    local_jobs.finish(conn, job.id, worker, "failed", error=line)
    return "failed"


class Events:
    """Writes a job's events (and echoes them to the worker's log)."""

    def __init__(self, conn: connect.Connection, job_id: int) -> None:
        self.conn, self.job_id = conn, job_id

    def __call__(self, message: str, data: Mapping[str, Any], level: str = "info") -> None:
        print(f"job {self.job_id} {level}: {message}", flush=True)
        local_jobs.add_event(self.conn, self.job_id, message, dict(data), level)


class Hooks:
    """What the trainer sees of the worker: where events go, and whether to stop."""

    def __init__(self, events: Events, beat: Heartbeat) -> None:
        self.events, self.beat = events, beat

    def event(self, message: str, data: Mapping[str, Any], level: str = "info") -> None:
        self.events(message, data, level)

    def stop_reason(self) -> str | None:
        return self.beat.stop_reason()


class Heartbeat:
    """A thread beating on the job on its own connection and reading its cancel flag."""

    def __init__(
        self, url: str, job_id: int, worker: str, opts: Options, shutdown: threading.Event
    ) -> None:
        self.url, self.job_id, self.worker, self.opts = url, job_id, worker, opts
        self.shutdown = shutdown
        self.done = threading.Event()
        self.reason: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def stop_reason(self) -> str | None:
        if self.reason:
            return self.reason
        return progress.SHUTDOWN if self.shutdown.is_set() else None

    def _run(self) -> None:
        conn: connect.Connection | None = None
        silent = 0.0  # seconds without a beat that reached the database
        while not self.done.wait(self.opts.heartbeat):
            try:
                if conn is None:
                    conn = connect.open_connection(self.url, autocommit=True)
                    local_jobs.name_session(conn, self.worker)
                ours, cancel = local_jobs.beat(conn, self.job_id, self.worker)
                silent = 0.0
            except Exception as exc:  # the database is away: keep training, try again
                log.warning("heartbeat of job %s failed: %s", self.job_id, exc)
                _close(conn)
                conn = None
                silent += self.opts.heartbeat
                ours, cancel = silent < self.opts.stale_after, False
            if not ours:
                self.reason = LOST
            elif cancel:
                self.reason = CANCEL
        _close(conn)


def _close(conn: connect.Connection | None) -> None:
    if conn is not None:
        with suppress(Exception):
            conn.close()

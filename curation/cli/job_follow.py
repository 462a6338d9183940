"""A fine-tuning job on the terminal: its one-line summary, its events (a progress bar
on a terminal), following it to its end and what to run next."""

from __future__ import annotations

import sys
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

from curation.errors import UpstreamError
from curation.jobs.backends import TERMINAL, Backend, JobEvent

if TYPE_CHECKING:
    from curation.db.jobs import Job

HOSTED_INTERVAL = 5.0  # first poll of a hosted job (s); backs off to a minute
LOCAL_INTERVAL = 1.0  # a local job's state is one row away


def show_event(event: JobEvent) -> None:
    when = datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S")
    click.echo(f"  {when} {event.level}: {event.message}", err=True)


class EventDisplay:
    """A job's events: a progress bar driven by their step counts on a terminal, else lines."""

    def __init__(self, *, terminal: bool) -> None:
        self.terminal = terminal
        self.bar: Any = None
        self.step = 0

    def __enter__(self) -> EventDisplay:
        return self

    def __call__(self, event: JobEvent) -> None:
        step = event.data.get("step")
        total = event.data.get("total_steps", event.data.get("max_steps"))
        if not (self.terminal and isinstance(step, int) and isinstance(total, int) and total > 0):
            show_event(event)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="training", file=sys.stderr)
            self.bar.__enter__()
        loss = event.data.get("train_loss", event.data.get("loss"))
        if isinstance(loss, int | float):
            self.bar.label = f"training (loss {loss:.4f})"
        self.bar.update(max(step - self.step, 0))
        self.step = max(step, self.step)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)


def job_line(job: Job) -> str:
    reference = job.provider_job_id or "not submitted"
    line = f"job {job.id} ({job.backend} {reference}) {job.namespace}: {job.status}"
    if job.fine_tuned_model:
        line += f", model {job.fine_tuned_model}"
    if job.result_location:
        line += f" at {job.result_location}"
    if job.trained_tokens:
        line += f", {job.trained_tokens} trained tokens"
    if job.error:
        line += f", error: {job.error}"
    return line


def finish(backend: Backend, job: Job) -> None:
    """A job that ended badly is a failure for cron: one line and exit 12."""
    if job.status in ("failed", "cancelled"):
        raise UpstreamError(
            f"job {job.provider_job_id} {job.status}: {job.error or 'no reason given'}"
        )
    if job.status == "succeeded":
        for line in next_steps(backend, job):
            click.echo(f"next: {line}")


def next_steps(backend: Backend, job: Job) -> list[str]:
    """What to run before the student answers (a provider's extra call), then how to serve it."""
    if backend.name == "local":
        return [f"serve it: curation student start {job.id}"]
    model, steps = job.fine_tuned_model, []
    extra = getattr(backend, "next_step", None)
    if extra is not None and (hint := extra(job.provider_job_id, model, job.base_model)):
        steps.append(hint)
    served = getattr(backend, "served_model", lambda m: m)(model)
    key_env = getattr(backend, "key_env", None)
    if job.result_location and key_env:
        steps.append(
            f"serve it: curation serve {job.namespace} --model {served} "
            f"--endpoint {job.result_location} --endpoint-key-env {key_env}"
        )
    return steps


def follow(conn: Any, backend: Backend, job: Job, interval: float | None) -> Job:
    """Follow a job to its end; a local job with no worker alive gets one (a child process)."""
    from curation.jobs import finetune

    ensure_worker = getattr(backend, "ensure_worker", None)
    if ensure_worker is not None and job.provider_job_id and job.status not in TERMINAL:
        ensure_worker(job.provider_job_id)
    local = backend.name in finetune.SELF_RECORDING
    first = interval or (LOCAL_INTERVAL if local else HOSTED_INTERVAL)
    with EventDisplay(terminal=sys.stderr.isatty()) as display:
        return finetune.wait(
            conn,
            backend,
            job,
            interval=first,
            max_interval=max(first, 2.0 if local else 60.0),
            on_event=display,
        )


def submit_and_maybe_wait(
    conn: Any, backend: Backend, job: Job, wait_: bool, interval: float | None
) -> None:
    click.echo(job_line(job))
    if wait_:
        job = follow(conn, backend, job, interval)
        click.echo(job_line(job))
        finish(backend, job)

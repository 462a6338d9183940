from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.export_cmd import build_request, export_options, summary
from curation.cli.output import emit, json_option
from curation.db import jobs as db_jobs
from curation.errors import NOTHING_NEW, UpstreamError
from curation.jobs import finetune, retrain
from curation.jobs.provider import Provider

JOB_COLUMNS = [
    "id",
    "namespace",
    "provider_job_id",
    "base_model",
    "status",
    "fine_tuned_model",
    "created_at",
]


def submit_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--method",
                type=click.Choice(["supervised", "dpo"]),
                default="supervised",
                show_default=True,
            ),
            click.option("--suffix", help="Suffix of the model name (default: the namespace)."),
            click.option("--seed", type=int, help="Seed for a reproducible job."),
            click.option("--wait", "wait_", is_flag=True, help="Follow the job until it ends."),
            click.option(
                "--interval",
                type=float,
                default=5.0,
                show_default=True,
                help="First poll interval with --wait (s).",
            ),
        ]
    ):
        func = option(func)
    return func


def show_event(event: dict[str, Any]) -> None:
    when = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
    click.echo(f"  {when} {event['level']}: {event['message']}", err=True)


def job_line(job: dict[str, Any]) -> str:
    line = f"job {job['id']} ({job['provider_job_id'] or 'not submitted'}) {job['namespace']}: {job['status']}"
    if job.get("fine_tuned_model"):
        line += f", model {job['fine_tuned_model']}"
    if job.get("trained_tokens"):
        line += f", {job['trained_tokens']} trained tokens"
    if job.get("error"):
        line += f", error: {job['error']}"
    return line


def finish(job: dict[str, Any]) -> None:
    """A job that ended badly is a failure for cron: one line and exit 12."""
    if job["status"] in ("failed", "cancelled"):
        raise UpstreamError(
            f"job {job['provider_job_id']} {job['status']}: {job.get('error') or 'no reason given'}"
        )


def submit_and_maybe_wait(
    app: AppContext,
    conn: Any,
    provider: Provider,
    job: dict[str, Any],
    wait_: bool,
    interval: float,
) -> None:
    click.echo(job_line(job))
    if wait_:
        job = finetune.wait(conn, provider, job, interval=interval, on_event=show_event)
        click.echo(job_line(job))
        finish(job)


def prepare(
    app: AppContext,
    conn: Any,
    namespace: str,
    method: str,
    suffix: str | None,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[Any, finetune.SubmitOptions]:
    """The export request and job options that `finetune submit` and `retrain` share."""
    request = build_request(
        app, conn, namespace, Path("."), options, "dpo" if method == "dpo" else "chat"
    )
    return request, finetune.SubmitOptions(namespace, method, options.get("epochs"), suffix, seed)


@click.group("finetune")
def finetune_group() -> None:
    """Fine-tuning jobs at OPENAI_BASE_URL (OpenAI or a compatible provider)."""


@finetune_group.command("submit")
@click.argument("namespace")
@export_options
@submit_options
@pass_app
def submit_command(
    app: AppContext,
    /,
    namespace: str,
    method: str,
    suffix: str | None,
    seed: int | None,
    wait_: bool,
    interval: float,
    **options: Any,
) -> None:
    """Export NAMESPACE, upload the files and create a fine-tuning job."""
    provider = Provider(app.settings())
    with app.db(autocommit=True) as conn:
        request, opts = prepare(app, conn, namespace, method, suffix, seed, options)
        result = retrain.export_into(conn, request, app.settings().data_dir / "exports")
        for line in summary(result):
            click.echo(line, err=True)
        job = finetune.submit(conn, provider, result, opts)
        submit_and_maybe_wait(app, conn, provider, job, wait_, interval)


@finetune_group.command("list")
@click.argument("namespace", required=False)
@json_option
@pass_app
def list_command(app: AppContext, namespace: str | None, as_json: bool) -> None:
    """Jobs recorded here, newest first."""
    with app.db() as conn:
        rows = db_jobs.list_for(conn, namespace)
    emit(rows, as_json, JOB_COLUMNS)


@finetune_group.command("status")
@click.argument("job")
@json_option
@pass_app
def status_command(app: AppContext, job: str, as_json: bool) -> None:
    """Refresh JOB (local id or ftjob-...) from the provider and show it with its events."""
    provider = Provider(app.settings())
    with app.db(autocommit=True) as conn:
        record = finetune.refresh(conn, provider, db_jobs.get(conn, job))
        events = provider.events(record["provider_job_id"]) if record["provider_job_id"] else []
    if as_json:
        emit({**record, "events": events}, True)
        return
    click.echo(job_line(record))
    for event in events[-10:]:
        show_event(event)


@finetune_group.command("wait")
@click.argument("job")
@click.option(
    "--interval", type=float, default=5.0, show_default=True, help="First poll interval (s)."
)
@pass_app
def wait_command(app: AppContext, job: str, interval: float) -> None:
    """Follow JOB until it ends; exit 0 if it succeeded, 12 if it failed or was cancelled."""
    provider = Provider(app.settings())
    with app.db(autocommit=True) as conn:
        record = finetune.wait(
            conn, provider, db_jobs.get(conn, job), interval=interval, on_event=show_event
        )
    click.echo(job_line(record))
    finish(record)


@finetune_group.command("cancel")
@click.argument("job")
@pass_app
def cancel_command(app: AppContext, job: str) -> None:
    """Cancel JOB at the provider."""
    provider = Provider(app.settings())
    with app.db(autocommit=True) as conn:
        record = finetune.cancel(conn, provider, db_jobs.get(conn, job))
    click.echo(job_line(record))


@click.command("retrain")
@click.argument("namespace")
@export_options
@submit_options
@pass_app
def retrain_command(
    app: AppContext,
    /,
    namespace: str,
    method: str,
    suffix: str | None,
    seed: int | None,
    wait_: bool,
    interval: float,
    **options: Any,
) -> None:
    """Nightly: export NAMESPACE and submit a job if the data changed.

    Exit codes: 0 submitted (with --wait: succeeded), 10 nothing new,
    11 too few examples, 12 provider error or failed job, 13 another run busy.
    """
    provider = Provider(app.settings())
    with app.db(autocommit=True) as conn:
        request, opts = prepare(app, conn, namespace, method, suffix, seed, options)
        outcome = retrain.retrain(
            conn, provider, request, opts, app.settings().data_dir / "exports"
        )
        if outcome.kind == "nothing_new":
            prev = outcome.previous or {}
            click.echo(
                f"nothing new for {namespace}: dataset {outcome.export.sha256[:16]}… is what job "
                f"{prev.get('provider_job_id')} ({prev.get('status')}) trained on"
            )
            sys.exit(NOTHING_NEW)
        assert outcome.job is not None
        submit_and_maybe_wait(app, conn, provider, outcome.job, wait_, interval)


COMMANDS = [finetune_group, retrain_command]

"""Fine-tuning commands: finetune submit, list, status, wait, cancel and retrain.

A job's display and following it to its end live in ``job_follow``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.export_cmd import WARNING, build_request, export_options, summary
from curation.cli.job_follow import (
    HOSTED_INTERVAL,
    LOCAL_INTERVAL,
    finish,
    follow,
    job_line,
    show_event,
    submit_and_maybe_wait,
)
from curation.cli.output import emit, json_option
from curation.errors import NOTHING_NEW, InvalidInput
from curation.export import models
from curation.jobs import backends
from curation.jobs.backends import TERMINAL, Backend

# The job path (psycopg, tiktoken) is imported by the commands that use it.
if TYPE_CHECKING:
    from curation.db.jobs import Job
    from curation.export.run import ExportRequest
    from curation.jobs import finetune

JOB_COLUMNS = [
    "id",
    "namespace",
    "backend",
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
                "--backend",
                help=f"Who trains: {', '.join(backends.names())} (default: the namespace's "
                "backend, else the one the model catalogue names for the model, else openai).",
            ),
            click.option(
                "--method",
                type=click.Choice(["supervised", "dpo"]),
                default="supervised",
                show_default=True,
            ),
            click.option("--suffix", help="Suffix of the model name (default: the namespace)."),
            click.option("--seed", type=int, help="Seed for a reproducible job."),
            click.option(
                "--hyperparameter",
                "-H",
                "hyperparameters",
                multiple=True,
                metavar="KEY=VALUE",
                help="A backend hyperparameter, repeatable (VALUE read as JSON when it parses: "
                "-H learning_rate=1e-4 -H lora_r=8; local ones: README, Training locally).",
            ),
            click.option(
                "--merge",
                is_flag=True,
                help="local: also write the base model with the adapter merged in.",
            ),
            click.option("--wait", "wait_", is_flag=True, help="Follow the job until it ends."),
            click.option(
                "--interval",
                type=float,
                help=f"First poll interval with --wait (s; default {HOSTED_INTERVAL:g}, "
                f"local {LOCAL_INTERVAL:g}).",
            ),
        ]
    ):
        func = option(func)
    return func


def choose_backend(app: AppContext, conn: Any, request: ExportRequest, name: str | None) -> Backend:
    """``--backend``, else the namespace's default, else the catalogue's for the model (openai)."""
    from curation.db import namespaces

    chosen = (
        name
        or namespaces.get(conn, request.namespace).backend
        or models.lookup(request.base_model, app.settings().models_file, open_models=True).backend
    )
    return backends.get(chosen, app.settings())


def backend_of(app: AppContext, job: Job) -> Backend:
    return backends.get(job.backend, app.settings())


def prepare(
    app: AppContext,
    conn: Any,
    namespace: str,
    method: str,
    suffix: str | None,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[ExportRequest, finetune.SubmitOptions]:
    """The export request and job options that `finetune submit` and `retrain` share."""
    from curation.jobs import finetune

    hyperparameters = parse_hyperparameters(options.pop("hyperparameters", ()))
    if options.pop("merge", False):
        hyperparameters["merge"] = True
    request = build_request(
        app, conn, namespace, Path("."), options, "dpo" if method == "dpo" else "chat"
    )
    opts = finetune.SubmitOptions(
        namespace=namespace,
        method=method,
        epochs=options.get("epochs"),
        suffix=suffix,
        seed=seed,
        hyperparameters=hyperparameters,
    )
    return request, opts


def parse_hyperparameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is taken as that (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--hyperparameter {pair!r}: write KEY=VALUE, e.g. lora_r=8")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


@click.group("finetune")
def finetune_group() -> None:
    """Fine-tuning jobs: hosted (openai, together) or trained here (local)."""


@finetune_group.command("submit")
@click.argument("namespace")
@export_options
@submit_options
@pass_app
def submit_command(
    app: AppContext,
    /,
    namespace: str,
    backend: str | None,
    method: str,
    suffix: str | None,
    seed: int | None,
    wait_: bool,
    interval: float | None,
    **options: Any,
) -> None:
    """Export NAMESPACE, upload the files and create a fine-tuning job."""
    from curation.jobs import finetune, retrain

    with app.db(autocommit=True) as conn:
        request, opts = prepare(app, conn, namespace, method, suffix, seed, options)
        trainer = choose_backend(app, conn, request, backend)
        result = retrain.export_into(conn, request, app.settings().data_dir / "exports")
        for line in summary(result):
            click.echo(line, err=True)
        job = finetune.submit(conn, trainer, result, opts)
        submit_and_maybe_wait(conn, trainer, job, wait_, interval)


@finetune_group.command("list")
@click.argument("namespace", required=False)
@json_option
@pass_app
def list_command(app: AppContext, namespace: str | None, as_json: bool) -> None:
    """Jobs recorded here, newest first."""
    from curation.db import jobs as db_jobs
    from curation.db import namespaces

    with app.db() as conn:
        if namespace is not None:
            namespaces.get(conn, namespace)  # an unknown one is an error, as in `curation list`
        rows = [j.as_dict() for j in db_jobs.list_for(conn, namespace)]
    emit(rows, as_json, JOB_COLUMNS)


@finetune_group.command("status")
@click.argument("job")
@json_option
@pass_app
def status_command(app: AppContext, job: str, as_json: bool) -> None:
    """Refresh JOB (local id or the backend's id) from its backend; show it with its events."""
    from curation.db import jobs as db_jobs
    from curation.jobs import finetune

    with app.db(autocommit=True) as conn:
        record = db_jobs.get(conn, job)
        backend = backend_of(app, record)
        record = finetune.refresh(conn, backend, record)
        reference = record.provider_job_id
        events = backend.events(reference) if reference else []
    if as_json:
        emit({**record.as_dict(), "events": [asdict(e) for e in events]}, True)
        return
    click.echo(job_line(record))
    for event in events[-10:]:
        show_event(event)


@finetune_group.command("wait")
@click.argument("job")
@click.option("--interval", type=float, help="First poll interval (s).")
@pass_app
def wait_command(app: AppContext, job: str, interval: float | None) -> None:
    """Follow JOB until it ends; exit 0 if it succeeded, 12 if it failed or was cancelled."""
    from curation.db import jobs as db_jobs

    with app.db(autocommit=True) as conn:
        record = db_jobs.get(conn, job)
        backend = backend_of(app, record)
        record = follow(conn, backend, record, interval)
    click.echo(job_line(record))
    finish(backend, record)


@finetune_group.command("cancel")
@click.argument("job")
@pass_app
def cancel_command(app: AppContext, job: str) -> None:
    """Cancel JOB at its backend."""
    from curation.db import jobs as db_jobs
    from curation.jobs import finetune

    with app.db(autocommit=True) as conn:
        record = db_jobs.get(conn, job)
        record = finetune.cancel(conn, backend_of(app, record), record)
    click.echo(job_line(record))
    if record.status not in TERMINAL:
        click.echo(f"cancel requested; follow it to the end: curation finetune wait {record.id}")


@click.command("retrain")
@click.argument("namespace")
@export_options
@submit_options
@click.option(
    "--no-system-prompt",
    is_flag=True,
    help="Train although the namespace has no training system prompt (examples without one).",
)
@pass_app
def retrain_command(
    app: AppContext,
    /,
    namespace: str,
    backend: str | None,
    method: str,
    suffix: str | None,
    seed: int | None,
    wait_: bool,
    interval: float | None,
    no_system_prompt: bool,
    **options: Any,
) -> None:
    """Nightly: export NAMESPACE and submit a job if the data changed.

    Exit codes: 0 submitted (with --wait: succeeded), 10 nothing new,
    11 too few examples, 12 provider error or failed job, 13 another run busy,
    14 personal data found with --pii refuse (nothing written or submitted),
    2 no training system prompt (unless --no-system-prompt).
    """
    from curation.jobs import retrain

    with app.db(autocommit=True) as conn:
        request, opts = prepare(app, conn, namespace, method, suffix, seed, options)
        trainer = choose_backend(app, conn, request, backend)
        outcome = retrain.retrain(
            conn,
            trainer,
            request,
            opts,
            app.settings().data_dir / "exports",
            without_prompt=no_system_prompt,
        )
        for warning in outcome.export.manifest["warnings"]:
            click.echo(f"{WARNING}{warning}", err=True)
        if outcome.kind == "nothing_new":
            prev = outcome.previous
            click.echo(
                f"nothing new for {namespace}: dataset {outcome.export.sha256[:16]}… is what "
                f"{trainer.name} job {prev and prev.provider_job_id} ({prev and prev.status}) "
                "trained on"
            )
            sys.exit(NOTHING_NEW)
        assert outcome.job is not None
        submit_and_maybe_wait(conn, trainer, outcome.job, wait_, interval)


COMMANDS = [finetune_group, retrain_command]

"""Serve a locally trained student: curation student start JOB."""

from __future__ import annotations

import shlex

import click

from curation.cli.context import AppContext, pass_app
from curation.jobs import student


@click.group("student")
def student_group() -> None:
    """Serve a locally trained student with an OpenAI-compatible engine."""


@student_group.command("start")
@click.argument("job")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--engine",
    type=click.Choice(student.ENGINES),
    default="auto",
    show_default=True,
    help="vllm (GPU), transformers (transformers serve) or builtin; auto: the first available.",
)
@pass_app
def start_command(app: AppContext, job: str, port: int, host: str, engine: str) -> None:
    """Serve JOB's LoRA adapter at http://HOST:PORT/v1 until stopped (Ctrl-C or SIGTERM).

    Prints the base URL and the model name to call once the engine answers.
    """
    from curation.db import jobs as db_jobs  # psycopg: not for `curation --help`

    with app.db() as conn:
        row = db_jobs.get(conn, job)
    served = student.Student.of_job(row)
    student.check_port(host, port)
    chosen = student.choose(engine, student.available())
    workdir = student.workdir(served, app.settings().data_dir) if chosen == "transformers" else None
    launch = student.plan(served, chosen, host, port, workdir)
    if chosen == "transformers":
        click.echo(f"merging the adapter into {workdir}/{served.name} (once per adapter)")
        student.prepare(served, launch)
    click.echo(f"starting {chosen}: {shlex.join(launch.argv)}")
    student.run(launch, click.echo)


COMMANDS = [student_group]

from __future__ import annotations

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.params import ROW_ID


@click.command("train-worker")
@click.option("--once", is_flag=True, help="Run one waiting job (if any), then exit.")
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between looks at an empty queue.",
)
@click.option("--job", "job_id", type=ROW_ID, help="Run only this job (its local id).")
@click.option(
    "--stale-after",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds without a heartbeat after which a running job is taken over.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Starts before a job that keeps killing its worker is failed.",
)
@pass_app
def train_worker_command(
    app: AppContext,
    once: bool,
    poll: float,
    job_id: int | None,
    stale_after: float,
    max_attempts: int,
) -> None:
    """Train queued `--backend local` jobs (LoRA with TRL), for systemd or cron.

    Needs the training extra (pip install 'curation[train]'). Progress, losses
    and checkpoints are recorded on the job (curation finetune status JOB).
    SIGTERM checkpoints and hands the job back; a killed worker's job is
    resumed from its last checkpoint by the next worker.
    """
    from curation.jobs import worker  # psycopg, and torch once a job runs
    from curation.train import trainer

    app.ensure_schema()
    opts = worker.Options(
        once=once, poll=poll, job_id=job_id, stale_after=stale_after, max_attempts=max_attempts
    )
    trainer.require_extra()
    worker.run(
        app.url(), app.settings().data_dir, opts, say=lambda line: click.echo(line, err=True)
    )


COMMANDS = [train_worker_command]

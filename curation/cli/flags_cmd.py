"""`curation flags NS`: the automatic flags of a namespace, and their backfill."""

from __future__ import annotations

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import emit, json_option
from curation.curate import flagged


@click.command("flags")
@click.argument("namespace")
@click.option(
    "--backfill",
    is_flag=True,
    help="First flag the rows recorded before flags existed (a batch per transaction).",
)
@json_option
@pass_app
def flags_command(app: AppContext, namespace: str, backfill: bool, as_json: bool) -> None:
    """Rows of NAMESPACE per automatic flag (truncated, refusal...); see curation list --flag.

    The proxy flags each call as it records it; --backfill flags older rows
    (those recorded before flags existed), so it is cheap to run again.
    """
    from curation.db import namespaces  # psycopg: not for `curation --help`

    with app.db(autocommit=True) as conn:
        namespaces.get(conn, namespace)
        done = flagged.backfill(conn, namespace) if backfill else None
        found = flagged.counts(conn, namespace).get(namespace, {})
    if as_json:
        emit({"namespace": namespace, "flags": found, "backfilled": done}, True)
        return
    if done is not None:
        click.echo(f"backfilled {done['rows']} row{'s' if done['rows'] != 1 else ''}", err=True)
    click.echo(f"{namespace}: {flagged.summary(found)}")


COMMANDS = [flags_command]

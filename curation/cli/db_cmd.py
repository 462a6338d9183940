from __future__ import annotations

import click

from curation.cli.context import AppContext, pass_app
from curation.db import migrate


@click.group("db")
def db() -> None:
    """Database schema: migrations."""


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    rev = migrate.upgrade(app.url(), revision)
    click.echo(f"schema at {rev}")


@db.command()
@click.argument("revision")
@pass_app
def downgrade(app: AppContext, revision: str) -> None:
    """Revert migrations down to REVISION ('base' drops everything)."""
    rev = migrate.downgrade(app.url(), revision)
    click.echo(f"schema at {rev or 'base'}")


@db.command()
@pass_app
def current(app: AppContext) -> None:
    """Show the schema revision and whether it is the newest."""
    rev = migrate.current(app.url())
    head = migrate.head()
    state = "up to date" if rev == head else f"behind {head}; run: curation db upgrade"
    click.echo(f"{rev or 'empty'} ({state})")


COMMANDS = [db]

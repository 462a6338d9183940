from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from curation import names
from curation.cli.context import AppContext, pass_app
from curation.cli.output import emit, json_option
from curation.db import namespaces
from curation.jobs import backends


@click.group("ns")
def ns() -> None:
    """Namespaces: one per task, each with its own table."""


@ns.command()
@click.argument("name")
@click.option("--system-prompt", help="The short training system prompt.")
@click.option("--base-model", help="Default base model to fine-tune.")
@pass_app
def create(app: AppContext, name: str, system_prompt: str | None, base_model: str | None) -> None:
    """Create namespace NAME and its table NAME_openai_chat_completion."""
    names.validate(name)
    with app.db() as conn:
        created = namespaces.create(
            conn, name, training_system_prompt=system_prompt, base_model=base_model
        )
    table = names.table_name(name)
    click.echo(f"created namespace {name} (table {table})" if created else f"{name} exists already")


@ns.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List namespaces."""
    with app.db() as conn:
        rows = [asdict(n) | {"table": n.table} for n in namespaces.list_all(conn)]
    columns = ["name", "table", "backend", "base_model", "training_system_prompt", "serve_model"]
    emit(rows, as_json, columns)


@ns.command()
@click.argument("name")
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show one namespace's settings and row counts."""
    with app.db() as conn:
        found = namespaces.get(conn, name)
        data: dict[str, Any] = asdict(found) | {"table": found.table}
        data |= namespaces.counts(conn, name)
    emit(data, as_json)


@ns.command("set")
@click.argument("name")
@click.option("--system-prompt", help="New short training system prompt ('' clears it).")
@click.option(
    "--base-model", "--model", "base_model", help="New default base model ('' clears it)."
)
@click.option(
    "--backend",
    help=f"New default training backend: {', '.join(backends.names())} ('' clears it: openai).",
)
@pass_app
def set_(
    app: AppContext,
    name: str,
    system_prompt: str | None,
    base_model: str | None,
    backend: str | None,
) -> None:
    """Change a namespace's settings: its prompt, and the model and backend it trains on."""
    changes: dict[str, Any] = {}
    if system_prompt is not None:
        changes["training_system_prompt"] = system_prompt or None
    if base_model is not None:
        changes["base_model"] = base_model or None
    if backend is not None:
        changes["backend"] = backends.check(backend) if backend else None
    if not changes:
        raise click.UsageError("nothing to change: give --system-prompt, --model and/or --backend")
    with app.db() as conn:
        namespaces.update(conn, name, **changes)
    click.echo(f"updated {name}: {', '.join(sorted(changes))}")


COMMANDS = [ns]

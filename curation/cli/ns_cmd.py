from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any

import click

from curation import names
from curation.cli.context import AppContext, pass_app
from curation.cli.export_cmd import WARNING
from curation.cli.output import emit, json_option, visible
from curation.db import namespaces
from curation.errors import InvalidInput, NotFound
from curation.export import models
from curation.jobs import backends

NO_PROMPT = "(none: training examples carry no system message)"
COUNT_MODEL = "gpt-4o-mini-2024-07-18"


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
        if not created:
            click.echo(fill_in(conn, namespaces.get(conn, name), system_prompt, base_model))
            return
    click.echo(f"created namespace {name} (table {names.table_name(name)})")


def fill_in(
    conn: Any, found: namespaces.Namespace, system_prompt: str | None, base_model: str | None
) -> str:
    """`ns create` of a namespace that exists (the proxy creates them on first use): set
    what it lacks, and say what it keeps, so a quick start run late still sets the prompt."""
    given = {"training_system_prompt": system_prompt, "base_model": base_model}
    have = {"training_system_prompt": found.training_system_prompt, "base_model": found.base_model}
    filled = {k: v for k, v in given.items() if v and not have[k]}
    if filled:
        namespaces.update(conn, found.name, **filled)
        return f"{found.name} exists already; set its {' and '.join(filled)}"
    kept = {k: v for k, v in given.items() if v and v != have[k]}
    if kept:
        flags = " ".join(f"{FLAGS[k]} {shlex.quote(v)}" for k, v in kept.items())
        return (
            f"{found.name} exists already and keeps its {' and '.join(kept)}; "
            f"to change it: curation ns set {found.name} {flags}"
        )
    return f"{found.name} exists already"


FLAGS = {"training_system_prompt": "--system-prompt", "base_model": "--model"}


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
    from curation.export.run import missing_prompt_warning  # tiktoken: not for --help

    with app.db() as conn:
        found = namespaces.get(conn, name)
        data: dict[str, Any] = asdict(found) | {"table": found.table}
        data |= namespaces.counts(conn, name)
        from curation.db import rollout as db_rollout  # psycopg: not for `curation --help`

        data["compare"] = db_rollout.compare_of(conn, name) or "exact"
    warnings = [] if found.training_system_prompt else [missing_prompt_warning(name)]
    if as_json:
        emit(data | {"warnings": warnings}, True)
        return
    emit(data | {"training_system_prompt": found.training_system_prompt or NO_PROMPT}, False)
    for warning in warnings:
        click.echo(f"{WARNING}{warning}", err=True)


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
@click.option(
    "--compare",
    help="How live shadow and watch answers are compared with the teacher's: exact, json, or a "
    "command as curation eval --compare takes ('' clears it: exact).",
)
@pass_app
def set_(
    app: AppContext,
    name: str,
    system_prompt: str | None,
    base_model: str | None,
    backend: str | None,
    compare: str | None,
) -> None:
    """Change a namespace's settings: its prompt, the model and backend it trains on, and
    how the proxy compares a student with its teacher."""
    changes: dict[str, Any] = {}
    if system_prompt is not None:
        changes["training_system_prompt"] = system_prompt or None
    if base_model is not None:
        changes["base_model"] = base_model or None
    if backend is not None:
        changes["backend"] = backends.check(backend) if backend else None
    if not changes and compare is None:
        raise click.UsageError(
            "nothing to change: give --system-prompt, --model, --backend and/or --compare"
        )
    with app.db() as conn:
        if changes:
            namespaces.update(conn, name, **changes)
        if compare is not None:
            from curation.db import rollout as db_rollout
            from curation.rollout.control import check_compare

            namespaces.get(conn, name)
            db_rollout.set_compare(conn, name, check_compare(compare))
            changes["compare"] = compare
    click.echo(f"updated {name}: {', '.join(sorted(changes))}")


@ns.command("suggest-prompt")
@click.argument("name")
@click.option(
    "--model",
    help="Count tokens as this model does (default: the namespace's base model, else the "
    "model that answered the prompt).",
)
@json_option
@pass_app
def suggest_prompt(app: AppContext, name: str, model: str | None, as_json: bool) -> None:
    """Print NAME's most common production system prompt (by calls) and its tokens.

    A starting point for the short training prompt: shorten it, then set it
    with `curation ns set NAME --system-prompt '...'`. The prompt goes to
    stdout, what it is to stderr (`> prompt.txt` keeps the prompt alone).
    """
    from curation.export import tokens  # tiktoken: not for --help

    with app.db() as conn:
        found = namespaces.get(conn, name)
        use = namespaces.common_system_prompt(conn, name)
    if use is None:
        raise NotFound(
            f"no row of {name} carries a production system prompt; write the short prompt "
            f"yourself: curation ns set {name} --system-prompt '...'"
        )
    chosen = model or found.base_model or use.model
    if not chosen:
        raise InvalidInput(f"no model to count tokens with: pass --model, e.g. {COUNT_MODEL}")
    info = tokens.prepare(models.lookup(chosen, app.settings().models_file, open_models=True))
    data = asdict(use) | {
        "namespace": name,
        "tokens": tokens.count_prompt(use.system_prompt, info),
        "counted_with": f"{info.name}: {info.counted_with}",
    }
    if as_json:
        emit(data, True)
        return
    click.echo(
        f"{name}: the production prompt of {use.rows} of {use.rows_with_a_prompt} rows with one "
        f"({use.calls} calls, {use.distinct_prompts} distinct prompts), {data['tokens']} tokens "
        f"({data['counted_with']}); shorten it, then: curation ns set {name} "
        "--system-prompt '...'",
        err=True,
    )
    click.echo(visible(use.system_prompt))


COMMANDS = [ns]

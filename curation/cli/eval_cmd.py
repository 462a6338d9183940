"""Evaluate, relabel and serve commands."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, emit, json_option, table
from curation.cli.params import ROW_ID, ROW_IDS, curator_option, who
from curation.config import secret_from_env
from curation.curate import rows as curate_rows
from curation.errors import Conflict, InvalidInput
from curation.jobs.provider import Provider

if TYPE_CHECKING:
    from curation.evaluate import calls

SUMMARY_COLUMNS = [
    "model",
    "agreement_pct",
    "errors",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_in_per_call",
    "tokens_out_per_call",
    "cost_per_1k_calls_usd",
    "savings",
]


def endpoint_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--endpoint URL and --endpoint-key-env VAR: where a student is served, and its key."""
    command = click.option(
        "--endpoint-key-env",
        metavar="VAR",
        help="The environment variable holding the endpoint's API key (the key is never stored).",
    )(command)
    return click.option(
        "--endpoint",
        metavar="URL",
        help="Base URL of the OpenAI-compatible API serving --model: curation student start, "
        "Together, Azure, OpenAI (e.g. http://127.0.0.1:8000/v1).",
    )(command)


def checked_endpoint(endpoint: str | None, key_env: str | None) -> tuple[str | None, str | None]:
    if endpoint is None:
        if key_env is not None:
            raise InvalidInput("--endpoint-key-env names the key of an --endpoint: give both")
        return None, None
    from curation.jobs import student

    return student.check_endpoint(endpoint), student.check_key_env(key_env) if key_env else None


def _chat(
    app: AppContext,
    models: tuple[str, ...],
    baseline: str | None,
    endpoint: str | None,
    key_env: str | None,
) -> calls.Chat:
    """The provider; with --endpoint, the students are asked there and the baseline upstream."""
    endpoint, key_env = checked_endpoint(endpoint, key_env)
    if endpoint is None:
        return Provider(app.settings())
    key = secret_from_env(key_env) if key_env else "unused"
    if key is None:
        raise InvalidInput(
            f"{key_env} is not set: export the endpoint's API key in it and run again"
        )
    from curation.evaluate import calls

    settings = dataclasses.replace(app.settings(), openai_base_url=endpoint, openai_api_key=key)
    teacher = Provider(app.settings()) if baseline else None
    return calls.Routed(frozenset(models) - {baseline}, Provider(settings), teacher)


class DefaultRun(click.Group):
    """`curation eval NS ...` runs an eval; `curation eval history NS` shows past ones."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands:
            args.insert(0, "run")
        return super().resolve_command(ctx, args)


@click.group("eval", cls=DefaultRun)
def eval_group() -> None:
    """Compare models with the curated answers: curation eval NS --model ft:... --baseline gpt-4o."""


@eval_group.command("run")
@click.argument("namespace")
@click.option(
    "--model", "models", multiple=True, required=True, help="A model to evaluate (repeatable)."
)
@click.option("--baseline", help="The production model, called with the production prompt.")
@click.option(
    "--rows",
    default="validation",
    show_default=True,
    help="validation, all-included, or ids 1,2,3.",
)
@click.option(
    "--compare",
    default="exact",
    show_default=True,
    help="exact, json, or a command reading "
    '{"expected":...,"actual":...} on stdin that exits 0 for a match.',
)
@click.option(
    "--short",
    is_flag=True,
    help="Call every --model with the short prompt (ft: models always are).",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--show-mismatches", is_flag=True, help="List the row ids each model got wrong.")
@endpoint_options
@json_option
@pass_app
def run_command(
    app: AppContext,
    namespace: str,
    models: tuple[str, ...],
    baseline: str | None,
    rows: str,
    compare: str,
    short: bool,
    concurrency: int,
    show_mismatches: bool,
    endpoint: str | None,
    endpoint_key_env: str | None,
    as_json: bool,
) -> None:
    """Replay held-out curated rows of NAMESPACE against the models; report and store.

    With --endpoint, the --model students are asked there, with the short prompt.
    """
    from curation.evaluate.run import EvalRequest, evaluate  # psycopg: not for --help

    provider = _chat(app, models, baseline, endpoint, endpoint_key_env)
    short = short or endpoint is not None
    request = EvalRequest(
        namespace=namespace,
        models=models,
        baseline=baseline,
        rows=rows,
        compare=compare,
        concurrency=concurrency,
        short=short,
        models_file=app.settings().models_file,
    )
    with app.db() as conn:
        if as_json or not sys.stderr.isatty():
            outcome = evaluate(conn, provider, request)
        else:
            with click.progressbar(length=1, label="evaluating", file=sys.stderr) as bar:

                def start(total: int) -> None:
                    bar.length = total

                outcome = evaluate(conn, provider, request, on_done=bar.update, on_start=start)
    if as_json:
        click.echo(
            dumps({"run_id": outcome.run_id, "rows": outcome.rows, "models": outcome.models})
        )
        return
    click.echo(f"eval run {outcome.run_id}: {outcome.rows} rows of {namespace}, compared {compare}")
    click.echo(table([_printable(m) for m in outcome.models], SUMMARY_COLUMNS))
    if show_mismatches:
        for m in outcome.models:
            click.echo(f"{m['model']} mismatches: {', '.join(map(str, m['mismatches'])) or 'none'}")


def _printable(m: dict[str, Any]) -> dict[str, Any]:
    savings = m.get("savings_vs_baseline") or {}
    parts = [
        f"{what} {-pct:+g}%"  # a saving is a cut (-); a model dearer than the baseline is +
        for what, pct in (
            ("cost", savings.get("cost_pct")),
            ("latency", savings.get("latency_p50_pct")),
        )
        if pct is not None
    ]
    rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}
    return {**rounded, "savings": " ".join(p for p in parts if p)}


@eval_group.command("history")
@click.argument("namespace")
@json_option
@pass_app
def history_command(app: AppContext, namespace: str, as_json: bool) -> None:
    """How each model did in past eval runs of NAMESPACE."""
    from curation.db import evals as db_evals
    from curation.db import namespaces

    with app.db() as conn:
        namespaces.get(conn, namespace)
        runs = db_evals.history(conn, namespace)
    if as_json:
        click.echo(dumps(runs))
        return
    flat = [
        {"run": r["id"], "at": r["created_at"], "rows": r["summary"].get("rows"), **_printable(m)}
        for r in runs
        for m in r["summary"].get("models", [])
    ]
    emit(
        flat,
        False,
        ["run", "at", "rows", "model", "agreement_pct", "latency_p50_ms", "cost_per_1k_calls_usd"],
    )


@click.command("relabel")
@click.argument("namespace")
@click.option("--model", required=True, help="The teacher model.")
@click.option(
    "--ids", type=ROW_IDS, help="These rows, e.g. 3,14,15 (default: pending rows, most seen first)."
)
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@pass_app
def relabel_command(
    app: AppContext,
    namespace: str,
    model: str,
    ids: tuple[int, ...] | None,
    limit: int,
    concurrency: int,
) -> None:
    """Ask a teacher model for fresh answers; they wait as proposals for a curator."""
    from curation.db import namespaces
    from curation.evaluate import relabel as relabel_mod

    provider = Provider(app.settings())
    id_list = list(ids) if ids else None
    with app.db() as conn:
        namespaces.get(conn, namespace)
        done, failed = relabel_mod.relabel(
            conn, provider, namespace, model, ids=id_list, limit=limit, concurrency=concurrency
        )
    click.echo(
        f"{len(done)} proposals from {model} stored; accept with: curation accept {namespace} ID..."
        " (or in curation review: a / r)"
    )
    for row_id, error in failed:
        click.echo(f"row {row_id}: no proposal: {error}", err=True)


def proposal_command(accept: bool) -> Any:
    @click.argument("namespace")
    @click.argument("ids", type=ROW_ID, nargs=-1, required=True)
    @curator_option
    @pass_app
    def command(
        app: AppContext,
        namespace: str,
        ids: tuple[int, ...],
        curator: str | None,
        accept_flags: bool = False,
    ) -> None:
        from curation.curate import flagged

        with app.db() as conn:
            curate_rows.as_curator(conn, who(app, curator))
            changed = flagged.decide_proposals(
                conn, namespace, ids, accept=accept, accept_flags=accept_flags
            )
            missing = sorted(set(ids) - set(changed))
            if missing:
                raise Conflict(
                    f"row {', '.join(map(str, missing))} has no proposal; nothing changed"
                )
        verb = "accepted (now the correction, row included)" if accept else "rejected"
        click.echo(f"{len(changed)} proposal{'s' if len(changed) != 1 else ''} {verb}")

    return command


accept_command = click.command(
    "accept", help="Accept teacher proposals: they become the corrections."
)(
    click.option(
        "--accept-flags",
        is_flag=True,
        help="Accept on flagged rows too (truncated, refusal...): you read them; export keeps them.",
    )(proposal_command(True))
)
reject_command = click.command("reject", help="Reject teacher proposals.")(proposal_command(False))


COMMANDS = [eval_group, relabel_command, accept_command, reject_command]

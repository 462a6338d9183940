"""Evaluate, relabel and serve commands."""

from __future__ import annotations

import sys
from typing import Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.curate_cmd import curator_option, who
from curation.cli.output import dumps, emit, json_option, table
from curation.curate import rows as curate_rows
from curation.db import evals as db_evals
from curation.db import namespaces
from curation.errors import Conflict
from curation.evaluate import relabel as relabel_mod
from curation.evaluate.run import EvalRequest, evaluate
from curation.jobs.provider import Provider

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
    as_json: bool,
) -> None:
    """Replay held-out curated rows of NAMESPACE against the models; report and store."""
    provider = Provider(app.settings())
    request = EvalRequest(
        namespace, models, baseline, rows, compare, concurrency, short, app.settings().models_file
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
        f"cost -{savings['cost_pct']}%" if savings.get("cost_pct") is not None else "",
        f"latency -{savings['latency_p50_pct']}%"
        if savings.get("latency_p50_pct") is not None
        else "",
    ]
    rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}
    return {**rounded, "savings": " ".join(p for p in parts if p)}


@eval_group.command("history")
@click.argument("namespace")
@json_option
@pass_app
def history_command(app: AppContext, namespace: str, as_json: bool) -> None:
    """How each model did in past eval runs of NAMESPACE."""
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
@click.option("--ids", help="These rows (default: pending rows, most seen first).")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@pass_app
def relabel_command(
    app: AppContext, namespace: str, model: str, ids: str | None, limit: int, concurrency: int
) -> None:
    """Ask a teacher model for fresh answers; they wait as proposals for a curator."""
    provider = Provider(app.settings())
    id_list = [int(i) for i in ids.split(",")] if ids else None
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
    @click.argument("ids", type=int, nargs=-1, required=True)
    @curator_option
    @pass_app
    def command(app: AppContext, namespace: str, ids: tuple[int, ...], curator: str | None) -> None:
        with app.db() as conn:
            curate_rows.as_curator(conn, who(app, curator))
            changed = db_evals.decide_proposals(conn, namespace, ids, accept)
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
)(proposal_command(True))
reject_command = click.command("reject", help="Reject teacher proposals.")(proposal_command(False))


@click.command("serve")
@click.argument("namespace")
@click.option("--model", help="Answer NAMESPACE's calls with this (fine-tuned) model.")
@click.option(
    "--percent",
    type=click.IntRange(0, 100),
    default=100,
    show_default=True,
    help="Share of calls to serve with it, decided per call.",
)
@click.option("--off", is_flag=True, help="Stop serving: calls go to the model they name.")
@click.option("--force", is_flag=True, help="Serve a model with no clean eval in this namespace.")
@pass_app
def serve_command(
    app: AppContext, namespace: str, model: str | None, percent: int, off: bool, force: bool
) -> None:
    """Show or change how the proxy serves NAMESPACE (running proxies follow within seconds)."""
    with app.db() as conn:
        ns = namespaces.get(conn, namespace)
        if off:
            db_evals.set_serving(conn, namespace, None, 100)
            click.echo(f"{namespace}: not served; calls go to the model they name")
            return
        if model is None:
            state = (
                f"served by {ns.serve_model} for {ns.serve_percent}% of calls"
                if ns.serve_model
                else "not served"
            )
            click.echo(f"{namespace}: {state}")
            return
        if not force and not db_evals.has_clean_eval(conn, namespace, model):
            raise Conflict(
                f"{model} has no clean eval in {namespace}: run curation eval {namespace} --model {model}"
                " first, or pass --force"
            )
        if not ns.training_system_prompt:
            click.echo(
                f"warning: {namespace} has no training system prompt; served calls get none",
                err=True,
            )
        db_evals.set_serving(conn, namespace, model, percent)
    click.echo(
        f"{namespace}: served by {model} for {percent}% of calls (proxies follow within seconds)"
    )


COMMANDS = [eval_group, relabel_command, accept_command, reject_command, serve_command]

"""Curation commands: list, show, include/exclude/reset, stats, history, purge.

Review and edit, the interactive ones, live in review_cmd.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from curation.capture.flags import REASONS as FLAG_REASONS
from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, emit, json_option, visible
from curation.cli.params import ROW_ID, curator_option, who
from curation.cli.row_render import disagreement_lines, feedback_event, feedback_summary, render
from curation.curate import flagged, rows, stats

LIST_COLUMNS = ["id", "times_seen", "last_seen_at", "user_prompt", "answer", "state"]
SHOWN_FEEDBACK = 10  # show lists the latest feedback events (--json: these too)


@click.command("list")
@click.argument("namespace")
@click.option("--pending", "state", flag_value="pending", help="Only rows not yet decided.")
@click.option("--included", "state", flag_value="included", help="Only included rows.")
@click.option("--excluded", "state", flag_value="excluded", help="Only excluded rows.")
@click.option("--search", help="Only prompts containing TEXT (case-insensitive).")
@click.option("--since", type=click.DateTime(), help="Only rows seen at or after this time.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--most-seen", is_flag=True, help="Most-seen first (default: newest first).")
@click.option(
    "--feedback",
    type=click.Choice(rows.FEEDBACK),
    help="Only rows with feedback from production: a negative or positive score, or any.",
)
@click.option(
    "--flag",
    type=click.Choice([*FLAG_REASONS, "any"]),
    help="Only rows flagged for REASON when recorded (any: flagged at all).",
)
@click.option(
    "--disagreements",
    is_flag=True,
    help="Only rows a live student disagreed on (curation serve --shadow), latest first.",
)
@json_option
@pass_app
def list_command(
    app: AppContext,
    namespace: str,
    state: str | None,
    search: str | None,
    since: datetime | None,
    limit: int,
    most_seen: bool,
    feedback: str | None,
    flag: str | None,
    disagreements: bool,
    as_json: bool,
) -> None:
    """List NAMESPACE's captured rows."""
    f = rows.ListFilter(
        state=state,
        search=search,
        since=since,
        limit=limit,
        sort="seen" if most_seen else "recent",
        feedback=feedback,
        flag=flag,
        disagreements=disagreements,
    )
    with app.db() as conn:
        found = rows.list_rows(conn, namespace, f)
        if feedback:
            found = with_feedback_counts(conn, namespace, found)
    columns = [*LIST_COLUMNS, "feedback"] if feedback else LIST_COLUMNS
    if flag and not as_json:
        found, columns = [r | {"flags": ", ".join(r["flags"])} for r in found], [*columns, "flags"]
    emit(found, as_json, columns)


def with_feedback_counts(
    conn: Any, namespace: str, found: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each row with its positive and negative feedback events (``feedback``: ``+2 / -1``)."""
    from curation.db import feedback as db_feedback  # psycopg: not for `curation --help`

    counts = db_feedback.counts_of_rows(conn, namespace, [r["id"] for r in found])
    out = []
    for r in found:
        c = counts.get(r["id"], {"positive": 0, "negative": 0})
        out.append({**r, **c, "feedback": feedback_summary(c)})
    return out


@click.command("show")
@click.argument("namespace")
@click.argument("row_id", type=ROW_ID)
@json_option
@pass_app
def show_command(app: AppContext, namespace: str, row_id: int, as_json: bool) -> None:
    """Show one row: prompt, production prompt, answer, usage, state, feedback, history."""
    from curation.db import feedback as db_feedback  # psycopg: not for `curation --help`
    from curation.db import rollout as db_rollout

    with app.db() as conn:
        row = rows.get_row(conn, namespace, row_id)
        audit = rows.history(conn, namespace, row_id)
        counts = db_feedback.counts(conn, namespace, row_id)
        events = db_feedback.events(conn, namespace, row_id, SHOWN_FEEDBACK)
        disagreed = db_rollout.last_disagreement(conn, namespace, row_id)
    if as_json:
        feedback = {**counts, "events": events}
        click.echo(
            dumps({**row, "feedback": feedback, "history": audit, "disagreement": disagreed})
        )
        return
    click.echo(render({**row, "feedback": counts}))
    for line in disagreement_lines(disagreed):
        click.echo(line)
    for e in events:
        click.echo(visible(feedback_event(e)))
    for h in audit:
        click.echo(
            visible(
                f"  {h['changed_at']:%Y-%m-%d %H:%M} {h['changed_by']}: {h['column_name']}"
                f" {h['old_value']} -> {h['new_value']}"
            )
        )


def decide(state: str) -> Any:
    @click.argument("namespace")
    @click.argument("ids", type=ROW_ID, nargs=-1)
    @click.option(
        "--search", help="Every row whose prompt contains TEXT (asks first; --yes for scripts)."
    )
    @click.option("--yes", is_flag=True, help="Do not ask.")
    @curator_option
    @pass_app
    def command(
        app: AppContext,
        namespace: str,
        ids: tuple[int, ...],
        search: str | None,
        yes: bool,
        curator: str | None,
        reason: str | None = None,
        accept_flags: bool = False,
    ) -> None:
        with app.db() as conn:
            targets = list(ids)
            if search:
                targets += rows.matching(conn, namespace, search)
                if not yes and not click.confirm(
                    f"{rows.VERB[state]} {len(targets)} rows of {namespace}?", err=True
                ):
                    raise click.Abort()
            if not targets:
                raise click.UsageError("give row ids or --search TEXT")
            changed = rows.set_state(
                conn,
                namespace,
                sorted(set(targets)),
                state,
                curator=who(app, curator),
                note=reason,
                strict=not search,
                accept_flags=accept_flags,
            )
            if state == "included" and changed:
                from curation.curate import coverage  # numpy, datasketch: not for --help

                for line in coverage.near_duplicate_warnings(conn, namespace, changed):
                    click.echo(f"warning: {line}", err=True)
        click.echo(
            f"{len(changed)} row{'s' if len(changed) != 1 else ''} {state}: {', '.join(map(str, changed))}"
        )

    return command


include_command = click.command("include", help="Include rows in the training data.")(
    click.option(
        "--accept-flags",
        is_flag=True,
        help="Include flagged rows too (truncated, refusal...): you read them; export keeps them.",
    )(decide("included"))
)
reset_command = click.command("reset", help="Undo a decision: rows go back to pending.")(
    decide("pending")
)
exclude_command = click.command("exclude", help="Exclude rows from the training data.")(
    click.option("--reason", help="Why (stored in note).")(decide("excluded"))
)


@click.command("history")
@click.argument("namespace")
@click.argument("row_id", type=ROW_ID)
@json_option
@pass_app
def history_command(app: AppContext, namespace: str, row_id: int, as_json: bool) -> None:
    """Every change of a row's curation columns: who, when, old and new."""
    with app.db() as conn:
        rows.get_row(conn, namespace, row_id)
        audit = rows.history(conn, namespace, row_id)
    emit(
        audit,
        as_json,
        ["changed_at", "changed_by", "login", "column_name", "old_value", "new_value"],
    )


@click.command("stats")
@click.argument("namespace", required=False)
@json_option
@pass_app
def stats_command(app: AppContext, namespace: str | None, as_json: bool) -> None:
    """Per namespace: calls, prompts, decisions, tokens, spend, and what is new since the last job.

    Rows of a model with no known price are left out of spend_usd and counted in unpriced_rows.
    """
    with app.db() as conn:
        found = [
            e | {"warnings": stats.warnings(e)}
            for e in stats.collect(conn, namespace, app.settings().models_file)
        ]
    if as_json:
        emit(found, True)
        return
    shown = [
        e
        | {
            "training_system_prompt": e["training_system_prompt"] or "(none)",
            "flags": flagged.summary(e["flags"]),
        }
        for e in found
    ]
    emit(shown, False, list(stats.COLUMNS))
    for warning in (w for e in found for w in e["warnings"]):
        click.echo(f"warning: {warning}", err=True)


@click.command("purge")
@click.argument("namespace")
@click.option("--older-than", required=True, help="Age since last seen, e.g. 90d, 12h, 4w.")
@click.option("--include-excluded", is_flag=True, help="Also delete old excluded rows.")
@click.option("--force", is_flag=True, help="Also delete included rows and rows a dataset used.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@curator_option
@pass_app
def purge_command(
    app: AppContext,
    namespace: str,
    older_than: str,
    include_excluded: bool,
    force: bool,
    yes: bool,
    curator: str | None,
) -> None:
    """Delete old rows that were never included, in batches (audited)."""
    rows.parse_age(older_than)
    if not yes and not click.confirm(
        f"delete rows of {namespace} not seen for {older_than}?", err=True
    ):
        raise click.Abort()
    with app.db(autocommit=True) as conn:
        from curation.db import namespaces

        namespaces.get(conn, namespace)
        deleted = rows.purge(
            conn,
            namespace,
            older_than,
            curator=who(app, curator),
            include_excluded=include_excluded,
            force=force,
        )
    click.echo(f"deleted {deleted} rows of {namespace}")


COMMANDS = [
    list_command,
    show_command,
    include_command,
    exclude_command,
    reset_command,
    history_command,
    stats_command,
    purge_command,
]

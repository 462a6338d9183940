"""Curation commands: list, show, include/exclude/reset, edit, review, stats, history, purge."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, emit, json_option, visible
from curation.cli.params import ROW_ID
from curation.curate import answers, rows, stats
from curation.db.evals import decide_proposals
from curation.errors import InvalidInput

LIST_COLUMNS = ["id", "times_seen", "last_seen_at", "user_prompt", "answer", "state"]
EDIT_ATTEMPTS = 5  # an editor that keeps writing invalid JSON must not loop forever


def curator_option(func: Any) -> Any:
    return click.option(
        "--curator", help="Who is curating, for the audit trail [env: CURATION_CURATOR, else USER]."
    )(func)


def who(app: AppContext, curator: str | None) -> str:
    return curator or app.settings().curator


@click.command("list")
@click.argument("namespace")
@click.option("--pending", "state", flag_value="pending", help="Only rows not yet decided.")
@click.option("--included", "state", flag_value="included", help="Only included rows.")
@click.option("--excluded", "state", flag_value="excluded", help="Only excluded rows.")
@click.option("--search", help="Only prompts containing TEXT (case-insensitive).")
@click.option("--since", type=click.DateTime(), help="Only rows seen at or after this time.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--most-seen", is_flag=True, help="Most-seen first (default: newest first).")
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
    as_json: bool,
) -> None:
    """List NAMESPACE's captured rows."""
    f = rows.ListFilter(
        state=state, search=search, since=since, limit=limit, sort="seen" if most_seen else "recent"
    )
    with app.db() as conn:
        found = rows.list_rows(conn, namespace, f)
    emit(found, as_json, LIST_COLUMNS)


@click.command("show")
@click.argument("namespace")
@click.argument("row_id", type=ROW_ID)
@json_option
@pass_app
def show_command(app: AppContext, namespace: str, row_id: int, as_json: bool) -> None:
    """Show one row: prompt, production prompt, answer, usage, state, history."""
    with app.db() as conn:
        row = rows.get_row(conn, namespace, row_id)
        audit = rows.history(conn, namespace, row_id)
    if as_json:
        click.echo(dumps({**row, "history": audit}))
        return
    click.echo(render(row))
    for h in audit:
        click.echo(
            visible(
                f"  {h['changed_at']:%Y-%m-%d %H:%M} {h['changed_by']}: {h['column_name']}"
                f" {h['old_value']} -> {h['new_value']}"
            )
        )


def render(row: dict[str, Any], progress: str | None = None) -> str:
    """One row for a terminal: captured text goes through ``visible``, labels are styled."""
    original = answers.text(
        ((row.get("response") or {}).get("choices") or [{}])[0].get("message") or {}
    )
    lines = [
        click.style(f"#{row['id']}", bold=True)
        + f"  {row['state']}  seen {row['times_seen']}x, last {row['last_seen_at']:%Y-%m-%d %H:%M}"
        + (f"  [{progress}]" if progress else ""),
        click.style("prompt:", bold=True),
        visible(row["user_prompt"]),
        click.style("answer:", bold=True),
        visible(answers.pretty(original)),
    ]
    if row.get("corrected_response"):
        lines += [
            click.style("correction:", bold=True),
            visible(answers.pretty(answers.text(row["corrected_response"]))),
        ]
    if row.get("proposed_response"):
        lines += [
            click.style(
                f"proposed by {visible(row.get('proposed_by'))} (a accept / r reject):", bold=True
            ),
            visible(answers.pretty(answers.text(row["proposed_response"]))),
        ]
    if row.get("note"):
        lines.append(f"note: {visible(row['note'])}")
    lines.append(
        f"model {visible(row.get('model'))}, tokens {row.get('prompt_tokens')} in / {row.get('completion_tokens')} out,"
        f" tags {json.dumps(row.get('tags') or {})}"
    )
    if row.get("system_prompt"):
        sp = " ".join(visible(row["system_prompt"]).split())
        lines.append(f"production prompt: {sp[:200]}{'…' if len(sp) > 200 else ''}")
    return "\n".join(lines)


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
            )
        click.echo(
            f"{len(changed)} row{'s' if len(changed) != 1 else ''} {state}: {', '.join(map(str, changed))}"
        )

    return command


include_command = click.command("include", help="Include rows in the training data.")(
    decide("included")
)
reset_command = click.command("reset", help="Undo a decision: rows go back to pending.")(
    decide("pending")
)
exclude_command = click.command("exclude", help="Exclude rows from the training data.")(
    click.option("--reason", help="Why (stored in note).")(decide("excluded"))
)


def edit_answer(
    app: AppContext, conn: Any, namespace: str, row: dict[str, Any], curator: str
) -> bool:
    """Open the answer in $EDITOR until it is valid (at most EDIT_ATTEMPTS times);
    True if a correction was stored."""
    editor = app.settings().editor
    if not editor:
        raise InvalidInput("no editor: set EDITOR (e.g. export EDITOR=nano) and run again")
    current = answers.message(row)
    original = answers.text(current)
    is_json = answers.parse_json(original) is not None
    text = answers.pretty(original)
    for attempt in range(1, EDIT_ATTEMPTS + 1):
        edited = click.edit(
            text, editor=editor, extension=".json" if is_json else ".txt", require_save=False
        )
        if edited is None or edited.strip() == text.strip():
            click.echo("unchanged: nothing stored", err=True)
            return False
        problem = answers.json_error(original, edited)
        if problem is None:
            break
        if attempt < EDIT_ATTEMPTS:
            click.echo(f"not valid JSON ({problem}); reopening the editor", err=True)
        text = edited
    else:
        raise InvalidInput(
            f"still not valid JSON after {EDIT_ATTEMPTS} edits ({problem}); nothing stored"
        )
    new_text = edited.strip()
    if is_json and "\n" not in original:
        new_text = json.dumps(
            json.loads(new_text), ensure_ascii=False
        )  # keep the answers' compact style
    rows.set_correction(
        conn, namespace, row["id"], answers.edited_message(current, new_text), curator=curator
    )
    return True


@click.command("edit")
@click.argument("namespace")
@click.argument("row_id", type=ROW_ID)
@curator_option
@pass_app
def edit_command(app: AppContext, namespace: str, row_id: int, curator: str | None) -> None:
    """Correct a row's answer in $EDITOR (the original stays; exports use the correction)."""
    with app.db() as conn:
        row = rows.get_row(conn, namespace, row_id)
        if edit_answer(app, conn, namespace, row, who(app, curator)):
            click.echo(f"stored a correction for row {row_id}")


@click.command("review")
@click.argument("namespace")
@curator_option
@pass_app
def review_command(app: AppContext, namespace: str, curator: str | None) -> None:
    """Review pending rows one by one, most seen first.

    Keys: i include, e exclude, c correct (editor) and include, a/r accept/reject a
    teacher's proposal, s skip, u undo last, q quit.
    Two curators can review at once: a row shown to one is never shown to the other.
    """
    if not sys.stdin.isatty():
        raise InvalidInput(
            "curation review reads keys from a terminal: run it in one "
            "(scripts: curation include / exclude)"
        )
    name = who(app, curator)
    skipped: list[int] = []
    last: int | None = None
    with app.db(autocommit=True) as conn:
        while True:
            with conn.transaction():
                row = rows.next_pending(conn, namespace, skipped)
                if row is None:
                    click.echo("nothing left to review")
                    return
                done, total = rows.progress(conn, namespace)
                click.echo("\n" + render(row, f"{done}/{total} reviewed"))
                click.echo("[i]nclude [e]xclude [c]orrect [s]kip [u]ndo [q]uit? ", nl=False)
                key = click.getchar().lower()
                click.echo(key)
                if key == "q":
                    return
                if key == "s":
                    skipped.append(row["id"])
                elif key == "i":
                    rows.set_state(conn, namespace, [row["id"]], "included", curator=name)
                    last = row["id"]
                elif key == "e":
                    rows.set_state(conn, namespace, [row["id"]], "excluded", curator=name)
                    last = row["id"]
                elif key == "c":
                    if edit_answer(app, conn, namespace, row, name):
                        rows.set_state(conn, namespace, [row["id"]], "included", curator=name)
                        last = row["id"]
                elif key in ("a", "r") and row.get("proposed_response"):
                    rows.as_curator(conn, name)
                    decide_proposals(conn, namespace, [row["id"]], accept=key == "a")
                    last = row["id"] if key == "a" else last
                elif key == "u":
                    if last is None:
                        click.echo("nothing to undo")
                    else:
                        rows.set_state(
                            conn, namespace, [last], "pending", curator=name, strict=False
                        )
                        click.echo(f"row {last} is pending again")
                        last = None
                else:
                    click.echo("keys: i e c a r s u q")


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
    """Per namespace: calls, prompts, decisions, tokens, spend, and what is new since the last job."""
    with app.db() as conn:
        found = stats.collect(conn, namespace, app.settings().models_file)
    emit(
        found,
        as_json,
        list(stats.COLUMNS),
    )


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
    edit_command,
    review_command,
    history_command,
    stats_command,
    purge_command,
]

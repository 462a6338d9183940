"""Review and edit: a curator decides pending rows one by one on a terminal, or corrects one.

Review is a loop over a key-to-action table (``ACTIONS``): each action does one
thing to the row on screen and says what it did in one line, or leaves the
curator on the same row (an unknown key, a failed editor, an unchanged edit).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.params import ROW_ID, curator_option, who
from curation.cli.row_render import disagreement_lines, render
from curation.curate import answers, rows
from curation.errors import InvalidInput

EDIT_ATTEMPTS = 5  # an editor that keeps writing invalid JSON must not loop forever


def edit_answer(
    app: AppContext, conn: Any, namespace: str, row: dict[str, Any], curator: str
) -> bool:
    """Open the answer in $EDITOR until it is valid (at most EDIT_ATTEMPTS times);
    True if a correction was stored. The stored text keeps the original's JSON style
    (``answers.correction``); saving an answer as it was stores nothing, unless that
    rewrites an earlier correction into the original's style (what doctor asks for)."""
    editor = app.settings().editor
    if not editor:
        raise InvalidInput("no editor: set EDITOR (e.g. export EDITOR=nano) and run again")
    current = answers.message(row)
    original = answers.text(current)
    is_json = answers.parse_json(original) is not None
    text = answers.pretty(original)
    for attempt in range(1, EDIT_ATTEMPTS + 1):
        edited = run_editor(editor, text, ".json" if is_json else ".txt")
        same = edited is not None and edited.strip() == text.strip()
        if edited is None or (same and not row.get("corrected_response")):
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
    stored = answers.correction(row, edited.strip())
    if answers.unchanged(row, stored):
        click.echo("unchanged: nothing stored", err=True)
        return False
    rows.set_correction(conn, namespace, row["id"], stored, curator=curator)
    return True


def run_editor(editor: str, text: str, extension: str) -> str | None:
    """``text`` as the curator left it in ``editor``; an editor that is not installed or
    exits with an error is an ``InvalidInput`` (nothing is stored)."""
    try:
        program = shlex.split(editor)[0]
    except (ValueError, IndexError):
        program = editor
    if shutil.which(program) is None:
        raise InvalidInput(
            f"the editor {program!r} is not installed; nothing stored; "
            "set EDITOR to an installed editor, e.g. export EDITOR=vi"
        )
    try:
        return click.edit(text, editor=editor, extension=extension, require_save=False)
    except click.ClickException as exc:  # click's "Editing failed": a non-zero exit
        raise InvalidInput(f"the editor {editor!r} exited with an error; nothing stored") from exc


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


# -- review -------------------------------------------------------------------

KEYS_HELP = (
    "keys: i include, e exclude, c correct, a/r accept/reject a proposal, s skip, u undo, q quit"
)
SHOWN_ORDER = ("included", "corrected", "excluded", "accepted", "rejected", "skipped")


@dataclass
class Session:
    """One curator's review: where, who, the last decision (for undo) and what was done."""

    app: AppContext
    conn: Any
    namespace: str
    curator: str
    skipped: list[int] = field(default_factory=list)
    last: tuple[int, str] | None = None  # (row id, what was done): what undo takes back
    done: Counter[str] = field(default_factory=Counter)

    def did(self, row_id: int, what: str, undoable: bool = True) -> None:
        self.done[what] += 1
        if undoable:
            self.last = (row_id, what)

    def tally(self) -> str:
        parts = [f"{self.done[w]} {w}" for w in SHOWN_ORDER if self.done[w] > 0]
        return f"{', '.join(parts)} this session" if parts else "nothing decided this session"

    def set_state(self, row_id: int, state: str, strict: bool = True) -> None:
        # the row's flags are on screen (render): including it accepts them
        rows.set_state(
            self.conn,
            self.namespace,
            [row_id],
            state,
            curator=self.curator,
            strict=strict,
            accept_flags=state == "included",
        )


# An action does one thing to the row on screen and returns the line saying so (the
# session then moves on), or None to stay on the row and ask for another key.
Action = Callable[[Session, dict[str, Any]], str | None]


def include(s: Session, row: dict[str, Any]) -> str:
    s.set_state(row["id"], "included")
    s.did(row["id"], "included")
    return f"row {row['id']} included"


def exclude(s: Session, row: dict[str, Any]) -> str:
    s.set_state(row["id"], "excluded")
    s.did(row["id"], "excluded")
    return f"row {row['id']} excluded"


def correct(s: Session, row: dict[str, Any]) -> str | None:
    """The answer in $EDITOR, then included; a failed editor leaves the row as it was."""
    try:
        stored = edit_answer(s.app, s.conn, s.namespace, row, s.curator)
    except InvalidInput as exc:
        click.echo(f"row {row['id']} not corrected: {exc}", err=True)
        return None
    if not stored:
        return None
    s.set_state(row["id"], "included")
    s.did(row["id"], "corrected")
    return f"row {row['id']} corrected and included"


def proposal(accept: bool) -> Action:
    def decide(s: Session, row: dict[str, Any]) -> str | None:
        from curation.curate import flagged  # psycopg: not for `curation --help`

        if not row.get("proposed_response"):
            click.echo(f"row {row['id']} has no proposal to {'accept' if accept else 'reject'}")
            return None
        rows.as_curator(s.conn, s.curator)
        # The flags are on screen: accepting here accepts them, as the include key does.
        flagged.decide_proposals(s.conn, s.namespace, [row["id"]], accept=accept, accept_flags=True)
        s.did(row["id"], "accepted" if accept else "rejected", undoable=accept)
        if accept:
            return f"row {row['id']} included with the proposal accepted as its correction"
        return f"row {row['id']}: proposal rejected, the row stays pending"

    return decide


def skip(s: Session, row: dict[str, Any]) -> str:
    s.skipped.append(row["id"])
    s.did(row["id"], "skipped", undoable=False)
    return f"row {row['id']} skipped"


def undo(s: Session, row: dict[str, Any]) -> str | None:
    """The last decision of this session back to pending; the row on screen waits."""
    if s.last is None:
        click.echo("nothing to undo")
        return None
    row_id, what = s.last
    s.set_state(row_id, "pending", strict=False)
    s.done[what] -= 1
    s.last = None
    return f"row {row_id} is pending again"


def help_keys(s: Session, row: dict[str, Any]) -> None:
    click.echo(KEYS_HELP)


QUIT = frozenset({"q", ""})  # "": the terminal hung up (a read at end of input)
ACTIONS: dict[str, Action] = {
    "i": include,
    "e": exclude,
    "c": correct,
    "a": proposal(accept=True),
    "r": proposal(accept=False),
    "s": skip,
    "u": undo,
}


def need_terminal() -> None:
    """Review reads single keys and may open an editor: both need a terminal. Piped,
    under cron or CI, or without a controlling terminal, say so instead of failing
    somewhere inside the terminal handling."""
    problem = not (sys.stdin.isatty() and sys.stdout.isatty())
    if not problem:
        try:
            os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        except OSError:
            problem = True
    if problem:
        raise InvalidInput(
            "curation review needs a terminal; in scripts use "
            "curation list NS --pending, then curation include / exclude NS ID..."
        )


def review_row(s: Session, row: dict[str, Any]) -> bool:
    """Keys for one row until an action moves on; False when the curator quits."""
    while True:
        click.echo("[i]nclude [e]xclude [c]orrect [s]kip [u]ndo [q]uit? ", nl=False)
        key = click.getchar().lower()
        click.echo(key)
        if key in QUIT:
            return False
        said = ACTIONS.get(key, help_keys)(s, row)
        if said is not None:
            click.echo(f"{said}; {s.tally()}")
            return True


def feedback_counts(conn: Any, namespace: str, row_id: int) -> dict[str, int]:
    from curation.db import feedback as db_feedback  # psycopg: not for `curation --help`

    return db_feedback.counts(conn, namespace, row_id)


def next_row(conn: Any, namespace: str, skip: list[int], plan: Any) -> dict[str, Any] | None:
    """The row to show next: by the coverage ``plan`` (then rows that arrived since it was
    made), or, without one, most seen first."""
    if plan is not None:
        from curation.curate import coverage  # numpy, datasketch: not for `curation --help`

        row = coverage.next_for_review(conn, namespace, skip, plan)
        if row is not None:
            return row
    return rows.next_pending(conn, namespace, skip)


def disagreed_row(conn: Any, namespace: str, skip: list[int]) -> dict[str, Any] | None:
    """The pending row a live student disagreed on last, with the two answers to show."""
    from curation.db import rollout as db_rollout  # psycopg: not for `curation --help`

    row = db_rollout.next_disagreement(conn, namespace, skip)
    if row is not None:
        found = db_rollout.last_disagreement(conn, namespace, row["id"])
        row["disagreement_lines"] = disagreement_lines(found)
    return row


@click.command("review")
@click.argument("namespace")
@curator_option
@click.option(
    "--order",
    type=click.Choice(["seen", "coverage"]),
    default="seen",
    show_default=True,
    help="seen: most seen first; coverage: uncovered clusters first (see curation coverage).",
)
@click.option(
    "--disagreements",
    is_flag=True,
    help="Rows a live student disagreed on first, latest first (curation serve --shadow).",
)
@pass_app
def review_command(
    app: AppContext, namespace: str, curator: str | None, order: str, disagreements: bool
) -> None:
    """Review pending rows one by one, most seen first (or by --order coverage: rows of
    clusters with no included row first, biggest first; then, within covered clusters,
    the rows least like those already included).

    Keys: i include, e exclude, c correct (editor) and include, a/r accept/reject a
    teacher's proposal, s skip, u undo last, q quit.
    Two curators can review at once: a row shown to one is never shown to the other.
    """
    need_terminal()
    with app.db(autocommit=True) as conn:
        s = Session(app, conn, namespace, who(app, curator))
        plan = None
        if order == "coverage":
            from curation.curate import coverage

            coverage.update(conn, namespace)  # rows captured since the last run get a cluster
            plan = coverage.plan(conn, namespace)
        while True:
            with conn.transaction():
                row = disagreed_row(conn, namespace, s.skipped) if disagreements else None
                row = row or next_row(conn, namespace, s.skipped, plan)
                if row is None:
                    click.echo(f"nothing left to review; {s.tally()}")
                    return
                row["feedback"] = feedback_counts(conn, namespace, row["id"])
                done, total = rows.progress(conn, namespace)
                click.echo("\n" + render(row, f"{done}/{total} reviewed"))
                for line in row.get("disagreement_lines", []):
                    click.echo(line)
                if not review_row(s, row):
                    click.echo(s.tally())
                    return


COMMANDS = [edit_command, review_command]

"""The page's actions (POST): sign in and out, the training prompt, and a row's decisions.

A decision does what ``curation review`` does with the same key, says so in the
same words (``#status`` on the next page), and moves on to the next pending row;
the database work is ``curation.curate``'s, on the session's own connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from curation.curate import answers
from curation.curate import rows as curate_rows
from curation.db import namespaces as db_namespaces
from curation.db import web as db
from curation.db.connect import Connection
from curation.db.evals import decide_proposals
from curation.errors import Conflict, CurationError, InvalidInput, NotFound
from curation.web import app as web_app
from curation.web import auth, pages

MAX_FIELD = 1_000_000  # characters of a correction, a note or a prompt


async def form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    out = {k: v for k, v in data.items() if isinstance(v, str)}
    if any(len(v) > MAX_FIELD for v in out.values()):
        raise InvalidInput(f"a field is over {MAX_FIELD} characters; nothing stored")
    return out


async def login(request: web.Request) -> web.StreamResponse:
    """Sign in as a PostgreSQL login: the page then connects as it (its grants, its audit)."""
    given = await form(request)
    if not auth.same(
        given.get("csrf"), request.cookies.get(auth.LOGIN_COOKIE, "")
    ) or not given.get("csrf"):
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the sign-in page")
    user, password = given.get("user", "").strip(), given.get("password", "")
    if not user:
        return pages.login_form(request, "give your PostgreSQL login", status=400)
    config = request.app[web_app.CONFIG]
    try:
        link = db.Link(db.login_url(config.url, user, password))
        await asyncio.to_thread(link.check)
    except CurationError as exc:
        return pages.login_form(request, f"sign-in failed for {user}: {exc}", status=401)
    s = request.app[web_app.SESSIONS].start(user, user, link)
    response = web.HTTPSeeOther("/")
    auth.set_cookie(response, auth.COOKIE, s.id)
    response.del_cookie(auth.LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    s = pages.session(request)
    request.app[web_app.SESSIONS].drop(s)
    await s.call(s.link.close)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE, path="/")
    raise response


async def prompt(request: web.Request) -> web.StreamResponse:
    """The namespace's short training prompt (empty: none); a curator login may lack the grant."""
    ns = pages.namespace(request)
    text = (await form(request)).get("prompt", "").strip() or None
    s = pages.session(request)
    await s.db(
        lambda conn: db_namespaces.update(conn, ns, training_system_prompt=text), commit=True
    )
    s.flash = f"training prompt of {ns} {'saved' if text else 'cleared'}"
    raise web.HTTPSeeOther("/")


# An action: (connection, namespace, row id, form, session) -> the line saying what it did,
# and whether the page then moves on to the next pending row.
Action = Callable[[Connection, str, int, dict[str, str], auth.Session], tuple[str, bool]]


def include(
    conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    curate_rows.set_state(conn, ns, [row_id], "included", curator=s.curator)
    s.last = (ns, row_id)
    return f"row {row_id} included", True


def exclude(
    conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    reason = f.get("note", "").strip() or None
    curate_rows.set_state(conn, ns, [row_id], "excluded", curator=s.curator, note=reason)
    s.last = (ns, row_id)
    return f"row {row_id} excluded", True


def reset(
    conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    """This row back to pending; on a pending row, the session's last decision (review's undo)."""
    changed = curate_rows.set_state(conn, ns, [row_id], "pending", curator=s.curator, strict=False)
    if not changed:
        if s.last is None:
            raise Conflict(f"row {row_id} is pending and there is nothing to undo")
        ns, row_id = s.last
        curate_rows.set_state(conn, ns, [row_id], "pending", curator=s.curator, strict=False)
    s.last = None
    return f"row {row_id} is pending again", False


def correct(
    conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    """The editor's text as the row's correction (a JSON answer must stay JSON, in the
    original's style: ``answers.correction``), then included, as review's ``c``."""
    row = curate_rows.get_row(conn, ns, row_id)
    edited = f.get("correction", "")
    problem = answers.json_error(answers.text(answers.message(row)), edited)
    if problem is not None:
        raise InvalidInput(f"not valid JSON ({problem}); nothing stored")
    try:
        stored = answers.correction(row, edited.strip())
    except ValueError as exc:  # tool calls that are JSON but not a list of calls
        raise InvalidInput(f"not a list of tool calls ({exc}); nothing stored") from exc
    if answers.unchanged(row, stored):
        return f"row {row_id} unchanged: nothing stored", False
    curate_rows.set_correction(conn, ns, row_id, stored, curator=s.curator)
    curate_rows.set_state(conn, ns, [row_id], "included", curator=s.curator, strict=False)
    s.last = (ns, row_id)
    return f"row {row_id} corrected and included", True


def proposal(accept: bool) -> Action:
    def decide(
        conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
    ) -> tuple[str, bool]:
        curate_rows.as_curator(conn, s.curator)
        if not decide_proposals(conn, ns, [row_id], accept=accept):
            curate_rows.get_row(conn, ns, row_id)  # NotFound for a row that is not there
            raise Conflict(f"row {row_id} has no proposal to {'accept' if accept else 'reject'}")
        if accept:
            s.last = (ns, row_id)
            return f"row {row_id} included with the proposal accepted as its correction", True
        return f"row {row_id}: proposal rejected, the row stays pending", False

    return decide


def note(
    conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    curate_rows.as_curator(conn, s.curator)
    if not db.set_note(conn, ns, row_id, f.get("note", "").strip() or None):
        raise NotFound(f"no row {row_id} in {ns}")
    return f"row {row_id}: note saved", False


ACTIONS: dict[str, Action] = {
    "include": include,
    "exclude": exclude,
    "reset": reset,
    "correct": correct,
    "accept": proposal(accept=True),
    "reject": proposal(accept=False),
    "note": note,
}


async def decide(request: web.Request) -> web.StreamResponse:
    """POST /ns/NS/rows/ID/ACTION: do it, say it in #status, move on as review does."""
    ns = pages.namespace(request)
    row_id = int(request.match_info["id"])
    action = ACTIONS.get(request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound(text=f"no action {request.match_info['action']!r}")
    f = await form(request)
    s = pages.session(request)
    said, move_on = await s.db(_run, action, ns, row_id, f, s, commit=True)
    s.flash = said
    if move_on:
        raise web.HTTPSeeOther(f"/ns/{ns}/next")
    raise web.HTTPSeeOther(f"/ns/{ns}/rows/{_undone(said, row_id)}")


def _run(
    conn: Connection, action: Action, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> tuple[str, bool]:
    return action(conn, ns, row_id, f, s)


def _undone(said: str, fallback: int) -> int:
    """The row a reset put back to pending (review's undo may name another row)."""
    words = said.split()
    return int(words[1]) if said.startswith("row ") and words[1].isdigit() else fallback

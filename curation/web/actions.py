"""The page's actions (POST): sign in and out, the training prompt, and a row's decisions.

A decision does what ``curation review`` does with the same key, says so in the
same words (``#status`` on the next page), and moves on to the next pending row;
the database work is ``curation.curate``'s, on the session's own connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from curation.curate import answers, flagged
from curation.curate import rows as curate_rows
from curation.db import namespaces as db_namespaces
from curation.db import web as db
from curation.db.connect import Connection
from curation.errors import Conflict, CurationError, InvalidInput, NotFound
from curation.web import auth, pages, view

MAX_FIELD = 1_000_000  # characters of a correction, a note or a prompt
log = logging.getLogger("curation.web")
SIGN_IN_FAILED = "sign-in failed: wrong login or password"


async def form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    out = {k: v for k, v in data.items() if isinstance(v, str)}
    if any(len(v) > MAX_FIELD for v in out.values()):
        raise InvalidInput(f"a field is over {MAX_FIELD} characters; nothing stored")
    return out


async def login(request: web.Request) -> web.StreamResponse:
    """Sign in as a PostgreSQL login: the page then connects as it (its grants, its audit)."""
    given = await form(request)
    config = request.app[view.CONFIG]
    held = request.cookies.get(auth.LOGIN_COOKIE, "")
    if not auth.same(given.get("csrf"), held) or not auth.genuine(config.secret, held):
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the sign-in page")
    user, password = given.get("user", "").strip(), given.get("password", "")
    if not user or not password:
        return pages.login_form(request, "give your PostgreSQL login and password", status=400)
    try:
        url = db.login_url(config.url, user, password)
        link = db.Link(url, password_checked=not config.passwordless_logins)
        await asyncio.to_thread(link.check)
    except CurationError as exc:
        if str(exc) == db.NO_PASSWORD_CHECK:
            return pages.login_form(request, str(exc), status=403)
        # who tried and why, for the server's log only: the page does not tell a stranger
        # which logins exist (never the password: it is in no message)
        log.warning("curation web: sign-in as %r refused: %s", user, exc)
        return pages.login_form(request, SIGN_IN_FAILED, status=401)
    response = await auth.begin(request, request.app[view.SESSIONS], user, user, link)
    response.del_cookie(auth.LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    s = pages.session(request)
    request.app[view.SESSIONS].drop(s)
    await asyncio.to_thread(s.link.close)  # closed for good: a racing request opens nothing
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE, path="/")
    raise response


async def prompt(request: web.Request) -> web.StreamResponse:
    """The namespace's short training prompt (empty: none); a curator login may lack the grant."""
    ns = pages.namespace(request)
    request["back"] = "/"
    text = (await form(request)).get("prompt", "").strip() or None
    s = pages.session(request)
    await s.db(
        lambda conn: db_namespaces.update(conn, ns, training_system_prompt=text), commit=True
    )
    s.flash = f"training prompt of {ns} {'saved' if text else 'cleared'}"
    raise web.HTTPSeeOther("/")


@dataclass(frozen=True)
class Done:
    """What an action did: the line saying so, and where the page goes next: the next
    pending row (``move_on``), else ``shown``, the row it changed (review's undo may
    name a row of another namespace)."""

    said: str
    move_on: bool
    shown: tuple[str, int]

    def location(self, ns: str) -> str:
        shown_ns, row_id = self.shown
        return f"/ns/{ns}/next" if self.move_on else f"/ns/{shown_ns}/rows/{row_id}"


# An action: (connection, namespace, row id, form, session) -> what it did.
Action = Callable[[Connection, str, int, dict[str, str], auth.Session], Done]


def include(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
    """Included, its flags accepted as review's include key accepts them: the row page
    shows them above the keys (``flags_accepted_by`` records who saw them)."""
    curate_rows.set_state(conn, ns, [row_id], "included", curator=s.curator, accept_flags=True)
    s.last = (ns, row_id)
    return Done(f"row {row_id} included", True, (ns, row_id))


def exclude(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
    reason = f.get("note", "").strip() or None
    curate_rows.set_state(conn, ns, [row_id], "excluded", curator=s.curator, note=reason)
    s.last = (ns, row_id)
    return Done(f"row {row_id} excluded", True, (ns, row_id))


def reset(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
    """This row back to pending; on a pending row, the session's last decision (review's undo),
    whichever namespace that was in: the page then shows that row."""
    changed = curate_rows.set_state(conn, ns, [row_id], "pending", curator=s.curator, strict=False)
    if not changed:
        if s.last is None:
            raise Conflict(f"row {row_id} is pending and there is nothing to undo")
        ns, row_id = s.last
        curate_rows.set_state(conn, ns, [row_id], "pending", curator=s.curator, strict=False)
    s.last = None
    return Done(f"row {row_id} is pending again", False, (ns, row_id))


def correct(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
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
        return Done(f"row {row_id} unchanged: nothing stored", False, (ns, row_id))
    curate_rows.set_correction(conn, ns, row_id, stored, curator=s.curator)
    curate_rows.set_state(
        conn, ns, [row_id], "included", curator=s.curator, strict=False, accept_flags=True
    )
    s.last = (ns, row_id)
    return Done(f"row {row_id} corrected and included", True, (ns, row_id))


def proposal(accept: bool) -> Action:
    def decide(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
        curate_rows.as_curator(conn, s.curator)
        # accepting includes the row, from the page that lists its flags: they are
        # accepted and recorded, as review's `a` does (the same call)
        if not flagged.decide_proposals(conn, ns, [row_id], accept=accept, accept_flags=True):
            curate_rows.get_row(conn, ns, row_id)  # NotFound for a row that is not there
            raise Conflict(f"row {row_id} has no proposal to {'accept' if accept else 'reject'}")
        if accept:
            s.last = (ns, row_id)
            said = f"row {row_id} included with the proposal accepted as its correction"
            return Done(said, True, (ns, row_id))
        return Done(f"row {row_id}: proposal rejected, the row stays pending", False, (ns, row_id))

    return decide


def note(conn: Connection, ns: str, row_id: int, f: dict[str, str], s: auth.Session) -> Done:
    curate_rows.as_curator(conn, s.curator)
    if not db.set_note(conn, ns, row_id, f.get("note", "").strip() or None):
        raise NotFound(f"no row {row_id} in {ns}")
    return Done(f"row {row_id}: note saved", False, (ns, row_id))


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
    request["back"] = f"/ns/{ns}/rows/{row_id}"  # refused: back to the row, saying why
    f = await form(request)
    s = pages.session(request)
    try:
        done = await s.db(_run, action, ns, row_id, f, s, commit=True)
    except CurationError:
        if action is correct:  # the row page offers the refused text again, not the answer
            s.draft = (ns, row_id, f.get("correction", ""))
        raise
    s.flash = done.said
    raise web.HTTPSeeOther(done.location(ns))


def _run(
    conn: Connection, action: Action, ns: str, row_id: int, f: dict[str, str], s: auth.Session
) -> Done:
    return action(conn, ns, row_id, f, s)

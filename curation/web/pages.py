"""The pages (GET): namespaces, a namespace's rows, one row, next pending, sign-in form.

Each handler parses the request, asks the session's connection one thing through
``curation.curate`` or ``curation.db.web``, and renders a template.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from curation import names
from curation.capture import flags as auto_flags
from curation.curate import rows as curate_rows
from curation.curate.rows import ROW_ID_MAX
from curation.db import feedback as db_feedback
from curation.db import web as db
from curation.db.connect import Connection
from curation.db.web import Link
from curation.errors import InvalidInput
from curation.web import auth, chat, counting, view

if TYPE_CHECKING:
    from curation.curate.coverage import Plan

PAGE = 50
ORDERS = ("seen", "coverage")  # next pending: review's --order
STATES = (
    "pending",
    "included",
    "excluded",
    "corrected",
    "proposals",
    "feedback",
    "disagreements",
    "flagged",
    "all",
)
COUNT_MODEL = "gpt-4o-mini-2024-07-18"  # counts tokens when a namespace names no model
SHOWN_FEEDBACK = 20
DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() takes "²", which int() refuses


def session(request: web.Request) -> auth.Session:
    s: auth.Session = request["session"]
    return s


def namespace(request: web.Request) -> str:
    return names.validate(request.match_info["ns"])


async def home(request: web.Request) -> web.StreamResponse:
    """The sign-in link (``?token=``), else the namespaces page."""
    config = request.app[view.CONFIG]
    if "token" in request.query:
        if not auth.same(request.query.get("token"), config.token):
            return view.render(request, "error.html", status=403, error="wrong sign-in token")
        sessions = request.app[view.SESSIONS]
        raise await auth.begin(request, sessions, config.curator, None, Link(config.url))
    s = session(request)
    found = await s.db(namespaces_overview, config.models_file)
    return view.render(request, "namespaces.html", namespaces=found)


def namespaces_overview(conn: Connection, models_file: Any) -> list[dict[str, Any]]:
    """Each namespace's line, with its training prompt's tokens beside the production
    prompt's (the one most of the latest calls carried; ``curation ns suggest-prompt``
    reads all of them), counted as suggest-prompt counts them; without the tokenizer's
    files, the line says so instead (``counting``) and the page works."""
    found = db.namespaces(conn)
    for ns in found:
        use = db.production_prompt(conn, ns["name"]) or {}
        model = ns["base_model"] or use.get("model") or COUNT_MODEL
        ns["tokens_missing"] = counting.why_not(model, models_file)
        ns["production_tokens"] = counting.count(use.get("system_prompt"), model, models_file)
        ns["training_tokens"] = counting.count(ns["training_system_prompt"], model, models_file)
        ns["counted_with"] = model
    return found


async def login_page(request: web.Request) -> web.StreamResponse:
    return login_form(request)


def login_form(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    # the token this browser already holds, if any: a sign-in page loaded twice (a reload,
    # a restored tab) must not leave the first copy's form with a token the cookie lost
    secret = request.app[view.CONFIG].secret
    held = request.cookies.get(auth.LOGIN_COOKIE, "")
    token = held if auth.genuine(secret, held) else auth.signed(secret, secrets.token_urlsafe(32))
    response = view.render(request, "login.html", status=status, error=error, login_csrf=token)
    auth.set_cookie(response, auth.LOGIN_COOKIE, token, secure=request.secure)
    return response


@dataclass(frozen=True)
class RowQuery:
    """A rows page's filters, parsed from its query string (bad values: InvalidInput)."""

    state: str
    search: str | None
    tag: dict[str, str] | None
    model: str | None
    since: datetime | None
    after: int | None
    flag: str | None = None  # a reason of capture/flags.py

    @classmethod
    def parse(cls, query: Any) -> RowQuery:
        state = query.get("state") or "all"
        if state not in STATES:
            raise InvalidInput(f"state {state!r}: use one of {', '.join(STATES)}")
        tag = query.get("tag") or None
        if tag is not None and "=" not in tag:
            raise InvalidInput(f"tag {tag!r}: use KEY=VALUE")
        since = query.get("since") or None
        after = query.get("after") or None
        flag = query.get("flag") or None
        if flag is not None and flag not in auto_flags.REASONS:
            raise InvalidInput(f"flag {flag!r}: use one of {', '.join(auto_flags.REASONS)}")
        if any("\x00" in str(v) for v in query.values()):
            raise InvalidInput("a filter holds a NUL character")
        if after is not None and not (DIGITS.fullmatch(after) and 0 < int(after) <= ROW_ID_MAX):
            raise InvalidInput(f"after {after!r}: use a row id")
        try:
            return cls(
                state=state,
                search=query.get("q") or None,
                tag=dict([tag.split("=", 1)]) if tag else None,
                model=query.get("model") or None,
                since=datetime.fromisoformat(since) if since else None,
                after=int(after) if after else None,
                flag=flag,
            )
        except ValueError as exc:
            raise InvalidInput(f"a filter is not valid: {exc}") from exc

    def filters(self) -> list[str]:
        return db.row_filters(
            state=self.state,
            search=self.search,
            tag=self.tag,
            model=self.model,
            since=self.since,
            flag=self.flag,
        )

    def params(self) -> dict[str, Any]:
        given = {"search": self.search, "tag": self.tag, "model": self.model, "since": self.since}
        return {**given, "flag": self.flag}

    def tag_text(self) -> str:
        return "=".join(next(iter(self.tag.items()))) if self.tag else ""

    def link(self, **more: Any) -> str:
        """The query string of these filters (and ``more``), for links and the next page."""
        given = {
            "state": self.state,
            "q": self.search,
            "tag": self.tag_text() or None,
            "model": self.model,
            "since": self.since.isoformat() if self.since else None,
            "flag": self.flag,
            **more,
        }
        return urlencode({k: v for k, v in given.items() if v is not None})


async def rows(request: web.Request) -> web.StreamResponse:
    ns = namespace(request)
    q = RowQuery.parse(request.query)
    found, count = await session(request).db(
        db.rows_page, ns, q.filters(), q.params(), q.after, PAGE
    )
    more = q.link(after=found[-1]["id"]) if len(found) == PAGE else None
    return view.render(
        request,
        "rows.html",
        namespace=ns,
        rows=found,
        count=f"{count}+" if count >= db.COUNT_CAP else str(count),
        q=q,
        states=STATES,
        reasons=auto_flags.REASONS,
        meanings=chat.FLAG_MEANINGS,
        next_query=more,
    )


async def next_pending(request: web.Request) -> web.StreamResponse:
    """Claim the next pending row, as review does (two sessions get different rows), most
    seen first or, after ``?order=coverage``, as ``review --order coverage`` orders them
    (the session keeps that order for the namespace until ``?order=seen``)."""
    ns = namespace(request)
    s = session(request)
    if not auth.same_site(request):
        raise web.HTTPForbidden(text="next pending from another site: open it from the page")
    skip = s.skipped.setdefault(ns, [])
    if "skip" in request.query and DIGITS.fullmatch(request.query["skip"]):
        skip.append(int(request.query["skip"]))
        s.flash = f"row {request.query['skip']} skipped"
    order = request.query.get("order")
    if order not in (None, *ORDERS):
        raise InvalidInput(f"order {order!r}: use one of {', '.join(ORDERS)}")
    if order == "seen":
        s.plans.pop(ns, None)
    if order == "coverage":
        s.plans[ns] = await s.db(coverage_plan, ns, commit=True)
    plan = s.plans.get(ns)
    pick = functools.partial(by_coverage, namespace=ns, skip=skip, plan=plan) if plan else None
    row = await s.call(s.link.claim, ns, skip, pick)
    if row is None:
        s.flash = f"{s.flash + '; ' if s.flash else ''}nothing left to review in {ns}"
        raise web.HTTPSeeOther(f"/ns/{ns}/rows?state=pending")
    raise web.HTTPSeeOther(f"/ns/{ns}/rows/{row['id']}")


def coverage_plan(conn: Connection, ns: str) -> Plan:
    """Review's coverage start: rows captured since the last run get a cluster, then the
    clusters are ranked once (``curate.coverage``, as ``review --order coverage``)."""
    from curation.curate import coverage  # numpy, datasketch: only for this order

    coverage.update(conn, ns)
    return coverage.plan(conn, ns)


def by_coverage(
    conn: Connection, *, namespace: str, skip: list[int], plan: Plan
) -> dict[str, Any] | None:
    from curation.curate import coverage

    return coverage.next_for_review(conn, namespace, skip, plan)


def row_page(conn: Connection, ns: str, row_id: int) -> dict[str, Any]:
    """Everything the row page shows, read in one go."""
    row = curate_rows.get_row(conn, ns, row_id)
    return {
        "row": row,
        "history": curate_rows.history(conn, ns, row_id),
        "feedback": db_feedback.counts(conn, ns, row_id),
        "events": db_feedback.events(conn, ns, row_id, SHOWN_FEEDBACK),
        "around": db.neighbours(conn, ns, row_id),
    }


async def row(request: web.Request) -> web.StreamResponse:
    ns = namespace(request)
    row_id = int(request.match_info["id"])
    s = session(request)
    got = await s.db(row_page, ns, row_id)
    r = got["row"]
    editor, must_be_json = chat.editor_text(r)
    draft, s.draft = s.draft, None
    drafted = draft is not None and draft[:2] == (ns, row_id)
    if draft is not None and drafted:  # a refused correction: the text to fix, not the answer
        editor = draft[2]
    return view.render(
        request,
        "row.html",
        namespace=ns,
        row=r,
        claimed=s.link.claimed == row_id,
        messages=chat.conversation(r.get("request")),
        answer=chat.answer(r),
        correction=chat.message(r["corrected_response"]) if r.get("corrected_response") else None,
        proposal=chat.message(r["proposed_response"]) if r.get("proposed_response") else None,
        parameters=chat.parameters(r.get("request")),
        tools=chat.tools(r.get("request")),
        tags=json.dumps(r.get("tags") or {}, ensure_ascii=False),
        editor=editor,
        drafted=drafted,
        must_be_json=must_be_json,
        flags=chat.flag_list(r.get("flags")),
        **{k: v for k, v in got.items() if k != "row"},
    )

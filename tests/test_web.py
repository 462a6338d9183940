"""The curator web page against a real server (``curation web`` as a subprocess, on a
free port), a real PostgreSQL and a plain HTTP client over sockets: what the server
promises. What only a browser shows (keys, the page's own JSON check, no script run,
screenshots) is tested in headless Chromium in tests/test_web_browser.py."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.capture import flags
from curation.db import queries
from curation.db import web as db_web
from curation.errors import CurationError, InvalidInput
from curation.web import chat, counting, pages
from tests.conftest import LOGIN_PASSWORD
from tests.factories import add_row
from tests.harness import ROOT, query

NS = "p"
PASSWORD = LOGIN_PASSWORD  # never shown back, never logged
CLI = (sys.executable, "-m", "curation")
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def text_of(self, element_id: str) -> str:
        found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', self.body, re.S)
        assert found, f"no #{element_id} in the page"
        return found.group(1).strip()

    def csrf(self) -> str:
        found = re.search(r'<meta name="csrf-token" content="([^"]*)"', self.body)
        assert found and found.group(1), "no CSRF token in the page"
        return found.group(1)


@dataclass
class Browser:
    """A client that keeps its cookies and follows no redirect on its own."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        html: bool = True,
        extra: dict[str, str] | None = None,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Accept": "text/html" if html else "application/json", **(extra or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = urlencode(form) if form is not None else None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        got = conn.getresponse()
        text = got.read().decode()
        for header in got.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        conn.close()
        return Response(got.status, got.headers, text)

    def get(self, path: str, html: bool = True) -> Response:
        return self.request("GET", path, html=html)

    def post(self, path: str, form: dict[str, str]) -> Response:
        return self.request("POST", path, form)

    def follow(self, r: Response, limit: int = 5) -> Response:
        while r.status in (302, 303) and limit:
            r, limit = self.get(r.location), limit - 1
        return r

    def act(self, row_id: int, action: str, **form: str) -> Response:
        """A row's action button, with the CSRF token of the row's page."""
        token = self.get(f"/ns/{NS}/rows/{row_id}").csrf()
        return self.post(f"/ns/{NS}/rows/{row_id}/{action}", {"csrf": token, **form})


@dataclass
class Server:
    port: int
    token: str
    process: subprocess.Popen[str]

    def signed_in(self) -> Browser:
        b = Browser(self.port)
        r = b.get(f"/?token={self.token}")
        assert r.status == 303 and r.location == "/"
        return b


@pytest.fixture
def web(db_url: str) -> Iterator[Server]:
    with serve(db_url) as server:
        yield server


@contextlib.contextmanager
def serve(
    db_url: str, env: dict[str, str] | None = None, *options: str, passwordless: bool = True
) -> Iterator[Server]:
    """``curation web`` on a free port until the test ends (``env``: its environment). The
    test PostgreSQL trusts 127.0.0.1: login tests need ``--allow-passwordless-logins``."""
    allow = ("--allow-passwordless-logins",) if passwordless else ()
    args = [*CLI, "--database-url", db_url, "web", "--listen", "127.0.0.1:0", "--curator", "ana"]
    proc = subprocess.Popen(
        [*args, *allow, *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.fullmatch(r"curation web: http://127\.0\.0\.1:(\d+)/\?token=(\S+)\n", line)
    assert found, f"not the sign-in line: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    try:
        yield Server(int(found.group(1)), found.group(2), proc)
    finally:
        proc.terminate()
    assert proc.wait(timeout=20) == 0
    assert proc.stderr is not None and PASSWORD not in proc.stderr.read()


@pytest.fixture
def rows(conn: psycopg.Connection[Any]) -> Callable[..., int]:
    def add(prompt: str, answer: str = "ok", **kw: Any) -> int:
        return add_row(conn, NS, prompt, answer, **{"included": False, **kw})

    return add


def sign_in_as(web: Server, login: str) -> tuple[Browser, Response]:
    b = Browser(web.port)
    form = b.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.body)
    assert form.status == 200 and token and 'id="login"' in form.body
    return b, b.post("/login", {"csrf": token.group(1), "user": login, "password": PASSWORD})


def ids_in(r: Response) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-row-id="(\d+)"', r.body)]


def test_the_token_link_signs_in_and_leaves_the_url(web: Server, rows: Callable[..., int]) -> None:
    rows("where is Paris?")
    b = Browser(web.port)
    r = b.get(f"/?token={web.token}")
    assert (r.status, r.location) == (303, "/")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    page = b.get("/")
    assert page.status == 200 and 'id="namespaces"' in page.body
    assert f'<tr data-namespace="{NS}">' in page.body and 'class="prompt-form"' in page.body
    assert page.text_of("curator") == "ana"
    headers = page.headers
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self';")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert (headers["X-Content-Type-Options"], headers["Referrer-Policy"]) == (
        "nosniff",
        "same-origin",
    )


def test_a_wrong_token_or_none_gets_no_session(web: Server) -> None:
    b = Browser(web.port)
    r = b.get("/?token=wrong")
    assert r.status == 403 and not b.cookies and "wrong sign-in token" in r.body
    assert "Content-Security-Policy" in r.headers
    assert b.get("/").location == "/login"
    assert b.get(f"/ns/{NS}/rows", html=False).status == 401
    b.cookies["curation_session"] = "made-up"
    assert b.get("/").location == "/login"


def test_a_post_without_the_csrf_token_is_refused(web: Server, rows: Callable[..., int]) -> None:
    row = rows("where is Paris?")
    b = web.signed_in()
    assert b.post(f"/ns/{NS}/rows/{row}/include", {}).status == 403
    assert b.post(f"/ns/{NS}/rows/{row}/include", {"csrf": "wrong"}).status == 403
    other = web.signed_in()  # a token of another session is wrong too
    token = other.get("/").csrf()
    assert b.post(f"/ns/{NS}/rows/{row}/include", {"csrf": token}).status == 403
    assert (
        query(web_db(web), "SELECT included FROM p_openai_chat_completion")[0]["included"] is None
    )
    assert b.act(row, "include").status == 303


def web_db(web: Server) -> str:
    args = web.process.args
    assert isinstance(args, list)
    return str(args[args.index("--database-url") + 1])


def test_include_moves_on_and_says_so_as_review_does(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    first, second = rows("where is Paris?"), rows("where is Lyon?")
    b = web.signed_in()
    r = b.act(first, "include")
    assert (r.status, r.location) == (303, f"/ns/{NS}/next")
    page = b.follow(r)
    assert page.text_of("status") == f"row {first} included"
    assert f'data-row-id="{second}" data-state="pending"' in page.body
    audit = query(
        db_url, "SELECT changed_by, column_name FROM curation_audit WHERE row_id = %s", [first]
    )
    assert {"changed_by": "ana", "column_name": "included"} in audit
    undone = b.follow(b.act(second, "reset"))  # u on a pending row: the last decision undone
    assert undone.text_of("status") == f"row {first} is pending again"
    assert f'data-row-id="{first}" data-state="pending"' in undone.body
    assert 'id="audit"' in undone.body and '<b class="who">ana</b>' in undone.body


def test_a_row_held_by_one_curator_is_not_decided_by_another(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    row = rows("where is Paris?")
    holder, other = web.signed_in(), web.signed_in()
    assert holder.get(f"/ns/{NS}/next").location == f"/ns/{NS}/rows/{row}"
    refused = other.act(row, "include")  # waits for the lock 3 s, then says why
    assert (refused.status, refused.location) == (303, f"/ns/{NS}/rows/{row}")
    page = other.follow(refused)  # the row again, the line in #error, nothing changed
    assert page.status == 200 and "another curator" in page.text_of("error")
    assert f'data-row-id="{row}" data-state="pending"' in page.body
    assert 'id="error"' not in other.get(f"/ns/{NS}/rows/{row}").body  # said once
    assert holder.act(row, "exclude").status == 303
    assert query(db_url, "SELECT excluded FROM p_openai_chat_completion")[0]["excluded"]


def test_a_connection_the_server_closed_is_opened_again(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    row = rows("where is Paris?")
    b = web.signed_in()
    assert b.get(f"/ns/{NS}/rows").status == 200
    killed = query(
        db_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'curation web' AND datname = current_database()",
    )
    assert killed
    assert b.get(f"/ns/{NS}/rows/{row}").status == 200


def test_a_postgres_login_works_as_that_login(
    web: Server, rows: Callable[..., int], db_url: str, make_login: Callable[..., str]
) -> None:
    row = rows("where is Paris?")
    login = make_login("web")
    b, r = sign_in_as(web, login)
    assert (r.status, r.location) == (303, "/")
    assert b.get("/").text_of("curator") == login
    assert b.act(row, "include").status == 303
    audit = query(db_url, "SELECT changed_by, login FROM curation_audit WHERE row_id = %s", [row])
    assert audit and all(a == {"changed_by": login, "login": login} for a in audit)
    # what the login may not do in psql it may not do here: one line, not a traceback
    refused = b.post(f"/ns/{NS}/prompt", {"csrf": b.get("/").csrf(), "prompt": "short"})
    assert (refused.status, refused.location) == (303, "/")
    page = b.follow(refused)
    assert page.status == 200 and "permission denied" in page.text_of("error")
    assert 'id="namespaces"' in page.body and "Traceback" not in page.body


def test_a_login_without_grants_or_a_wrong_login_gets_a_clear_error(
    web: Server, rows: Callable[..., int], make_login: Callable[..., str]
) -> None:
    rows("where is Paris?")
    b, r = sign_in_as(web, make_login("web", curator=False))
    page = b.follow(r)
    assert page.status == 403 and "permission denied" in page.text_of("error")
    assert "Traceback" not in page.body
    _, wrong = sign_in_as(web, "no_such_login")
    assert wrong.status == 401
    # the same line for a login that does not exist as for a wrong password: no enumeration
    assert wrong.text_of("error") == "sign-in failed: wrong login or password"
    assert 'id="login"' in wrong.body
    assert PASSWORD not in wrong.body
    b = Browser(web.port)
    b.get("/login")
    assert b.post("/login", {"user": "x", "password": "y"}).status == 403  # no CSRF token


def test_captured_html_is_shown_as_text(web: Server, rows: Callable[..., int]) -> None:
    row = rows(
        HOSTILE,
        HOSTILE,
        messages=[
            {"role": "system", "content": HOSTILE},
            {"role": "user", "content": HOSTILE},
        ],
        tags={"x": HOSTILE},
    )
    b = web.signed_in()
    for page in (b.get(f"/ns/{NS}/rows/{row}"), b.get(f"/ns/{NS}/rows"), b.get("/")):
        assert page.status == 200
        assert "<script>alert" not in page.body and "<img src=x" not in page.body
    shown = b.get(f"/ns/{NS}/rows/{row}").body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert shown.count('<script src="/static/web.js" defer></script>') == 1
    assert re.findall(r"<script[^>]*>", shown) == ['<script src="/static/web.js" defer>']


def test_a_json_answer_takes_only_json_in_its_style(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    row = rows("where is Paris?", '{"city":"Paris","country":"FR"}')
    b = web.signed_in()
    page = b.get(f"/ns/{NS}/rows/{row}")
    assert 'data-json="true"' in page.body and "&#34;city&#34;: &#34;Paris&#34;" in page.body
    bad = b.act(row, "correct", correction='{"city": "Lyon",')
    assert (bad.status, bad.location) == (303, f"/ns/{NS}/rows/{row}")
    again = b.follow(bad)  # the row page, the editor open on the refused text to fix
    assert "not valid JSON" in again.text_of("error")
    assert (
        '<details id="editor" open>' in again.body
        and "{&#34;city&#34;: &#34;Lyon&#34;,<" in again.body
    )
    assert (
        b.request(
            "POST",
            f"/ns/{NS}/rows/{row}/correct",
            {"csrf": again.csrf(), "correction": "{"},
            html=False,
        ).status
        == 400
    )
    assert (
        query(db_url, "SELECT corrected_response FROM p_openai_chat_completion")[0][
            "corrected_response"
        ]
        is None
    )
    ok = b.act(row, "correct", correction='{\n  "city": "Lyon",\n  "country": "FR"\n}')
    assert ok.status == 303
    assert b.follow(ok).text_of("status").startswith(f"row {row} corrected and included;")
    stored = query(db_url, "SELECT corrected_response, included FROM p_openai_chat_completion")[0]
    assert stored["corrected_response"]["content"] == '{"city":"Lyon","country":"FR"}'
    assert stored["included"] is not None


def test_two_sessions_get_different_next_rows(web: Server, rows: Callable[..., int]) -> None:
    made = {rows(f"question {i}") for i in range(3)}
    one, two = web.signed_in(), web.signed_in()
    first, second = one.get(f"/ns/{NS}/next"), two.get(f"/ns/{NS}/next")
    assert first.status == second.status == 303
    held = {first.location.rsplit("/", 1)[1], second.location.rsplit("/", 1)[1]}
    assert len(held) == 2 and {int(i) for i in held} <= made
    third = one.follow(one.act(int(first.location.rsplit("/", 1)[1]), "include"))
    assert third.text_of("status").endswith("included")
    assert re.search(r'id="row" data-row-id="(\d+)"', third.body).group(1) not in held  # type: ignore[union-attr]


def test_pages_walk_every_row_once(web: Server, rows: Callable[..., int]) -> None:
    made = {rows(f"question {i}") for i in range(120)}
    b = web.signed_in()
    seen: list[int] = []
    page = b.get(f"/ns/{NS}/rows")
    assert page.text_of("count") == "120"
    while True:
        seen += ids_in(page)
        more = re.search(r'<a id="next" href="([^"]+)"', page.body)
        if not more:
            break
        page = b.get(more.group(1).replace("&amp;", "&"))
    assert len(seen) == len(set(seen)) == 120 and set(seen) == made
    assert seen == sorted(seen, reverse=True)


def test_filters(web: Server, rows: Callable[..., int], conn: psycopg.Connection[Any]) -> None:
    pending = rows("where is Paris?", tags={"team": "a"})
    included = rows("where is Lyon?", included=True)
    excluded = rows("where is Nice?", excluded=True)
    corrected = rows("where is Metz?", corrected={"role": "assistant", "content": "Metz"})
    conn.execute("UPDATE p_openai_chat_completion SET model = 'small' WHERE id = %s", [included])
    conn.execute(
        "UPDATE p_openai_chat_completion SET last_seen_at = now() - interval '9 days'"
        " WHERE id <> %s",
        [pending],
    )
    b = web.signed_in()

    def listed(**q: str) -> set[int]:
        page = b.get(f"/ns/{NS}/rows?{urlencode(q)}")
        assert page.status == 200, page.body
        assert page.text_of("count") == str(len(ids_in(page)))
        return set(ids_in(page))

    assert listed() == {pending, included, excluded, corrected}
    assert listed(state="pending") == {pending, corrected}
    assert listed(state="included") == {included}
    assert listed(state="excluded") == {excluded}
    assert listed(state="corrected") == {corrected}
    assert listed(state="proposals") == listed(state="feedback") == set()
    call = uuid.uuid4()
    conn.execute(
        "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'p', %s)", [call, excluded]
    )
    conn.execute(
        "INSERT INTO shadow_comparison (call_id, namespace, kind, student_model, agreed)"
        " VALUES (%s, 'p', 'shadow', 'small', false)",
        [call],
    )
    conn.execute(
        "INSERT INTO feedback (call_id, namespace, row_id, score) VALUES (%s, 'p', %s, -1)",
        [call, included],
    )
    conn.execute(
        "UPDATE p_openai_chat_completion SET proposed_response = '{}' WHERE id = %s", [pending]
    )
    assert listed(state="disagreements") == {excluded}
    assert listed(state="feedback") == {included}
    assert listed(state="proposals") == {pending}
    assert listed(q="LYON") == {included}
    assert listed(tag="team=a") == {pending}
    assert listed(model="small") == {included}
    assert listed(since="2020-01-01", state="pending", q="paris") == {pending}
    assert listed(since="2999-01-01") == set()
    assert b.get(f"/ns/{NS}/rows?state=sideways").status == 400
    assert b.get(f"/ns/{NS}/rows?since=yesterday").status == 400
    assert b.get("/ns/Bad;Name/rows").status in (400, 404)


def test_the_conversation_is_read_as_chat() -> None:
    request = {
        "model": "gpt-4o",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "long prompt"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp":20}'},
        ],
    }
    shown = chat.conversation(request)
    assert [m.role for m in shown] == ["system", "user", "assistant", "tool"]
    assert shown[1].text == "weather?"
    assert shown[2].tool_calls == (chat.ToolCall("weather", '{\n  "city": "Paris"\n}'),)
    assert shown[3].label == "weather" and shown[3].is_json
    assert chat.parameters(request) == {"model": "gpt-4o", "temperature": "0"}
    for odd in (None, [], {"messages": "x"}, {"messages": [1, None, {"role": 5}]}, {"input": 3}):
        chat.conversation(odd)
    assert json.loads(
        chat.answer({"response": {"choices": [{"message": {"content": "[1]"}}]}}).text
    ) == [1]


@given(
    st.dictionaries(
        st.sampled_from(["state", "q", "tag", "model", "since", "after", "flag"]), st.text()
    )
)
def test_any_query_string_is_read_or_refused_in_one_line(query: dict[str, str]) -> None:
    """What a browser sends is untrusted too: a filter is read, or refused as InvalidInput."""
    try:
        q = pages.RowQuery.parse(query)
    except InvalidInput:
        return
    assert q.state in pages.STATES and q.flag in (None, *flags.REASONS)
    q.link(after=1)
    chat.flag_list(list(query.values()))  # any text is shown, as itself or with its meaning


def test_without_the_tokenizer_files_the_namespaces_page_still_works(
    db_url: str, rows: Callable[..., int], tmp_path: Path
) -> None:
    """Offline, no TIKTOKEN_CACHE_DIR copy: the count says why, the page works, and it
    does not wait on the download (tried once per server, in a thread, bounded)."""
    rows("where is Paris?")
    query(db_url, "UPDATE namespace SET training_system_prompt = 'List places.' WHERE name = 'p'")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}  # empty: tiktoken downloads
    with serve(db_url, env) as server:
        b = server.signed_in()
        started = time.monotonic()
        page = b.get("/")
        took = time.monotonic() - started
        assert page.status == 200, page.body
        assert "cannot load the tiktoken encoding" not in page.body
        shown = r'tokens: <span class="tokens-missing">tokenizer (files missing|still loading)'
        assert re.search(shown, page.body)
        assert (
            f'<tr data-namespace="{NS}">' in page.body and ">List places.</textarea>" in page.body
        )
        assert took < counting.WAIT + 5, f"the page waited {took:.1f} s for the tokenizer"
        again = b.get("/")  # the failed download is not tried again on each load
        assert 'tokens: <span class="tokens-missing">tokenizer files missing' in again.body
        assert b.follow(b.act(rows("where is Lyon?"), "include")).status == 200


def test_a_session_ends_when_unused_for_its_idle_time() -> None:
    from curation.db.web import Link
    from curation.web.auth import Sessions

    kept, idle = Sessions(idle=3600.0), Sessions(idle=0.0)
    s = kept.start("ana", None, Link("postgresql://nobody@127.0.0.1:1/none"))
    assert kept.get(s.id) is s and kept.get("made-up") is None and kept.expired() == []
    t = idle.start("ana", None, Link("postgresql://nobody@127.0.0.1:1/none"))
    assert idle.get(t.id) is None  # and its (never opened) connection closed
    u = idle.start("bob", None, Link("postgresql://nobody@127.0.0.1:1/none"))
    assert idle.expired() == [u] and idle.get(u.id) is None


def test_the_training_prompt_is_edited_beside_its_token_count(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    rows("where is Paris?")  # its production prompt is the factories' long one
    b = web.signed_in()
    saved = b.follow(
        b.post(f"/ns/{NS}/prompt", {"csrf": b.get("/").csrf(), "prompt": "List places."})
    )
    assert saved.text_of("status") == f"training prompt of {NS} saved"
    assert ">List places.</textarea>" in saved.body
    counts = re.search(r'"training-tokens">(\d+)<.*"production-tokens">(\d+)<', saved.body, re.S)
    assert counts and 0 < int(counts.group(1)) < int(counts.group(2))
    assert query(db_url, "SELECT training_system_prompt FROM namespace WHERE name = 'p'") == [
        {"training_system_prompt": "List places."}
    ]


def test_flagged_rows_are_filtered_shown_and_accepted_by_include(
    web: Server, rows: Callable[..., int], conn: psycopg.Connection[Any], db_url: str
) -> None:
    plain, cut, refused = rows("where is Paris?"), rows("where is Lyon?"), rows("where is Nice?")
    conn.execute(f"UPDATE {NS}_openai_chat_completion SET flags = '{{}}' WHERE id = %s", [plain])
    conn.execute(
        f"UPDATE {NS}_openai_chat_completion SET flags = '{{truncated}}' WHERE id = %s", [cut]
    )
    conn.execute(
        f"UPDATE {NS}_openai_chat_completion SET flags = '{{refusal,empty}}' WHERE id = %s",
        [refused],
    )
    b = web.signed_in()
    flagged = b.get(f"/ns/{NS}/rows?state=flagged")
    assert set(ids_in(flagged)) == {cut, refused} and flagged.text_of("count") == "2"
    assert '<span class="flag" title="truncated: the answer was cut off' in flagged.body
    assert ids_in(b.get(f"/ns/{NS}/rows?flag=truncated")) == [cut]
    assert ids_in(b.get(f"/ns/{NS}/rows?flag=empty&state=pending")) == [refused]
    assert b.get(f"/ns/{NS}/rows?flag=sideways").status == 400
    page = b.get(f"/ns/{NS}/rows/{refused}")
    assert "<h2>⚑ Flagged: refusal, empty</h2>" in page.body
    assert '<li data-flag="empty"><b>empty</b>: the answer has no text' in page.body
    assert 'id="flags"' not in b.get(f"/ns/{NS}/rows/{plain}").body
    # `curation include` refuses a flagged row without --accept-flags; the page's include
    # key is review's: the flags were on screen, so including accepts them, recorded
    r = b.act(cut, "include")
    assert (r.status, r.location) == (303, f"/ns/{NS}/next"), r.body
    assert b.follow(r).text_of("status") == f"row {cut} included"
    [got] = query(
        db_url,
        f"SELECT included IS NOT NULL AS included, flags_accepted_by, flags_accepted_at IS NOT NULL"
        f" AS at FROM {NS}_openai_chat_completion WHERE id = %s",
        [cut],
    )
    assert got == {"included": True, "flags_accepted_by": "ana", "at": True}
    assert "Accepted by ana" in b.get(f"/ns/{NS}/rows/{cut}").body
    corrected = b.follow(b.act(refused, "correct", correction="Nice is in France."))
    assert corrected.text_of("status") == f"row {refused} corrected and included"
    assert query(
        db_url,
        f"SELECT flags_accepted_by FROM {NS}_openai_chat_completion WHERE id = %s",
        [refused],
    ) == [{"flags_accepted_by": "ana"}]
    proposed = rows("where is Metz?")
    conn.execute(
        f"UPDATE {NS}_openai_chat_completion SET flags = '{{empty}}',"
        """ proposed_response = '{"role": "assistant", "content": "Lorraine"}' WHERE id = %s""",
        [proposed],
    )
    assert b.act(proposed, "accept").status == 303
    assert query(
        db_url,
        f"SELECT flags_accepted_by, included IS NOT NULL AS included"
        f" FROM {NS}_openai_chat_completion WHERE id = %s",
        [proposed],
    ) == [{"flags_accepted_by": "ana", "included": True}]


def test_search_finds_answers_too_through_their_index(
    web: Server, rows: Callable[..., int], conn: psycopg.Connection[Any]
) -> None:
    in_prompt = rows("tell me about Lutetia")
    in_answer = rows("what was Paris called?", answer="Lutetia, in Roman times")
    in_correction = rows("and Lyon?", answer="no idea", corrected={"content": "Lugdunum"})
    tool = rows(
        "weather in Nice?",
        answer=None,
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
    )
    rows("where is Metz?", answer="in Lorraine")
    b = web.signed_in()
    assert set(ids_in(b.get(f"/ns/{NS}/rows?q=lutetia"))) == {in_prompt, in_answer}
    assert ids_in(b.get(f"/ns/{NS}/rows?q=LUGDUNUM")) == [in_correction]
    assert ids_in(b.get(f"/ns/{NS}/rows?q=no+idea")) == []  # the answer in force only
    assert ids_in(b.get(f"/ns/{NS}/rows?q=%22function%22")) == [tool]
    assert ids_in(b.get(f"/ns/{NS}/rows?q=lorraine&state=pending")) != []
    conn.execute(  # enough other rows that reading them all costs more than two lookups
        f"INSERT INTO {NS}_openai_chat_completion (namespace, user_prompt, response)"
        " SELECT %s, 'prompt ' || g, json_build_object('choices', json_build_array("
        " json_build_object('message', json_build_object('content', 'answer ' || g))))"
        " FROM generate_series(1, 3000) g",
        [NS],
    )
    conn.execute(f"ANALYZE {NS}_openai_chat_completion")
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_indexscan = off")  # as the planner does for a rare term: no walk
    filters = db_web.row_filters(state=None, search="x", tag=None, model=None, since=None)
    sql = queries.for_namespace("list_rows", NS, filters=filters, order="list_newest")
    used = ""
    for term in ("lutetia", db_web.escape_like("100%_sure")):  # escaped wildcards: still indexed
        plan = conn.execute(
            psycopg.sql.SQL("EXPLAIN ") + sql, {"namespace": NS, "search": term, "limit": 50}
        ).fetchall()
        used += "\n".join(str(next(iter(r.values()))) for r in plan)
    for parent in ("prompt_trgm", "answer_trgm"):
        [index] = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            f" WHERE i.inhparent = 'openai_chat_completion_{parent}_idx'::regclass"
            " AND c.relname LIKE %s",
            [f"{NS}\\_%"],
        ).fetchall()
        assert used.count(f"Bitmap Index Scan on {index['relname']} ") == 2, used


def test_undo_of_a_decision_in_another_namespace_shows_that_row(
    web: Server, rows: Callable[..., int], conn: psycopg.Connection[Any]
) -> None:
    here = rows("where is Paris?")
    there = add_row(conn, "q", "where is Rome?", included=False)
    b = web.signed_in()
    token = b.get(f"/ns/q/rows/{there}").csrf()
    assert b.post(f"/ns/q/rows/{there}/include", {"csrf": token}).status == 303
    r = b.act(here, "reset")  # u on a pending row of p: the last decision, in q, undone
    assert (r.status, r.location) == (303, f"/ns/q/rows/{there}")
    page = b.follow(r)
    assert page.text_of("status") == f"row {there} is pending again"
    assert f'data-row-id="{there}" data-state="pending" data-namespace="q"' in page.body


def test_next_by_coverage_hands_out_one_row_per_group_first(
    web: Server, rows: Callable[..., int], conn: psycopg.Connection[Any]
) -> None:
    from tests.traffic import traffic

    truth = {rows(text): template for template, text in traffic(60, seed=15, groups=3)}
    b = web.signed_in()
    assert b.get(f"/ns/{NS}/next?order=sideways").status == 400
    r = b.get(f"/ns/{NS}/next?order=coverage")
    shown = []
    for _ in range(3):
        assert r.status == 303 and r.location.startswith(f"/ns/{NS}/rows/"), r.body
        row = int(r.location.rsplit("/", 1)[1])
        shown.append(row)
        r = b.act(row, "include")
        assert r.location == f"/ns/{NS}/next"  # the session keeps the order
        r = b.get(r.location)
    assert sorted(truth[row] for row in shown) == [0, 1, 2]  # one row of each group
    assert b.get(f"/ns/{NS}/next?order=seen").status == 303  # back to most seen first


def test_an_encoding_that_cannot_load_is_said_once_and_not_tried_again() -> None:
    assert counting.unavailable("no_such_encoding_xyz") == counting.MISSING
    assert counting.unavailable("no_such_encoding_xyz", wait=0.0) == counting.MISSING
    assert counting.count("text", "no-such-model", None) == "?"


# --- the security review's findings (issue 15) ---


def test_a_trusting_postgresql_refuses_password_logins(
    db_url: str, make_login: Callable[..., str]
) -> None:
    """The test server trusts 127.0.0.1: any password would do, so without
    --allow-passwordless-logins a login is refused, saying how to sign in instead."""
    with serve(db_url, None, passwordless=False) as web:
        _, r = sign_in_as(web, make_login("web"))
        assert r.status == 403 and r.text_of("error") == db_web.NO_PASSWORD_CHECK
        assert "curation_session" not in r.headers.get("Set-Cookie", "")
        b = Browser(web.port)
        token = re.search(r'name="csrf" value="([^"]+)"', b.get("/login").body)
        assert token
        empty = b.post("/login", {"csrf": token.group(1), "user": "postgres", "password": ""})
        assert empty.status == 400 and "password" in empty.text_of("error")


def test_a_login_uses_only_the_password_given() -> None:
    url = db_web.login_url("postgresql://o@h:5/d?sslmode=require&passfile=/x", "ana", "pw")
    params = dict(p.split("=", 1) for p in url.split())
    assert params["passfile"] == db_web.NO_PASSFILE and not os.path.exists(db_web.NO_PASSFILE)
    assert (params["user"], params["password"], params["sslmode"]) == ("ana", "pw", "require")


def test_requests_naming_another_host_or_origin_are_refused(db_url: str) -> None:
    with serve(db_url, None, "--allow-host", "curate.example") as web:
        b = web.signed_in()
        here = f"127.0.0.1:{web.port}"
        assert b.request("GET", "/", extra={"Host": "evil.example"}).status == 403
        assert b.request("GET", "/", extra={"Host": f"evil.example:{web.port}"}).status == 403
        assert b.request("GET", "/", extra={"Host": "127.0.0.1:1"}).status == 403
        for host in (here, f"localhost:{web.port}", f"[::1]:{web.port}", "curate.example"):
            assert b.request("GET", "/", extra={"Host": host}).status == 200, host
        form = {"csrf": b.get("/").csrf(), "prompt": "x"}
        forged = b.request(
            "POST", f"/ns/{NS}/prompt", form, extra={"Origin": "http://evil.example"}
        )
        assert forged.status == 403
        ours = b.request("POST", f"/ns/{NS}/prompt", form, extra={"Origin": f"http://{here}"})
        assert ours.status == 303


def test_a_non_loopback_listen_warns_of_plain_http(db_url: str) -> None:
    proc = subprocess.Popen(
        [*CLI, "--database-url", db_url, "web", "--listen", "0.0.0.0:0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("curation web: http://0.0.0.0:")
        assert "put it behind a TLS reverse proxy" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_cookie_is_secure_over_https_only() -> None:
    from aiohttp import web

    from curation.web import auth

    plain, tls = web.Response(), web.Response()
    auth.set_cookie(plain, "c", "v")
    auth.set_cookie(tls, "c", "v", secure=True)
    assert "Secure" not in plain.cookies["c"].output() and "Secure" in tls.cookies["c"].output()


def test_sessions_are_capped_and_a_sign_in_ends_the_previous_one(web: Server) -> None:
    from curation.db.web import Link
    from curation.web import auth

    b = web.signed_in()
    first = b.cookies["curation_session"]
    assert b.get(f"/?token={web.token}").status == 303  # signing in again
    assert b.cookies["curation_session"] != first
    stale = Browser(web.port, {"curation_session": first})
    assert stale.get("/").location == "/login"  # the previous session ended
    store = auth.Sessions(idle=3600.0)
    made = [
        store.start("ana", None, Link("postgresql://nobody@127.0.0.1:1/none")) for _ in range(3)
    ]
    made[0].seen -= 10  # the longest unused
    assert store.make_room(made[1].id) == [made[1]]
    for _ in range(auth.MAX_SESSIONS - 2):
        store.start("ana", None, Link("postgresql://nobody@127.0.0.1:1/none"))
    assert store.make_room(None) == [made[0]] and store.get(made[0].id) is None


def test_an_idle_connection_rests_and_a_closed_one_stays_closed(db_url: str) -> None:
    from curation.errors import PermissionDenied

    link = db_web.Link(db_url)
    pid = link.run(lambda c: c.execute("SELECT pg_backend_pid() AS p").fetchone())
    assert link.rest()  # holds no row: closed, opened again on the next request
    assert link.run(lambda c: c.execute("SELECT pg_backend_pid() AS p").fetchone()) != pid
    link.close()  # signed out: a request racing it opens nothing
    with pytest.raises(PermissionDenied, match="sign in again"):
        link.run(lambda c: None)


def test_a_failed_request_keeps_the_claimed_row(
    db_url: str, rows: Callable[..., int], conn: psycopg.Connection[Any]
) -> None:
    row_id = rows("where is Nice?")
    link = db_web.Link(db_url)
    claimed = link.claim(NS, [])
    assert claimed is not None and claimed["id"] == link.claimed == row_id
    assert not link.rest()  # a connection holding a row does not rest
    with pytest.raises(CurationError):
        link.run(lambda c: c.execute("SELECT 1/0"))  # a failed read
    with pytest.raises(InvalidInput):

        def refused(c: Any) -> None:
            raise InvalidInput("refused")

        link.run(refused, commit=True)  # a refused action
    assert link.claimed == row_id
    with pytest.raises(psycopg.errors.LockNotAvailable):  # still locked by the link
        conn.execute(
            "SELECT id FROM openai_chat_completion WHERE namespace = %s AND id = %s FOR UPDATE NOWAIT",
            [NS, row_id],
        )
    link.close()


def test_search_takes_percent_and_underscore_literally(
    web: Server, rows: Callable[..., int]
) -> None:
    sure, percent = rows("I am 100% sure"), rows("I am 100 percent sure")
    snake, plain = rows("call my_func now"), rows("call myXfunc now")
    b = web.signed_in()
    assert ids_in(b.get(f"/ns/{NS}/rows?state=all&q=100%25")) == [sure]
    assert ids_in(b.get(f"/ns/{NS}/rows?state=all&q=my_func")) == [snake]
    assert set(ids_in(b.get(f"/ns/{NS}/rows?state=all&q=100"))) == {sure, percent}
    assert ids_in(b.get(f"/ns/{NS}/rows?state=all&q=%5C")) == []
    assert plain


def test_superscript_digits_are_refused_not_a_bug(web: Server, rows: Callable[..., int]) -> None:
    rows("where is Metz?")
    b = web.signed_in()
    assert b.get(f"/ns/{NS}/rows?after=%C2%B2").status == 400
    r = b.get(f"/ns/{NS}/next?skip=%C2%B2")
    assert r.status == 303 and "/rows/" in r.location


def test_a_body_over_one_mebibyte_is_read(
    web: Server, rows: Callable[..., int], db_url: str
) -> None:
    row_id = rows("where is Lille?")
    b = web.signed_in()
    long_note = "é" * 900_000  # 5.4 MB form-encoded
    r = b.act(row_id, "note", note=long_note)
    assert r.status == 303 and r.location == f"/ns/{NS}/rows/{row_id}"
    saved = query(
        db_url,
        "SELECT note FROM openai_chat_completion WHERE namespace = %s AND id = %s",
        [NS, row_id],
    )
    assert saved[0]["note"] == long_note


def test_next_pending_is_refused_from_another_site(web: Server, rows: Callable[..., int]) -> None:
    rows("where is Brest?")
    b = web.signed_in()
    cross = b.request("GET", f"/ns/{NS}/next", extra={"Sec-Fetch-Site": "cross-site"})
    assert cross.status == 403
    for site in ("same-origin", "none"):
        r = b.request("GET", f"/ns/{NS}/next", extra={"Sec-Fetch-Site": site})
        assert r.status == 303 and "/rows/" in r.location


def test_a_planted_login_csrf_cookie_is_refused(
    web: Server, make_login: Callable[..., str]
) -> None:
    b = Browser(web.port, {"curation_login_csrf": "planted-by-another-port"})
    form = {"csrf": "planted-by-another-port", "user": make_login("web"), "password": PASSWORD}
    assert b.post("/login", form).status == 403
    signed = re.search(r'name="csrf" value="([^"]+)"', Browser(web.port).get("/login").body)
    assert signed and "." in signed.group(1)


def test_every_flag_reason_has_a_meaning_on_the_page() -> None:
    """The rows page's flag filter lists every reason with its meaning (a missing one broke
    every rows page)."""
    from curation.capture import flags
    from curation.web import chat

    assert set(flags.REASONS) <= set(chat.FLAG_MEANINGS)

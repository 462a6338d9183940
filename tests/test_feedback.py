"""Feedback from production: the real openai SDK through `curation proxy` to the fake
upstream gets an X-Curation-Id; feedback posted on it lands in PostgreSQL, attached
to the row before or after the row is written; curators find it in the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pexpect
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation.proxy import feedback
from tests import pg
from tests.cli import run, run_json, spawn
from tests.factories import add_row
from tests.harness import ProxyProcess, Relay, query, wait_for

Start = Callable[..., ProxyProcess]
KEY = "sk-feedback-test"
TABLE = "locations_openai_chat_completion"


def client(proxy: ProxyProcess, api_key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/ns/locations/v1", api_key=api_key, max_retries=0)


def ask(c: OpenAI, text: str, **kw: Any) -> str:
    """Call through the proxy; the X-Curation-Id the answer came with."""
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "A long production prompt about places."},
            {"role": "user", "content": text},
        ],
        **kw,
    )
    if kw.get("stream"):
        list(raw.parse())  # type: ignore[call-overload]
    call_id = raw.headers.get("X-Curation-Id")
    assert call_id is not None, dict(raw.headers)
    return call_id


def post(proxy: ProxyProcess, body: Any, key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        f"{proxy.url}{feedback.PATH}", content=data, headers=headers, timeout=20, **kw
    )


def row_of(db_url: str, prompt: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        try:
            got = query(db_url, f"SELECT * FROM {TABLE} WHERE user_prompt = %s", [prompt])
        except psycopg.errors.UndefinedTable:
            return None
        return got[0] if got else None

    return wait_for(found, timeout=15)  # type: ignore[no-any-return]


def mapped(db_url: str, call_id: str) -> int:
    """The row id the writer mapped ``call_id`` to (waits for it)."""
    sql = "SELECT row_id FROM recorded_call WHERE id = %s AND row_id IS NOT NULL"
    return int(wait_for(lambda: query(db_url, sql, [call_id]), timeout=15)[0]["row_id"])


def is_error(response: httpx.Response, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["code"], body["error"]["param"]) == (code, param), body
    assert body["error"]["message"]


# -- the id --------------------------------------------------------------


def test_every_recorded_answer_carries_its_id(
    start_proxy: Start, db_url: str, fake_openai: Any
) -> None:
    proxy = start_proxy()
    c = client(proxy)
    plain = ask(c, "I live in Lyon")
    streamed = ask(c, "Berlin and Rome", stream=True)
    repeat = ask(c, "I LIVE IN LYON")  # the same prompt, as citext compares: the same row
    for call_id in (plain, streamed, repeat):
        assert uuid.UUID(call_id).version == 7
    assert len({plain, streamed, repeat}) == 3
    lyon, rome = row_of(db_url, "I live in Lyon"), row_of(db_url, "Berlin and Rome")
    assert mapped(db_url, plain) == mapped(db_url, repeat) == lyon["id"]
    assert mapped(db_url, streamed) == rome["id"] and rome["streamed"]
    # nothing recorded, no id: an opted-out call, an upstream error, another endpoint
    off = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"X-Curation-Log": "off"},
    )
    assert "X-Curation-Id" not in off.headers
    failed = httpx.post(
        f"{proxy.url}/ns/locations/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y"}]},
        headers={"Authorization": f"Bearer {KEY}", "X-Fake-Status": "429"},
    )
    assert failed.status_code == 429 and "X-Curation-Id" not in failed.headers
    models = c.models.with_raw_response.list()
    assert "X-Curation-Id" not in models.headers


def test_responses_api_answers_carry_their_id_too(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    plain = c.responses.with_raw_response.create(model="gpt-4o-mini", input="Where is Oslo?")
    streamed = c.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Where is Bergen?", stream=True
    )
    list(streamed.parse())
    for raw, prompt in ((plain, "Where is Oslo?"), (streamed, "Where is Bergen?")):
        call_id = raw.headers.get("X-Curation-Id")
        assert call_id is not None and uuid.UUID(call_id).version == 7
        assert mapped(db_url, call_id) == row_of(db_url, prompt)["id"]
        assert post(proxy, {"id": call_id, "score": -1}).json()["attached"] is True


def test_call_ids_are_time_ordered_and_unguessable() -> None:
    ids = [feedback.new_call_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)  # milliseconds first: the key index grows at its end
    assert len({u.int & ((1 << 62) - 1) for u in parsed}) == len(ids)


# -- feedback before and after the row ----------------------------------


def test_feedback_before_and_after_the_row_is_written(start_proxy: Start, db_url: str) -> None:
    """The writer is held on a table lock (deterministically: the row cannot be written
    until the test lets go); feedback posted meanwhile is kept and attached afterwards."""
    proxy = start_proxy()
    query(db_url, "SELECT curation_create_namespace('locations')")
    with psycopg.connect(db_url) as holder:
        holder.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")  # writes wait, reads go on
        call_id = ask(client(proxy), "Flights from Pariss to Rome?")
        early = post(
            proxy,
            {
                "id": call_id,
                "score": -1,
                "label": "wrong_city",
                "comment": "it missed Paris",
                "correction": {"content": '["Paris", "Rome"]'},
            },
        )
        assert early.status_code == 200, early.text
        assert early.json()["attached"] is False and early.json()["proposed"] is False
        kept = query(db_url, "SELECT * FROM feedback WHERE call_id = %s", [call_id])
        assert len(kept) == 1 and kept[0]["row_id"] is None
        assert query(db_url, f"SELECT count(*) AS n FROM {TABLE}") == [{"n": 0}]
    row = row_of(db_url, "Flights from Pariss to Rome?")  # the lock is gone: written now
    attached = wait_for(
        lambda: query(db_url, "SELECT * FROM feedback WHERE row_id IS NOT NULL"), timeout=15
    )
    assert [(f["namespace"], f["row_id"], f["score"]) for f in attached] == [
        ("locations", row["id"], -1.0)
    ]
    assert row["proposed_response"] == {"role": "assistant", "content": '["Paris", "Rome"]'}
    assert row["proposed_by"] == f"feedback #{attached[0]['id']}"
    assert row["response"]["choices"][0]["message"]["content"].startswith("Answer to:")
    # after the row: attached at once; many events per row, from repeats too
    second = ask(client(proxy), "flights from pariss to rome?")
    assert mapped(db_url, second) == row["id"]
    for body in (
        {"id": call_id, "score": 1},
        {"id": second, "score": -0.5, "label": "still_wrong"},
        {"id": second, "comment": "no score, just a note"},
    ):
        late = post(proxy, body)
        assert late.status_code == 200 and late.json()["attached"] is True, late.text
    counts = query(
        db_url,
        "SELECT events, positive, negative, labels FROM feedback_by_row WHERE row_id = %s",
        [row["id"]],
    )
    assert counts == [
        {"events": 4, "positive": 1, "negative": 2, "labels": ["still_wrong", "wrong_city"]}
    ]
    after = row_of(db_url, "Flights from Pariss to Rome?")
    assert after["response"] == row["response"] and after["times_seen"] == 2


def test_the_sdk_posts_feedback(start_proxy: Start, db_url: str) -> None:
    """An application can post with its own openai client (base_url of the feedback path)."""
    proxy = start_proxy()
    call_id = ask(client(proxy), "Where is Lyon?")
    fb = OpenAI(base_url=f"{proxy.url}/curation/v1", api_key=KEY, max_retries=0)
    answer = fb.post("/feedback", body={"id": call_id, "score": -1}, cast_to=httpx.Response).json()
    assert answer["object"] == "curation.feedback" and answer["call_id"] == call_id
    row = row_of(db_url, "Where is Lyon?")
    wait_for(lambda: query(db_url, "SELECT 1 FROM feedback WHERE row_id = %s", [row["id"]]))


# -- proposals, list, show ----------------------------------------------


def test_corrections_are_proposals_the_curator_decides(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    ids = {p: ask(c, p) for p in ("Lyon to Berlin", "Rome", "Madrid", "Oslo")}
    rows = {p: row_of(db_url, p)["id"] for p in ids}
    for p in ids:
        mapped(db_url, ids[p])
    # a teacher's proposal waiting is never replaced by feedback
    query(
        db_url,
        f'UPDATE {TABLE} SET proposed_response = \'{{"role": "assistant", "content": "t"}}\','
        " proposed_by = 'gpt-4.1' WHERE id = %s",
        [rows["Oslo"]],
    )
    answers = {
        "Lyon to Berlin": post(
            proxy, {"id": ids["Lyon to Berlin"], "score": -1, "correction": '["Lyon", "Berlin"]'}
        ),
        "Rome": post(proxy, {"id": ids["Rome"], "score": -1, "correction": {"content": "[]"}}),
        "Madrid": post(proxy, {"id": ids["Madrid"], "score": 1, "label": "good"}),
        "Oslo": post(proxy, {"id": ids["Oslo"], "score": -1, "correction": '["Oslo"]'}),
    }
    assert {p: a.json()["proposed"] for p, a in answers.items()} == {
        "Lyon to Berlin": True,
        "Rome": True,
        "Madrid": False,
        "Oslo": False,
    }
    assert row_of(db_url, "Oslo")["proposed_by"] == "gpt-4.1"
    # the existing proposal commands decide them
    accept = run(db_url, "accept", "locations", str(rows["Lyon to Berlin"]), "--curator", "ana")
    reject = run(db_url, "reject", "locations", str(rows["Rome"]), "--curator", "ana")
    assert accept.exit_code == 0 and reject.exit_code == 0, accept.output + reject.output
    lyon, rome = row_of(db_url, "Lyon to Berlin"), row_of(db_url, "Rome")
    assert lyon["corrected_response"] == {"role": "assistant", "content": '["Lyon", "Berlin"]'}
    assert lyon["included"] is not None
    assert rome["proposed_response"] is None and rome["corrected_response"] is None
    history = run_json(db_url, "history", "locations", str(rows["Rome"]))
    assert [(h["column_name"], h["changed_by"]) for h in history] == [
        ("proposed_response", "feedback"),
        ("proposed_response", "ana"),
    ]

    # curators find them
    def listed(*flags: str) -> list[int]:
        return [r["id"] for r in run_json(db_url, "list", "locations", *flags)]

    negative = listed("--feedback", "negative")
    assert sorted(negative) == sorted([rows["Lyon to Berlin"], rows["Rome"], rows["Oslo"]])
    assert listed("--feedback", "positive") == [rows["Madrid"]]
    assert sorted(listed("--feedback", "any")) == sorted(rows.values())
    assert listed("--feedback", "negative", "--included") == [rows["Lyon to Berlin"]]
    assert listed("--feedback", "negative", "--search", "rom") == [rows["Rome"]]
    table = run(db_url, "list", "locations", "--feedback", "negative")
    assert table.exit_code == 0 and "+0 / -1" in table.output
    shown = run_json(db_url, "show", "locations", str(rows["Madrid"]))
    assert shown["feedback"]["positive"] == 1 and shown["feedback"]["negative"] == 0
    assert shown["feedback"]["events"][0]["label"] == "good"
    text = run(db_url, "show", "locations", str(rows["Lyon to Berlin"])).output
    assert "feedback: +0 / -1 (1 event, 1 with a correction)" in text, text
    assert "correction:" in text and "feedback #" in text and "-1 (with a correction)" in text


def test_a_deleted_row_takes_its_feedback_along(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    call_id = ask(client(proxy), "Vienna")
    row_id = mapped(db_url, call_id)
    assert post(proxy, {"id": call_id, "score": -1}).status_code == 200
    query(db_url, f"DELETE FROM {TABLE} WHERE id = %s", [row_id])
    assert query(db_url, "SELECT count(*) AS n FROM recorded_call") == [{"n": 0}]
    assert query(db_url, "SELECT count(*) AS n FROM feedback") == [{"n": 0}]


# -- refusals -------------------------------------------------------------


def test_bad_feedback_gets_openai_errors(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    good = str(uuid.uuid4())
    cases: list[tuple[Any, int, str, str | None]] = [
        (b"{not json", 400, "invalid_json", None),
        ([1, 2], 400, "invalid_json", None),
        ({"score": -1}, 400, "missing_id", "id"),
        ({"id": "row-12"}, 400, "invalid_id", "id"),
        ({"id": 12}, 400, "invalid_id", "id"),
        ({"id": good, "score": 2}, 400, "invalid_score", "score"),
        ({"id": good, "score": "-1"}, 400, "invalid_score", "score"),
        ({"id": good, "score": True}, 400, "invalid_score", "score"),
        ({"id": good, "label": "x" * 257}, 400, "invalid_label", "label"),
        ({"id": good, "comment": {"a": 1}}, 400, "invalid_comment", "comment"),
        (
            {"id": good, "correction": {"role": "user", "content": "x"}},
            400,
            "invalid_correction",
            "correction",
        ),
        ({"id": good, "correction": {"content": None}}, 400, "invalid_correction", "correction"),
        ({"id": good, "scroe": 1}, 400, "unknown_parameter", "scroe"),
        ({"id": good, "comment": "x" * (2 << 20)}, 413, "request_too_large", None),
    ]
    for body, status, code, param in cases:
        is_error(post(proxy, body), status, code, param)
    is_error(httpx.get(f"{proxy.url}{feedback.PATH}", timeout=10), 405, "method_not_allowed", None)
    assert query(db_url, "SELECT count(*) AS n FROM feedback") == [{"n": 0}]
    # a NUL in text is stored as U+FFFD (PostgreSQL text cannot hold it), not refused
    stored = post(proxy, {"id": good, "comment": "a\u0000b", "correction": "c\u0000"})
    assert stored.status_code == 200, stored.text
    [kept] = query(db_url, "SELECT comment, correction::text AS c FROM feedback")
    assert kept["comment"] == "a\ufffdb" and json.loads(kept["c"])["content"] == "c\ufffd"


def test_proxy_keys_guard_feedback(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_PROXY_KEYS="pk-one,pk-two", OPENAI_API_KEY="sk-upstream")
    body = {"id": str(uuid.uuid4()), "score": 1}
    is_error(post(proxy, body, key=None), 401, "missing_api_key", None)
    is_error(post(proxy, body, key="pk-wrong"), 401, "invalid_api_key", None)
    assert query(db_url, "SELECT count(*) AS n FROM feedback") == [{"n": 0}]
    assert post(proxy, body, key="pk-two").status_code == 200


def test_postgres_down_is_a_503_not_a_silent_loss(start_proxy: Start, db_url: str) -> None:
    relay = Relay(db_url)
    relay.up()
    proxy = start_proxy(db=relay.url)
    body = {"id": str(uuid.uuid4()), "score": -1}
    assert post(proxy, body).status_code == 200
    relay.down()
    is_error(post(proxy, body), 503, "database_unavailable", None)
    relay.up()
    assert wait_for(lambda: post(proxy, body).status_code == 200, timeout=15)
    assert query(db_url, "SELECT count(*) AS n FROM feedback") == [{"n": 2}]
    relay.down()


def test_review_shows_the_counts_and_takes_the_proposal(db_url: str, conn: Any) -> None:
    """review renders a row's feedback (+/-) and a correction from feedback as its proposal."""
    row = add_row(conn, "locations", "Pariss and Rome", '["Rome"]', included=False)
    calls = [str(uuid.uuid4()) for _ in range(3)]
    for call_id in calls:
        conn.execute(
            "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'locations', %s)",
            [call_id, row],
        )
    answer = json.dumps({"role": "assistant", "content": '["Paris", "Rome"]'})
    for call_id, score, correction in zip(calls, (-1, -0.5, 1), (answer, None, None), strict=True):
        conn.execute(
            "INSERT INTO feedback (call_id, namespace, row_id, score, correction)"
            " VALUES (%s, 'locations', %s, %s, %s)",
            [call_id, row, score, correction],
        )
    conn.execute(
        f"UPDATE {TABLE} SET proposed_response = %s, proposed_by = 'feedback #1' WHERE id = %s",
        [answer, row],
    )
    child = spawn(db_url, "review", "locations", "--curator", "rev", timeout=30)
    child.expect("Pariss and Rome")
    child.expect(re.escape("proposed by feedback #1 (a accept / r reject)"))
    child.expect(re.escape("feedback: +1 / -2 (3 events, 1 with a correction)"))
    child.expect(r"\[q\]uit\? ")
    child.send("a")
    child.expect("proposal accepted")
    child.expect("nothing left to review")
    child.expect(pexpect.EOF)
    [done] = query(db_url, f"SELECT corrected_response, included FROM {TABLE}")
    assert done["corrected_response"]["content"] == '["Paris", "Rome"]' and done["included"]


# -- psql --------------------------------------------------------------------

SNIPPETS = pg.ROOT / "sql" / "feedback.sql"


def test_psql_snippets_run_as_a_curator(conn: psycopg.Connection[Any], db_url: str) -> None:
    """Each snippet of sql/feedback.sql, through psql, as a curator login (reads only)."""
    bad = add_row(conn, "locations", "Flights from Pariss to Rome?", '["Rome"]', included=False)
    add_row(conn, "locations", "Lyon", '["Lyon"]', included=False)
    call, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    conn.execute(
        "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'locations', %s), (%s, NULL, NULL)",
        [call, bad, orphan],
    )
    conn.execute(
        "INSERT INTO feedback (call_id, namespace, row_id, score, label) VALUES"
        " (%s, 'locations', %s, -1, 'wrong_city'), (%s, NULL, NULL, 1, 'early')",
        [call, bad, orphan],
    )
    conn.execute(
        f"UPDATE {TABLE} SET proposed_response = %s, proposed_by = 'feedback #1' WHERE id = %s",
        [json.dumps({"role": "assistant", "content": '["Paris", "Rome"]'}), bad],
    )
    login = f"ana_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE curation_curator")
    try:
        parts = re.split(r"^-- name: (\w+)\s*$", SNIPPETS.read_text(), flags=re.MULTILINE)
        found = {
            name: psql(db_url, body, login, id=str(bad))
            for name, body in zip(parts[1::2], parts[2::2], strict=True)
        }
    finally:
        conn.execute(f"DROP ROLE {login}")
    assert set(found) == {"negative", "events", "proposals", "unattached"}
    assert "Pariss" in found["negative"] and "Lyon" not in found["negative"]
    assert "wrong_city" in found["events"] and "early" not in found["events"]
    assert "feedback #1" in found["proposals"]
    assert orphan in found["unattached"] and call not in found["unattached"]


def psql(db_url: str, sql: str, user: str, **variables: str) -> str:
    url = make_conninfo(**{**conninfo_to_dict(db_url), "user": user})  # type: ignore[arg-type]
    args = [pg.psql_binary(), url, "-X", "-v", "ON_ERROR_STOP=1", "-v", f"t={TABLE}"]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    done = subprocess.run(args, input=sql, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- the parser is total ---------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.uuids().map(str) | JSON,
        "score": st.floats(-1.5, 1.5) | JSON,
        "label": st.text(max_size=300) | JSON,
        "comment": JSON,
        "correction": JSON
        | st.fixed_dictionaries({"content": st.text() | st.none()}, optional={"tool_calls": JSON}),
    },
)


def dumps(value: Any) -> bytes:
    """JSON text of ``value``: integers of any size; NaN and Infinity as Python writes them."""
    return json.dumps(value).encode()


@settings(max_examples=300, deadline=None)
@given(st.one_of(BODIES.map(dumps), JSON.map(dumps), st.binary(max_size=64)))
def test_any_body_is_an_event_or_one_refusal(body: bytes) -> None:
    try:
        event = feedback.parse(body)
    except feedback.Invalid as invalid:
        assert invalid.code and str(invalid)
        return
    assert uuid.UUID(event.call_id)
    assert event.score is None or -1 <= event.score <= 1
    if event.correction is not None:
        message = json.loads(event.correction)
        assert message["role"] == "assistant" and "\\u0000" not in event.correction


@pytest.mark.parametrize("value", ["ok", {"content": "ok"}, {"role": "assistant", "content": "ok"}])
def test_a_correction_is_an_assistant_message(value: Any) -> None:
    event = feedback.parse(orjson.dumps({"id": str(uuid.uuid4()), "correction": value}))
    assert json.loads(event.correction or "") == {"role": "assistant", "content": "ok"}

"""Shadow and watch traffic (issue 14): the other model answers a live call in the
background, the answers are compared and stored, the client never notices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

from curation.db.shadow import Comparison, ShadowStore
from curation.evaluate import compare, live
from tests.background import BackgroundApp
from tests.factories import LONG_PROMPT
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import ProxyProcess, free_port, query, wait_for
from tests.test_proxy_faults import scripted

STUDENT = "locations-student"
BASE = "gpt-4o-2024-08-06"
SHORT = "List the cities, as JSON."
KEY = "sk-student-secret-1234"
Conn = psycopg.Connection[dict[str, object]]


@pytest.fixture
def student_api() -> Iterator[Running]:
    """A second fake standing in for the student's engine (its key only)."""
    with Running(FakeOpenAI(api_key_prefix=KEY)) as running:
        yield running


def serve(conn: Conn, endpoint: str | None, **columns: Any) -> None:
    """The namespace served by the student, its shares set as the rollout (or a person) sets them."""
    conn.execute("SELECT curation_create_namespace('locations')")
    settings = {
        "serve_model": STUDENT,
        "serve_percent": 0,
        "serve_shadow_percent": 100,
        "serve_endpoint": endpoint,
        "serve_endpoint_key_env": "STUDENT_KEY" if endpoint else None,
        "training_system_prompt": SHORT,
        **columns,
    }
    assignments = ", ".join(f"{name} = %({name})s" for name in settings)
    conn.execute(f"UPDATE namespace SET {assignments} WHERE name = 'locations'", settings)


def client(proxy: ProxyProcess) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/ns/locations/v1", api_key="sk-client-key", max_retries=0)


MESSAGES: Any = [{"role": "system", "content": LONG_PROMPT}]


def ask(proxy: ProxyProcess, text: str, stream: bool = False) -> tuple[str, str, str]:
    """(the call id the client got, the answer's model, its text)."""
    messages = [*MESSAGES, {"role": "user", "content": text}]
    api = client(proxy).chat.completions.with_raw_response
    if not stream:
        raw = api.create(model=BASE, messages=messages, max_tokens=8)
        reply = raw.parse()
        return raw.headers["X-Curation-Id"], reply.model, reply.choices[0].message.content or ""
    raw_stream = api.create(
        model=BASE,
        messages=messages,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw_stream.parse())
    out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw_stream.headers["X-Curation-Id"], chunks[0].model, out


def comparison(db_url: str, call_id: str, timeout: float = 15) -> dict[str, Any]:
    rows = wait_for(
        lambda: query(db_url, "SELECT * FROM shadow_comparison WHERE call_id = %s", [call_id]),
        timeout=timeout,
    )
    assert len(rows) == 1
    return dict(rows[0])


def metrics(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def warm_up(db_url: str, proxy: ProxyProcess) -> None:
    """Until the proxy has read the serving settings: calls until one is compared."""

    def compared() -> bool:
        ask(proxy, "warm up")
        time.sleep(0.2)
        return bool(query(db_url, "SELECT 1 FROM shadow_comparison LIMIT 1"))

    wait_for(compared, timeout=20, interval=0.5)


def tallies(db_url: str) -> dict[str, int]:
    rows = query(
        db_url,
        "SELECT sum(student_calls) AS student_calls, sum(student_failures) AS student_failures,"
        " sum(background_calls) AS background_calls,"
        " sum(background_dropped) AS background_dropped FROM serving_tally"
        " WHERE namespace = 'locations'",
    )
    return {k: int(v or 0) for k, v in rows[0].items()}


# -- through a running proxy -----------------------------------------------------


def test_shadow_compares_the_student_without_slowing_the_client(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY)
    warm_up(db_url, proxy)
    student_api.fake.delay = 2.0

    started = time.monotonic()
    call_id, model, text = ask(proxy, "I live in Lyon")
    assert time.monotonic() - started < 1.5  # the student's 2 s are not the client's
    assert (model, text) == (BASE, "Answer to: I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["kind"] == "shadow" and row["agreed"] is True and row["error"] is None
    assert row["student_ms"] >= 2000 and row["teacher_ms"] < 1000
    assert row["student_model"] == STUDENT and row["teacher_model"] == BASE
    assert row["teacher_answer"]["content"] == row["student_answer"]["content"]
    assert row["teacher_prompt_tokens"] > row["student_prompt_tokens"] > 0  # the short prompt
    sent = [json.loads(s.body) for s in student_api.fake.seen]
    lyon = next(b for b in sent if b["messages"][-1]["content"] == "I live in Lyon")
    assert lyon["model"] == STUDENT and lyon["stream"] is False
    assert lyon["messages"][0] == {"role": "system", "content": SHORT}

    student_api.fake.delay = 0.0
    student_api.fake.answers[STUDENT] = lambda request: "Somewhere else"
    call_id, _, _ = ask(proxy, "I live in Nice", stream=True)
    row = comparison(db_url, call_id)
    assert row["agreed"] is False
    assert row["teacher_answer"]["content"] == "Answer to: I live in Nice"  # reassembled
    assert row["student_answer"]["content"] == "Somewhere else"
    assert row["teacher_completion_tokens"] is not None  # the stream's usage chunk
    seen = metrics(proxy)
    assert (
        'curation_shadow_comparisons_total{kind="shadow",namespace="locations",result="disagree"} 1.0'
        in seen
    )
    assert 'curation_serve_shadow_percent{namespace="locations"} 100.0' in seen
    assert (
        'curation_comparison_latency_seconds_count{answered_by="student",namespace="locations"}'
        in seen
    )


def test_a_failing_student_is_an_error_in_the_comparison_and_nothing_to_the_client(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY, CURATION_BACKGROUND_TIMEOUT="1")
    warm_up(db_url, proxy)

    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("the student crashed")

    student_api.fake.answers[STUDENT] = broken
    call_id, model, text = ask(proxy, "I live in Lyon")
    assert (model, text) == (BASE, "Answer to: I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["agreed"] is None and row["error"] == "status 500"
    assert row["teacher_answer"]["content"] == text and row["student_answer"] is None

    student_api.fake.delay = 3.0
    call_id, _, _ = ask(proxy, "I live in Nice")
    assert comparison(db_url, call_id)["error"] == "timeout: no answer within 1s"

    conn.execute("UPDATE namespace SET serve_endpoint = %s", [f"http://127.0.0.1:{free_port()}/v1"])
    time.sleep(2.5)  # the proxy reads the new endpoint
    call_id, _, _ = ask(proxy, "I live in Paris")
    assert comparison(db_url, call_id)["error"].startswith("connect: ")
    assert 'result="error"} 3.0' in metrics(proxy)


def test_watch_asks_the_teacher_with_the_clients_own_call(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1", serve_percent=100, serve_watch_percent=100)
    proxy = start_proxy(STUDENT_KEY=KEY)
    wait_for(lambda: ask(proxy, "warm up")[1] == STUDENT, timeout=15, interval=0.3)
    fake_openai.answers[BASE] = lambda request: "The teacher says Lyon"

    call_id, model, text = ask(proxy, "I live in Lyon", stream=True)
    assert (model, text) == (STUDENT, "Answer to: I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["kind"] == "watch" and row["agreed"] is False
    assert row["teacher_answer"]["content"] == "The teacher says Lyon"
    assert row["student_answer"]["content"] == "Answer to: I live in Lyon"  # reassembled
    assert row["teacher_model"] == BASE and row["student_model"] == STUDENT
    to_teacher = [s for s in fake_openai.seen if b"I live in Lyon" in s.body]
    assert len(to_teacher) == 1
    body = json.loads(to_teacher[0].body)
    assert body["model"] == BASE and body["stream"] is False and "stream_options" not in body
    assert body["messages"][0]["content"] == LONG_PROMPT  # the client's own call
    assert to_teacher[0].headers["Authorization"] == "Bearer sk-client-key"
    assert "sk-client-key" not in proxy.log()
    assert tallies(db_url)["student_calls"] >= 2  # the warm-up and this one


def test_a_student_served_by_the_upstream_is_shadowed_there_with_the_clients_key(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI, start_proxy: Callable[..., ProxyProcess]
) -> None:
    serve(conn, None)
    proxy = start_proxy()
    warm_up(db_url, proxy)
    call_id, model, _ = ask(proxy, "I live in Lyon")
    assert model == BASE
    row = comparison(db_url, call_id)
    assert row["agreed"] is True and row["student_model"] == STUDENT
    shadowed = [
        s
        for s in fake_openai.seen
        if b"I live in Lyon" in s.body and json.loads(s.body)["model"] == STUDENT
    ]
    assert len(shadowed) == 1
    assert shadowed[0].headers["Authorization"] == "Bearer sk-client-key"


def test_over_the_budget_background_calls_are_dropped_and_counted(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1", shadow_per_minute=1)
    if time.time() % 60 > 45:  # the budget is per minute: keep the calls inside one
        time.sleep(61 - time.time() % 60)
    proxy = start_proxy(STUDENT_KEY=KEY)
    warm_up(db_url, proxy)  # the minute's one shadow call (or more, across a minute's turn)
    before = query(db_url, "SELECT count(*) AS n FROM shadow_comparison")[0]["n"]
    ids = [ask(proxy, f"I live in town {i}")[0] for i in range(4)]
    line = 'curation_background_dropped_total{namespace="locations",reason="budget"}'
    dropped = wait_for(lambda: [x for x in metrics(proxy).splitlines() if x.startswith(line)])
    assert float(dropped[0].split()[-1]) >= 3
    counts = wait_for(lambda: (t := tallies(db_url))["background_dropped"] >= 3 and t, timeout=10)
    assert counts["background_calls"] >= 1
    time.sleep(0.5)
    after = query(db_url, "SELECT count(*) AS n FROM shadow_comparison")[0]["n"]
    assert after - before <= 1 and len(set(ids)) == 4


def test_over_the_concurrency_limit_background_calls_are_dropped(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY, CURATION_BACKGROUND_CONCURRENCY="1")
    warm_up(db_url, proxy)
    student_api.fake.delay = 3.0
    for i in range(3):
        ask(proxy, f"I live in town {i}")  # the first holds the one slot for 3 s
    line = 'curation_background_dropped_total{namespace="locations",reason="concurrency"} 2.0'
    assert line in metrics(proxy)


def test_tallies_count_the_students_calls_and_fallbacks(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1", serve_percent=100, serve_shadow_percent=0)
    proxy = start_proxy(STUDENT_KEY=KEY)
    wait_for(lambda: ask(proxy, "warm up")[1] == STUDENT, timeout=15, interval=0.3)

    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("the student crashed")

    student_api.fake.answers[STUDENT] = broken
    for i in range(3):
        assert ask(proxy, f"I live in town {i}")[1] == BASE  # the teacher answers
    counts = wait_for(lambda: (t := tallies(db_url))["student_failures"] == 3 and t, timeout=10)
    assert counts["student_calls"] >= 4  # the warm-up calls that went to the student too
    assert counts["background_calls"] == 0  # no shadow share: no background calls
    assert proxy.proc is not None
    proxies = query(db_url, "SELECT DISTINCT proxy FROM serving_tally")
    assert [r["proxy"] for r in proxies] == [f"{socket.gethostname()}:{proxy.proc.pid}"]


def test_comparisons_postgresql_cannot_take_break_no_call(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1", compare="no-such-comparator-xyz")
    proxy = start_proxy(STUDENT_KEY=KEY)
    warm_up(db_url, proxy)
    call_id, _, _ = ask(proxy, "I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["agreed"] is None and row["error"].startswith("comparator: ")
    assert row["student_answer"] is not None  # both answers kept, for a person to compare
    ask(proxy, "I live in Nice")
    assert proxy.log().count("the comparator cannot compare live answers") == 1  # logged once

    conn.execute("ALTER TABLE shadow_comparison RENAME TO shadow_comparison_away")
    for i in range(3):
        assert ask(proxy, f"I live in town {i}")[2] == f"Answer to: I live in town {i}"
    line = 'curation_background_dropped_total{namespace="locations",reason="database"}'
    wait_for(lambda: line in metrics(proxy), timeout=10)
    assert "shadow comparisons are dropped while PostgreSQL cannot take them" in proxy.log()


def test_shutdown_does_not_wait_for_background_calls(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY)
    warm_up(db_url, proxy)
    student_api.fake.delay = 6.0  # longer than the stop below may take
    ask(proxy, "I live in Lyon")
    time.sleep(0.3)  # the shadow call is in flight
    started = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - started < 4


def respond(proxy: ProxyProcess, text: str, stream: bool = False) -> tuple[str, str, str]:
    """A Responses API call: (the call id the client got, the answer's model, its text)."""
    api = client(proxy).responses.with_raw_response
    raw = api.create(model=BASE, instructions=LONG_PROMPT, input=text, stream=stream)
    if not stream:
        reply = raw.parse()
        return raw.headers["X-Curation-Id"], reply.model, reply.output_text
    events = list(raw.parse())
    done = next(e.response for e in events if e.type == "response.completed")
    return raw.headers["X-Curation-Id"], done.model, done.output_text


def test_responses_calls_are_shadowed_and_watched(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    serve(conn, f"{student_api.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY)
    warm_up(db_url, proxy)

    call_id, model, text = respond(proxy, "I live in Lyon")
    assert (model, text) == (BASE, "Answer to: I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["kind"] == "shadow" and row["agreed"] is True and row["error"] is None
    assert row["student_answer"] == {"role": "assistant", "content": text}
    assert row["teacher_prompt_tokens"] > 0 and row["student_completion_tokens"] > 0  # usage
    asked = [s for s in student_api.fake.seen if b"I live in Lyon" in s.body]
    assert [s.path for s in asked] == ["/v1/responses"]
    body = json.loads(asked[0].body)
    assert body["model"] == STUDENT and body["instructions"] == SHORT
    assert body["stream"] is False and body["store"] is False

    student_api.fake.answers[STUDENT] = lambda request: "Somewhere else"
    call_id, _, _ = respond(proxy, "I live in Nice", stream=True)
    row = comparison(db_url, call_id)
    assert row["agreed"] is False and row["error"] is None
    assert row["teacher_answer"]["content"] == "Answer to: I live in Nice"  # reassembled
    assert row["student_answer"]["content"] == "Somewhere else"

    conn.execute(
        "UPDATE namespace SET serve_percent = 100, serve_watch_percent = 100,"
        " serve_shadow_percent = 0 WHERE name = 'locations'"
    )
    wait_for(lambda: respond(proxy, "warm up")[1] == STUDENT, timeout=15, interval=0.3)
    call_id, model, text = respond(proxy, "I live in Paris", stream=True)
    assert (model, text) == (STUDENT, "Somewhere else")
    row = comparison(db_url, call_id)
    assert row["kind"] == "watch" and row["agreed"] is False
    assert row["teacher_answer"]["content"] == "Answer to: I live in Paris"
    to_teacher = [s for s in fake_openai.seen if b"I live in Paris" in s.body]
    assert [s.path for s in to_teacher] == ["/v1/responses"]
    assert json.loads(to_teacher[0].body)["instructions"] == LONG_PROMPT  # the client's call
    assert to_teacher[0].headers["Authorization"] == "Bearer sk-client-key"


def test_shutdown_kills_a_slow_command_comparator(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    marker = "sleep 30.4321"  # a comparator that never answers in time
    serve(conn, f"{student_api.url}/v1", compare=marker)
    proxy = start_proxy(STUDENT_KEY=KEY)

    def comparing() -> bool:
        ask(proxy, "I live in Lyon")
        time.sleep(0.3)
        return marker in running_commands()

    wait_for(comparing, timeout=20, interval=0.2)
    started = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - started < 5
    assert marker not in running_commands()  # its process group was killed, not orphaned


def running_commands() -> str:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return out.stdout


def test_a_plain_answer_the_upstream_served_student_never_finishes_is_a_student_failure(
    db_url: str, conn: Conn, start_proxy: Callable[..., ProxyProcess]
) -> None:
    app = BackgroundApp(faults_upstream)
    upstream = app.start()
    try:
        serve(conn, None, serve_percent=100, serve_shadow_percent=0)
        proxy = start_proxy(upstream=upstream, CURATION_UPSTREAM_READ_TIMEOUT="0.5")
        wait_for(
            lambda: post(proxy, "warm up").status_code == 200 and tallies(db_url)["student_calls"]
        )
        before = tallies(db_url)
        assert post(proxy, "stalled", "stall").status_code == 504
        assert post(proxy, "cut short", "cut").status_code == 502
        counts = wait_for(
            lambda: (
                (t := tallies(db_url))["student_failures"] >= before["student_failures"] + 2 and t
            ),
            timeout=10,
        )
        assert counts["student_failures"] == before["student_failures"] + 2
    finally:
        app.stop()


def faults_upstream() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted)
    return app


def post(proxy: ProxyProcess, text: str, script: str = "") -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/ns/locations/v1/chat/completions",
        json={"model": BASE, "messages": [*MESSAGES, {"role": "user", "content": text}]},
        headers={"Authorization": "Bearer sk-client-key", "X-Script": script},
        timeout=20,
    )


# -- the parts alone -------------------------------------------------------------


def completion(message: dict[str, Any], usage: Any = None) -> bytes:
    return orjson.dumps({"model": BASE, "choices": [{"message": message}], "usage": usage})


def test_answers_compare_as_eval_compares_them() -> None:
    calls = [
        {
            "id": "a",
            "type": "function",
            "function": {"name": "find", "arguments": '{"q": 1, "r": 2}'},
        }
    ]
    spaced = [
        {"id": "b", "type": "function", "function": {"name": "find", "arguments": '{"r":2,"q":1}'}}
    ]
    teacher = live.answer_of(
        completion({"role": "assistant", "content": None, "tool_calls": calls})
    )
    student = live.answer_of(
        completion({"role": "assistant", "content": None, "tool_calls": spaced})
    )
    assert live.agree(compare.exact, teacher, student)
    other = live.answer_of(
        completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**spaced[0], "function": {"name": "lose", "arguments": "{}"}}],
            }
        )
    )
    assert not live.agree(compare.exact, teacher, other)
    usage = {"prompt_tokens": 12, "completion_tokens": True}
    assert live.answer_of(completion({"content": "x"}, usage)).prompt_tokens == 12
    assert live.answer_of(completion({"content": "x"}, usage)).completion_tokens is None
    sse = b'data: {"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    assert live.answer_of(sse, streamed=True).message["content"] == "Hi"


def test_a_background_call_is_one_json_answer() -> None:
    body = orjson.dumps(
        {
            "model": BASE,
            "messages": [{"role": "system", "content": "long"}, {"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
    )
    student = orjson.loads(live.background_body(body, STUDENT, SHORT) or b"")
    assert student == {
        "model": STUDENT,
        "messages": [{"role": "system", "content": SHORT}, {"role": "user", "content": "hi"}],
        "stream": False,
        "temperature": 0,
    }
    teacher = orjson.loads(live.background_body(body) or b"")
    assert (
        teacher["model"] == BASE and teacher["stream"] is False and "stream_options" not in teacher
    )
    assert live.background_body(b"[1]") is None and live.background_body(b"{", STUDENT) is None


def test_a_responses_answer_compares_by_its_output_text_and_function_calls() -> None:
    said = {
        "object": "response",
        "model": BASE,
        "status": "completed",
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Ly", "annotations": []},
                    {"type": "output_text", "text": "on", "annotations": []},
                ],
            },
        ],
        "usage": {"input_tokens": 30, "output_tokens": 2},
    }
    answer = live.answer_of(orjson.dumps(said), api="responses")
    assert answer.message == {"role": "assistant", "content": "Lyon"}
    assert (answer.model, answer.prompt_tokens, answer.completion_tokens) == (BASE, 30, 2)
    call = {"type": "function_call", "call_id": "c1", "name": "find", "arguments": '{"q":1}'}
    spaced = {**call, "call_id": "c2", "arguments": '{ "q": 1 }'}
    teacher = live.answer_of(orjson.dumps({**said, "output": [call]}), api="responses")
    student = live.answer_of(orjson.dumps({**said, "output": [spaced]}), api="responses")
    assert live.agree(compare.exact, teacher, student)
    with pytest.raises(live.NoAnswer):
        live.answer_of(orjson.dumps({**said, "status": "incomplete"}), api="responses")
    with pytest.raises(live.NoAnswer):  # a chat completion is no Response
        live.answer_of(completion({"content": "x"}), api="responses")

    body = orjson.dumps({"model": BASE, "instructions": "long", "input": "hi", "stream": True})
    sent = orjson.loads(live.background_body(body, STUDENT, SHORT, api="responses") or b"")
    assert sent == {
        "model": STUDENT,
        "instructions": SHORT,
        "input": "hi",
        "stream": False,
        "store": False,
    }
    assert live.background_body(b'{"model": "m"}', api="responses") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(JSON, st.booleans(), st.sampled_from(["chat.completions", "responses"]))
def test_reading_an_answer_is_total(value: Any, streamed: bool, api: str) -> None:
    body = (
        b"data: " + json.dumps(value).encode() + b"\n\ndata: [DONE]\n\n"
        if streamed
        else json.dumps(value).encode()
    )
    if api == "responses" and isinstance(value, dict):  # a Response as much as it can be
        value = {"output": value.get("output", [value]), **value}
        body = json.dumps(value).encode()
        if streamed:
            body = (
                b"data: " + json.dumps({"type": "response.completed", "response": value}).encode()
            )
    try:
        answer = live.answer_of(body, streamed, api=api)
    except live.NoAnswer:
        return
    with contextlib.suppress(live.NoAnswer):
        live.comparable(answer.message)


@given(
    st.dictionaries(
        st.sampled_from(["content", "tool_calls"]),
        JSON
        | st.lists(
            st.dictionaries(
                st.sampled_from(["function", "type"]),
                JSON | st.dictionaries(st.sampled_from(["name", "arguments"]), JSON),
            )
        ),
    )
)
def test_comparing_messages_is_total(message: dict[str, Any]) -> None:
    with contextlib.suppress(live.NoAnswer):
        live.comparable(message)


def test_the_store_drops_comparisons_postgresql_cannot_take_and_keeps_tallies() -> None:
    dropped: list[tuple[str, int]] = []
    store = ShadowStore(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        "host:1",
        on_drop=lambda ns, n: dropped.append((ns, n)),
        max_queue=2,
    )
    row = Comparison(
        call_id="00000000-0000-0000-0000-000000000001",
        namespace="locations",
        kind="shadow",
        teacher_model=BASE,
        student_model=STUDENT,
        teacher_answer={"content": "a"},
        student_answer={"content": "a"},
        agreed=True,
        error=None,
        teacher_ms=1.0,
        student_ms=2.0,
    )
    assert store.add(row) and store.add(row) and not store.add(row)  # bounded
    store.count("locations", "student_calls", time.time())

    async def flush() -> None:
        started = time.monotonic()
        await store.flush()
        assert time.monotonic() - started < 5

    asyncio.run(flush())
    assert dropped == [("locations", 2)] and not store.queue and not store.database_ok
    assert sum(c["student_calls"] for c in store.tallies.values()) == 1  # kept for the next flush

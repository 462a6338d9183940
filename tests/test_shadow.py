"""Shadow and watch traffic (issue 14): the other model answers a live call in the
background, the answers are compared and stored, the client never notices. Its limits and failures
are in test_shadow_limits, the parts alone in test_shadow_parts."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from openai import OpenAI

from tests.factories import LONG_PROMPT
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import ProxyProcess, free_port, query, wait_for

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


@pytest.fixture
def shadowed(
    db_url: str, conn: Conn, student_api: Running, start_proxy: Callable[..., ProxyProcess]
) -> Callable[..., ProxyProcess]:
    """Serve the namespace by the student at ``student_api`` (``serve``'s columns), start a
    proxy with the student's key (and ``env``) and, unless ``warm`` is off, wait until it
    has read the serving settings."""

    def start(env: dict[str, str] | None = None, warm: bool = True, **columns: Any) -> ProxyProcess:
        serve(conn, f"{student_api.url}/v1", **columns)
        proxy = start_proxy(STUDENT_KEY=KEY, **(env or {}))
        if warm:
            warm_up(db_url, proxy)
        return proxy

    return start


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
    student_api: Running,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed()
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
    student_api: Running,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed(env={"CURATION_BACKGROUND_TIMEOUT": "1"})

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
    fake_openai: FakeOpenAI,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed(warm=False, serve_percent=100, serve_watch_percent=100)
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


def test_a_student_answering_under_a_dated_name_is_stored_as_the_model_rolled_out(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """OpenAI answers gpt-4o-mini as gpt-4o-mini-2024-07-18: the decider and curation serve
    filter on the configured model, so that is the one stored."""
    serve(conn, None, serve_model="gpt-4o-mini")
    proxy = start_proxy()
    warm_up(db_url, proxy)
    call_id, _, _ = ask(proxy, "I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["agreed"] is True and row["student_model"] == "gpt-4o-mini"


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
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed()

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

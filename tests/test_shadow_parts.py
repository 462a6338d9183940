"""Shadow and watch traffic, the parts alone (issue 14): reading and comparing answers,
the background call's body, the comparison store's bounds. No proxy, no database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.config import Settings
from curation.db.shadow import Comparison, ShadowStore
from curation.evaluate import compare, live
from curation.proxy.metrics import Metrics
from curation.proxy.relay import Call, Relay
from curation.proxy.routing import Route
from curation.proxy.shadow import Background
from curation.proxy.spool import Spool
from tests.harness import free_port
from tests.test_shadow import BASE, SHORT, STUDENT


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


def test_a_student_failure_is_tallied_once_per_call(tmp_path: Path) -> None:
    """An upstream 5xx is a failure; its body then breaking off is the same failure."""
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", data_dir=tmp_path)
    metrics = Metrics()
    background = Background(settings, metrics, settings.database_url)
    relay = Relay(
        settings=settings,
        metrics=metrics,
        spool=Spool(tmp_path / "spool", max_bytes=1 << 20),
        background=background,
    )
    call = Call(
        route=Route("/v1/chat/completions", "locations", record=True),
        record=True,
        body=b"",
        tags=None,
        kind="chat",
        started=0.0,
        t0=0.0,
        rewritten=True,
    )
    relay.student_failed(call)  # the 5xx
    relay.student_failed(call)  # reading its body failed too
    assert [c["student_failures"] for c in background.store.tallies.values()] == [1]

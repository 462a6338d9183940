"""The Responses API without a network: reading requests, reassembling streams, building
rows, chat examples and serve rewrites (capture/responses.py, export/responses.py), and
the same totality as the chat capture path, driven by hypothesis."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.capture import prompt, responses, rewrite, row
from curation.curate import answers
from curation.export import examples, validate
from curation.export import responses as export_responses
from curation.proxy import routing
from tests import factories
from tests.fake_openai import FakeOpenAI
from tests.fake_openai.responses import _events
from tests.test_capture_property import JSON, PROPERTY, assert_postgres_takes, encoded, shaped

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
LONG = "You are a long production prompt about the weather."


def turns(*, ids: str = "1") -> list[dict[str, Any]]:
    """A tool round trip as an application resends it; ``ids`` varies the provider's ids."""
    return [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": f"rs_{ids}", "summary": [], "encrypted_content": ids * 9},
        {
            "type": "function_call",
            "id": f"fc_{ids}",
            "call_id": f"call_{ids}",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": f"call_{ids}", "output": "22C"},
    ]


def fake_response(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    fake = FakeOpenAI()
    final = fake._response(body, body["model"], fake.response_output(body["model"], body))
    return {**final, **changes}


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n".encode()
        for i, e in enumerate(events)
    )


def capture(request: dict[str, Any], response: bytes, streamed: bool = False) -> row.Capture:
    return factories.spooled(
        started_at=1.7e9,
        latency_ms=12.0,
        streamed=streamed,
        request_id="req_1",
        request=orjson.dumps(request),
        response=response,
        api=responses.API,
    )


# -- reading requests --------------------------------------------------------


def test_single_turn_is_the_user_input_and_instructions_the_system_prompt() -> None:
    for said in ("I live in Lyon", [{"role": "user", "content": "I live in Lyon"}]):
        asked = responses.extract({"instructions": LONG, "input": said})
        assert asked == prompt.Prompt("I live in Lyon", LONG)
    parts = [{"type": "input_text", "text": "I live in Lyon"}]
    asked = responses.extract({"input": [{"type": "message", "role": "user", "content": parts}]})
    assert asked == prompt.Prompt("I live in Lyon", None)


def test_system_and_developer_items_join_the_instructions() -> None:
    asked = responses.extract({"instructions": LONG, "input": turns()})
    assert asked.system_prompt == f"{LONG}\n\nAnswer in French."
    assert "French" not in asked.user_prompt


def test_multi_turn_rendering_has_no_provider_ids_and_matches_chat() -> None:
    asked = responses.extract({"input": turns(ids="abc123")})
    again = responses.extract({"input": turns(ids="zz9")})
    assert asked.user_prompt == again.user_prompt  # the same run twice: one key
    for made_up in ("abc123", "call_", "fc_", "rs_", "msg_"):
        assert made_up not in asked.user_prompt
    assert "get_weather" in asked.user_prompt and "22C" in asked.user_prompt
    chat = prompt.extract(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_Q",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_Q", "content": "22C"},
            ]
        }
    )
    assert asked.user_prompt == chat.user_prompt  # either API: one row per conversation


def test_earlier_turns_kept_by_openai_are_named() -> None:
    asked = responses.extract({"input": "And in Rome?", "previous_response_id": "resp_1"})
    other = responses.extract({"input": "And in Rome?", "previous_response_id": "resp_2"})
    assert asked.user_prompt.endswith("And in Rome?") and "resp_1" in asked.user_prompt
    assert asked.user_prompt != other.user_prompt  # two conversations never collide
    gaps = responses.conversation({"input": "x", "conversation": {"id": "conv_9"}}).gaps
    assert gaps and "conv_9" in gaps[0]


def test_a_request_without_input_is_unrecordable() -> None:
    for bad in ([], "x", {"model": "m"}):
        with pytest.raises(row.Unrecordable):
            responses.check_request(bad)


# -- responses and streams ---------------------------------------------------


def test_a_stream_reassembles_to_the_completed_response() -> None:
    body = {"model": "gpt-4o", "input": "Weather in Paris?", "tools": [TOOL]}
    for request in (body, {"model": "gpt-4o", "input": "Hello there"}):
        final = fake_response(request)
        assert responses.reassemble(sse(_events(final, fail=False))) == final


def test_a_bare_completed_event_gets_the_output_from_the_deltas() -> None:
    final = fake_response({"model": "gpt-4o", "input": "Hello there"})
    events = _events(final, fail=False)
    events[-1] = {"type": "response.completed", "response": {**final, "output": []}}
    out = responses.reassemble(sse(events))
    assert out is not None and responses.output_text(out) == "Answer to: Hello there"
    calls = _events(fake_response({"model": "m", "input": "Rome", "tools": [TOOL]}), fail=False)
    calls[-1] = {**calls[-1], "response": {**calls[-1]["response"], "output": []}}
    out = responses.reassemble(sse(calls))
    assert out is not None and out["output"][0]["arguments"] == '{"city": "Rome"}'


def test_a_stream_that_did_not_complete_is_none() -> None:
    final = fake_response({"model": "gpt-4o", "input": "Hello there"})
    events = _events(final, fail=False)
    assert responses.reassemble(sse(events[:-1])) is None  # cut before response.completed
    assert responses.reassemble(sse(_events(final, fail=True))) is None  # response.failed
    incomplete = {**final, "status": "incomplete"}
    assert responses.reassemble(sse(_events(incomplete, fail=False))) is None
    error = [*events[:3], {"type": "error", "code": "server_error", "message": "x"}, events[-1]]
    assert responses.reassemble(sse(error)) is None


def test_rows_are_built_from_plain_and_streamed_responses() -> None:
    request = {"model": "gpt-4o", "instructions": LONG, "input": "Weather in Paris?"}
    final = fake_response(request)
    for built in (
        row.build(capture(request, orjson.dumps(final))),
        row.build(capture(request, sse(_events(final, fail=False)), streamed=True)),
    ):
        assert (built.api, built.user_prompt, built.system_prompt) == (
            "responses",
            "Weather in Paris?",
            LONG,
        )
        assert json.loads(built.response) == final and built.response_id == final["id"]
        assert built.prompt_tokens == final["usage"]["input_tokens"]
        assert built.completion_tokens == final["usage"]["output_tokens"]
        assert_postgres_takes(built)
    followed = row.build(
        capture({**request, "previous_response_id": "resp_7"}, orjson.dumps(final))
    )
    assert followed.previous_response_id == "resp_7"


def test_a_response_that_did_not_complete_is_not_a_row() -> None:
    request = {"model": "gpt-4o", "input": "Weather in Paris?"}
    final = fake_response(request, status="incomplete")
    with pytest.raises(row.Unrecordable, match="did not complete"):
        row.build(capture(request, orjson.dumps(final)))
    with pytest.raises(row.Unrecordable, match="did not complete"):
        row.build(capture(request, sse(_events(final, fail=True)), streamed=True))


def test_spool_metadata_keeps_the_api() -> None:
    c = capture({"input": "x"}, b"{}")
    assert row.Capture.from_meta(c.meta(), c.request, c.response).api == "responses"
    assert row.Capture.from_meta({**c.meta(), "api": "zz"}, b"", b"").api == "chat.completions"


# -- export, corrections, serve ----------------------------------------------


def source(request: dict[str, Any], response: dict[str, Any], **kw: Any) -> examples.SourceRow:
    return examples.SourceRow(1, 1, "p", request, response, kw.get("corrected"))


def test_a_tool_round_trip_exports_as_a_valid_chat_example() -> None:
    request = {"model": "gpt-4o", "instructions": LONG, "input": turns(), "tools": [TOOL]}
    request["parallel_tool_calls"] = False
    response = fake_response(request)
    example = examples.chat_example(source(request, response), "Weather, briefly.")
    validate.check_chat(example)
    roles = [m["role"] for m in example["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert example["messages"][0]["content"] == "Weather, briefly."  # never the long one
    assert LONG not in json.dumps(example) and "French" not in json.dumps(example)
    call = example["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert example["messages"][3] == {"role": "tool", "tool_call_id": call["id"], "content": "22C"}
    assert example["messages"][4] == {"role": "assistant", "content": "The tool said: 22C"}
    assert example["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    ]
    assert example["parallel_tool_calls"] is False


def test_a_function_call_answer_and_a_correction() -> None:
    request = {"model": "gpt-4o", "input": "Weather in Rome?", "tools": [TOOL]}
    response = fake_response(request)
    example = examples.chat_example(source(request, response), None)
    validate.check_chat(example)
    [call] = example["messages"][-1]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    fixed = {"role": "assistant", "content": "Sunny."}
    corrected = examples.chat_example(source(request, response, corrected=fixed), None)
    assert corrected["messages"][-1] == fixed
    pair = examples.preference_pair(source(request, response, corrected=fixed), "short")
    validate.check_preference(pair)
    assert pair["non_preferred_output"][0]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"previous_response_id": "resp_9"}, "previous_response_id resp_9"),
        ({"conversation": "conv_1"}, "conv_1"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "earlier item"),
        ({"input": [{"type": "web_search_call", "id": "ws_1", "action": {}}]}, "web_search_call"),
    ],
)
def test_rows_with_turns_a_chat_example_cannot_hold_are_skipped(
    change: dict[str, Any], reason: str
) -> None:
    request = {"model": "gpt-4o", "input": "Weather in Rome?", **change}
    with pytest.raises(examples.Skip, match=reason):
        examples.chat_example(source(request, fake_response({"model": "m", "input": "x"})), None)


def test_a_refusal_is_skipped_like_a_chat_refusal() -> None:
    refused = {"type": "refusal", "refusal": "I can't help with that."}
    response = fake_response({"model": "m", "input": "x"})
    response["output"] = [{**response["output"][0], "content": [refused]}]
    with pytest.raises(examples.Skip, match="refusal"):
        examples.chat_example(source({"model": "m", "input": "x"}, response), None)


def test_curators_and_eval_read_the_output_text() -> None:
    response = fake_response({"model": "m", "input": "Hi"})
    assert answers.message({"response": response}) == {
        "role": "assistant",
        "content": "Answer to: Hi",
    }
    calls = fake_response({"model": "m", "input": "Rome", "tools": [TOOL]})
    assert (
        answers.message({"response": calls})["tool_calls"][0]["function"]["name"] == "get_weather"
    )
    chat_request = export_responses.chat_request(
        {
            "model": "m",
            "input": "Hi",
            "max_output_tokens": 30,
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}},
            "tool_choice": {"type": "function", "name": "get_weather"},
            "tools": [TOOL, {"type": "web_search"}],
        }
    )
    assert chat_request["max_completion_tokens"] == 30
    assert chat_request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {}},
    }
    assert chat_request["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert [t["function"]["name"] for t in chat_request["tools"]] == ["get_weather"]


def test_serve_rewrites_instructions_to_the_short_prompt() -> None:
    body = {"model": "gpt-4o", "instructions": LONG, "input": turns(), "stream": True}
    out = orjson.loads(
        rewrite.rewrite(orjson.dumps(body), "ft:small", "Short.", api="responses") or b""
    )
    assert out["model"] == "ft:small" and out["instructions"] == "Short." and out["stream"] is True
    assert [i.get("role") for i in out["input"]] == [i.get("role") for i in turns()[1:]]
    bare = orjson.loads(
        rewrite.rewrite(orjson.dumps(body), "ft:small", None, api="responses") or b""
    )
    assert "instructions" not in bare
    assert rewrite.rewrite(b"[1]", "ft:small", "Short.", api="responses") is None


def test_unrecorded_paths_are_counted_under_a_bounded_label() -> None:
    assert routing.family("/v1/embeddings") == "/v1/embeddings"
    assert routing.family("/v1/responses/resp_1/input_items") == "/v1/responses"
    assert routing.family("/v1/chat/completions/chatcmpl-1") == "/v1/chat"
    assert {routing.family(f"/v1/x{i}") for i in range(50)} == {"other"}
    recorded = routing.route("POST", "/v1/responses", None, "ns")
    assert (recorded.record, recorded.api) == (True, "responses")
    assert not routing.route("GET", "/v1/responses/resp_1", None, "ns").record


# -- any JSON at all ---------------------------------------------------------

CONTENT = st.text(max_size=8) | st.lists(
    shaped(
        {
            "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal"]),
            "text": JSON,
            "image_url": st.text(max_size=5),
            "refusal": JSON,
        }
    ),
    max_size=3,
)
ITEM = shaped(
    {
        "type": st.sampled_from(
            [
                "message",
                "function_call",
                "function_call_output",
                "reasoning",
                "item_reference",
                "web_search_call",
            ]
        ),
        "role": st.sampled_from(["user", "system", "developer", "assistant"]),
        "content": CONTENT,
        "call_id": st.text(max_size=4),
        "name": st.text(max_size=4),
        "arguments": st.text(max_size=6),
        "output": CONTENT,
    }
)
OPTIONAL_REQUEST = {
    "model": st.text(max_size=5),
    "instructions": st.text(max_size=8),
    "previous_response_id": st.text(max_size=5),
    "tools": st.lists(shaped({"type": st.just("function"), "name": JSON}) | JSON, max_size=2),
    "text": JSON,
    "tool_choice": JSON,
    "max_output_tokens": JSON,
    "metadata": st.dictionaries(st.text(max_size=4), JSON, max_size=2),
}
INPUT = st.text(max_size=8) | st.lists(ITEM | JSON, max_size=5)
GOOD_REQUEST = st.fixed_dictionaries(
    {"input": INPUT | JSON}, optional={k: v | JSON for k, v in OPTIONAL_REQUEST.items()}
)
REQUEST = JSON | GOOD_REQUEST
GOOD_RESPONSE = st.fixed_dictionaries(
    {
        "object": st.just("response"),
        "status": st.sampled_from(["completed", "completed", "incomplete"]),
        "output": st.lists(ITEM | JSON, max_size=3),
    },
    optional={
        "id": st.text(max_size=5) | JSON,
        "usage": shaped({"input_tokens": JSON, "output_tokens": JSON}),
        "model": st.text(max_size=4) | JSON,
    },
)
RESPONSE = JSON | GOOD_RESPONSE
EVENT = shaped(
    {
        "type": st.sampled_from(
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.refusal.delta",
                "response.function_call_arguments.delta",
                "response.output_item.done",
                "response.completed",
                "response.failed",
                "response.incomplete",
                "error",
            ]
        ),
        "response": RESPONSE,
        "item": ITEM,
        "part": JSON,
        "output_index": st.integers(-1, 3),
        "content_index": st.integers(-1, 3),
        "delta": st.text(max_size=4),
    }
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Mostly plausible event sequences (often ending in response.completed), some junk."""
    events = draw(st.lists(EVENT | JSON if draw(st.integers(0, 4)) == 3 else EVENT, max_size=8))
    if draw(st.booleans()):
        events.append({"type": "response.completed", "response": draw(GOOD_RESPONSE)})
    lines = [b"data: " + orjson.dumps(e) for e in events]
    if draw(st.integers(0, 7)) == 3:
        lines.insert(draw(st.integers(0, len(lines))), b"data: " + draw(st.binary(max_size=10)))
    return b"\n\n".join(lines) + b"\n\n"


@st.composite
def responses_captures(draw: st.DrawFn) -> row.Capture:
    streamed = draw(st.booleans())
    plain = RESPONSE if draw(st.integers(0, 4)) == 3 else GOOD_RESPONSE
    body = draw(streams()) if streamed else orjson.dumps(draw(plain))
    body, encoding = draw(encoded(body))
    request = draw(REQUEST if draw(st.integers(0, 9)) == 3 else GOOD_REQUEST)
    raw = draw(st.binary(max_size=20)) if draw(st.integers(0, 19)) == 3 else orjson.dumps(request)
    return factories.spooled(
        streamed=streamed,
        content_encoding=encoding,
        request=raw,
        response=body,
        api="responses",
    )


@PROPERTY
@given(responses_captures())
def test_build_returns_a_row_or_unrecordable(c: row.Capture) -> None:
    try:
        built = row.build(c)
    except row.Unrecordable:
        return
    assert_postgres_takes(built)
    assert built.api == "responses"


@PROPERTY
@given(streams())
def test_reassemble_returns_a_response_none_or_unrecordable(body: bytes) -> None:
    try:
        out = responses.reassemble(body)
    except row.Unrecordable:
        return
    assert out is None or isinstance(out, dict)


@PROPERTY
@given(REQUEST, RESPONSE, st.none() | st.text(max_size=5))
def test_any_request_reads_converts_and_rewrites(
    request: Any, response: Any, short: str | None
) -> None:
    request = request if isinstance(request, dict) else {"input": request}
    asked = responses.extract(request)
    assert isinstance(asked.user_prompt, str) and "\x00" not in asked.user_prompt
    assert isinstance(answers.recorded(response), dict)
    assert isinstance(responses.output_text(response), str)
    try:
        example = examples.chat_example(source(request, obj_response(response)), short)
    except examples.Skip:
        pass
    else:
        with contextlib.suppress(validate.Invalid):
            validate.check_chat(example)
    out = rewrite.rewrite(orjson.dumps(request), "ft:m", short, api="responses")
    assert out is not None and orjson.loads(out)["model"] == "ft:m"


def obj_response(response: Any) -> dict[str, Any]:
    """What export reads: a recorded Responses reply is an object with an output list."""
    out = response if isinstance(response, dict) else {}
    return {**out, "object": "response"}

"""Pure capture logic: prompts, stream reassembly, tags, rows."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from curation.capture import prompt, row, stream, tags
from tests import factories


def sse(*events: object) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def chunk(choices: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        **extra,
    }


def test_single_turn_prompt_and_system() -> None:
    p = prompt.extract(
        {
            "messages": [
                {"role": "system", "content": "Long prompt"},
                {"role": "developer", "content": [{"type": "text", "text": "More rules"}]},
                {"role": "user", "content": "Paris"},
            ]
        }
    )
    assert p.user_prompt == "Paris"
    assert p.system_prompt == "Long prompt\n\nMore rules"


def test_multi_turn_renders_whole_conversation() -> None:
    a = prompt.extract(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "Paris"},
            ]
        }
    )
    b = prompt.extract({"messages": [{"role": "user", "content": "Paris"}]})
    assert a.user_prompt == "user: hi\n\nassistant: hello\n\nuser: Paris"
    assert a.user_prompt != b.user_prompt
    assert a.system_prompt is None


def test_prompt_parts_and_nul() -> None:
    p = prompt.extract(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look\x00"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                    ],
                }
            ]
        }
    )
    assert p.user_prompt == "look\ufffd\n[image_url]"


def test_reassemble_content_usage_and_n() -> None:
    body = sse(
        chunk(
            [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
            ],
            usage=None,
        ),
        chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}], usage=None),
        chunk([{"index": 1, "delta": {"content": "Other"}, "finish_reason": None}], usage=None),
        chunk(
            [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
            usage=None,
            system_fingerprint="fp",
        ),
        chunk([{"index": 1, "delta": {}, "finish_reason": "length"}], usage=None),
        chunk([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
    )
    out = stream.reassemble(body)
    assert out is not None
    assert out["object"] == "chat.completion" and out["system_fingerprint"] == "fp"
    assert [c["message"]["content"] for c in out["choices"]] == ["Hello", "Other"]
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]
    assert out["usage"]["total_tokens"] == 5


def test_reassemble_tool_calls_by_index() -> None:
    body = sse(
        chunk(
            [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "geo", "arguments": ""},
                            },
                            {
                                "index": 1,
                                "id": "call_b",
                                "type": "function",
                                "function": {"name": "time", "arguments": ""},
                            },
                        ],
                    },
                }
            ]
        ),
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":'}}]},
                }
            ]
        ),
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": 1}'}}]},
                }
            ]
        ),
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '"UTC"}'}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        ),
    )
    out = stream.reassemble(body)
    assert out is not None
    calls = out["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_a", "geo", '{"q": 1}'),
        ("call_b", "time", '{"tz":"UTC"}'),
    ]
    assert out["choices"][0]["message"]["content"] is None


def test_refusal_deltas() -> None:
    out = stream.reassemble(
        sse(
            chunk([{"index": 0, "delta": {"refusal": "I can"}}]),
            chunk([{"index": 0, "delta": {"refusal": "not."}, "finish_reason": "stop"}]),
        )
    )
    assert out is not None and out["choices"][0]["message"]["refusal"] == "I cannot."


def test_cut_or_error_stream_is_not_a_completion() -> None:
    cut = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    assert stream.reassemble(cut) is None
    assert stream.reassemble(sse({"error": {"message": "boom"}})) is None


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("team=geo, env=prod", {"team": "geo", "env": "prod"}),
        ("flag,,=x, k=", {"flag": "true", "k": "true"}),
        (None, {}),
    ],
)
def test_tag_header(header: str | None, want: dict[str, str]) -> None:
    assert tags.parse_header(header) == want


def test_tags_merge_metadata_user_header() -> None:
    got = tags.from_request({"metadata": {"a": "1"}, "user": "u-7"}, "b=2,a=3")
    assert got == {"a": "3", "user": "u-7", "b": "2"}


def capture(
    request: object, response: bytes, streamed: bool = False, encoding: str | None = None
) -> row.Capture:
    return factories.spooled(
        started_at=1700000000.0,
        latency_ms=12.5,
        streamed=streamed,
        content_encoding=encoding,
        request_id="req_1",
        tags_header="k=v",
        request=orjson.dumps(request),
        response=response,
    )


def test_build_row_keeps_response_text_verbatim() -> None:
    body = b'{"id": "c",  "model": "gpt-4o", "choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
    r = row.build(
        capture(
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"m": "1"},
            },
            body,
        )
    )
    assert r.response == body.decode()
    assert (r.user_prompt, r.model, r.prompt_tokens, r.completion_tokens) == ("hi", "gpt-4o", 3, 1)
    assert json.loads(r.tags) == {"m": "1", "k": "v"}


def test_build_row_gzip_body() -> None:
    body = b'{"choices": [], "model": "m"}'
    r = row.build(capture({"messages": []}, gzip.compress(body), encoding="gzip"))
    assert r.response == body.decode()


@pytest.mark.parametrize(
    ("request_", "response", "reason"),
    [
        (b"not json", b"{}", "request is not JSON"),
        ({"model": "x"}, b"{}", "no messages"),
        ({"messages": []}, b"<html>", "response is not JSON"),
        ({"messages": []}, b'{"object": "list"}', "not a chat.completion"),
    ],
)
def test_unrecordable(request_: object, response: bytes, reason: str) -> None:
    c = capture({}, response)
    c = factories.spooled(
        **{
            **c.__dict__,
            "request": request_ if isinstance(request_, bytes) else orjson.dumps(request_),
        }
    )
    with pytest.raises(row.Unrecordable, match=reason):
        row.build(c)


def test_request_nul_escape_is_made_safe_for_jsonb() -> None:
    raw = b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}'
    c = factories.spooled(
        request=raw,
        response=b'{"choices": []}',
    )
    built = row.build(c)
    assert "\\u0000" not in built.request and "\\ufffd" in built.request
    assert built.user_prompt == "a\ufffdb"


def test_upstream_and_client_headers() -> None:
    from curation.proxy import routing

    sent = routing.upstream_headers(
        {
            "Authorization": "Bearer client",
            "Host": "proxy",
            "Connection": "keep-alive",
            "Content-Length": "3",
            "X-Curation-Tags": "a=b",
            "Accept-Encoding": "br, gzip;q=0.8, zstd",
            "OpenAI-Beta": "x",
        },
        None,
    )
    assert dict(sent) == {
        "Authorization": "Bearer client",
        "Accept-Encoding": "gzip;q=0.8",
        "OpenAI-Beta": "x",
    }
    held = routing.upstream_headers({"Authorization": "Bearer client-key"}, "sk-upstream")
    assert held["Authorization"] == "Bearer sk-upstream" and held["Accept-Encoding"] == "identity"
    back = routing.client_headers(
        {"x-request-id": "r", "Transfer-Encoding": "chunked", "retry-after": "1"}
    )
    assert dict(back) == {"x-request-id": "r", "retry-after": "1"}


OK_RESPONSE = b'{"id": "c", "model": "m", "choices": [{"index": 0, "message": {"content": "a"}}]}'


@pytest.mark.parametrize(
    "messages",
    [
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "tool_calls": "zz"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"function": "f"}]},
        ],
        [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [None]}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": 7}]}],
        [{"role": 5, "content": {"a": 1}}, {"role": ["x"], "content": 3.5}],
        [{"role": "user", "content": [None, 1, {"type": 3}, {"text": {"x": 1}}]}, "junk", 7],
        [{"role": "system", "content": ["a", {"text": None}]}, {"role": "user"}],
    ],
)
def test_odd_request_shapes_become_rows(messages: list[object]) -> None:
    built = row.build(capture({"model": "x", "messages": messages}, OK_RESPONSE))
    assert isinstance(built.user_prompt, str) and built.model == "m"


@pytest.mark.parametrize(
    "response",
    [
        {"model": "m", "choices": [], "usage": "lots"},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": "3", "completion_tokens": True}},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 2**40, "completion_tokens": -1.5}},
        {"model": {"x": 1}, "choices": [None, 3]},
        {"model": "a\x00b", "choices": []},
    ],
)
def test_odd_response_shapes_become_rows(response: dict[str, object]) -> None:
    built = row.build(capture({"model": "x", "messages": []}, orjson.dumps(response)))
    assert built.prompt_tokens is None or isinstance(built.prompt_tokens, int)
    assert built.model is None or (isinstance(built.model, str) and "\x00" not in built.model)
    assert built.prompt_tokens is None or -(2**31) <= built.prompt_tokens < 2**31


def raw_sse(*lines: bytes) -> bytes:
    return b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "body",
    [
        raw_sse(b"[1,2]"),
        raw_sse(b'{"choices": "x"}'),
        raw_sse(b'{"choices": [null, 1, "a"]}'),
        raw_sse(b'{"choices": [{"index": "zero", "delta": "x"}]}'),
        raw_sse(b'{"choices": [{"index": 100000000000, "delta": {}}]}'),
        raw_sse(b'{"choices": [{"index": -3, "delta": {"content": 5}}]}'),
        raw_sse(b'{"choices": [{"delta": {"tool_calls": "zz"}}]}'),
        raw_sse(
            b'{"choices": [{"delta": {"tool_calls": [null, {"index": "a", "function": "f"}]}}]}'
        ),
        raw_sse(b'{"choices": [{"delta": {"function_call": "f", "role": 3}}]}'),
        raw_sse(b'{"choices": [{"delta": {}, "logprobs": [1]}]}'),
        raw_sse(b'{"choices": [{"delta": {}}], "usage": "lots"}'),
        raw_sse(b"not json"),
        raw_sse(b'{"choices": [{"delta": {"content": "a"}}]}', b'"str"'),
        b"data: \xff\xfe\n\ndata: [DONE]\n\n",
    ],
)
def test_odd_streams_become_rows_or_unrecordable(body: bytes) -> None:
    c = capture({"model": "x", "messages": []}, body, streamed=True)
    try:
        built = row.build(c)
    except row.Unrecordable:
        return
    assert json.loads(built.response)["object"] == "chat.completion"


def test_gzip_bomb_is_unrecordable() -> None:
    bomb = gzip.compress(b" " * (row.MAX_DECODED + 1), compresslevel=1)
    with pytest.raises(row.Unrecordable, match="over"):
        row.build(capture({"messages": []}, bomb, encoding="gzip"))


def test_broken_gzip_is_unrecordable() -> None:
    with pytest.raises(row.Unrecordable):
        row.build(capture({"messages": []}, b"\x1f\x8bnot gzip", encoding="gzip"))


def test_stream_without_done_is_whole_only_when_every_choice_finished() -> None:
    """Some OpenAI-compatible engines (transformers serve) end a stream at EOF with no
    [DONE]; the proxy spools only a clean end, so finished choices make it whole."""
    finished = sse(
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ).removesuffix(b"data: [DONE]\n\n")
    whole = stream.reassemble(finished)
    assert whole is not None and whole["choices"][0]["message"]["content"] == "Hi"
    unfinished = sse(
        chunk([{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]),
        chunk([{"index": 1, "delta": {"content": "cut"}}]),
    ).removesuffix(b"data: [DONE]\n\n")
    assert stream.reassemble(unfinished) is None

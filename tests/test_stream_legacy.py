"""Capture parsing of what older or rarer upstream answers hold: the legacy
``function_call`` and ``logprobs`` in a stream, and deflate or unsupported
content encodings. Pure: the proxy's end of the same paths is in test_proxy_faults.py."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
import pytest

from curation.capture import row, stream
from tests import factories


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-legacy",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-3.5-turbo-0613",
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        ],
    }


def test_legacy_function_call_is_reassembled() -> None:
    body = sse(
        chunk(
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_", "arguments": ""},
            }
        ),
        chunk({"function_call": {"name": "weather"}}),
        chunk({"function_call": {"arguments": '{"city":'}}),
        chunk({"function_call": {"arguments": ' "Paris"}'}}),
        chunk({}, "function_call"),
    )
    whole = stream.reassemble(body)
    assert whole is not None
    assert whole["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                "content": None,
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "function_call",
        }
    ]
    assert "tool_calls" not in whole["choices"][0]["message"]


def test_a_function_call_that_is_not_an_object_is_unrecordable() -> None:
    body = sse(chunk({"function_call": ["get_weather"]}), chunk({}, "stop"))
    with pytest.raises(row.Unrecordable, match="function_call is not a JSON object"):
        stream.reassemble(body)


def token(text: str) -> dict[str, Any]:
    return {"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}


def test_logprobs_are_merged_per_choice_in_order() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}, logprobs=None),
        chunk({"content": "Pa"}, logprobs={"content": [token("Pa")]}),
        chunk({"content": "ris"}, logprobs={"content": [token("ris")]}, index=0),
        chunk({"content": "Ly"}, logprobs={"content": [token("Ly")]}, index=1),
        chunk({"content": "!"}, logprobs={"content": [token("!")]}),
        chunk({}, "stop"),
        chunk({}, "stop", index=1),
    )
    whole = stream.reassemble(body)
    assert whole is not None
    first, second = whole["choices"]
    assert first["message"]["content"] == "Paris!"
    assert [t["token"] for t in first["logprobs"]["content"]] == ["Pa", "ris", "!"]
    assert [t["token"] for t in second["logprobs"]["content"]] == ["Ly"]
    without = stream.reassemble(sse(chunk({"content": "x"}), chunk({}, "stop")))
    assert without is not None and without["choices"][0]["logprobs"] is None


COMPLETION = {
    "id": "chatcmpl-enc",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Lyon"}, "finish_reason": "stop"}
    ],
}


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def capture(response: bytes, encoding: str | None) -> row.Capture:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Lyon?"}]}
    return factories.spooled(
        namespace="enc",
        started_at=1700000000.0,
        latency_ms=5.0,
        content_encoding=encoding,
        request=json.dumps(request).encode(),
        response=response,
    )


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("deflate", zlib.compress), ("deflate", raw_deflate), (" Deflate ", zlib.compress)],
    ids=["zlib-wrapped", "raw", "spaced-and-capitalised"],
)
def test_deflate_responses_are_decoded_both_ways(encoding: str, compress: Any) -> None:
    """HTTP's deflate is zlib-wrapped by the RFC, raw by many servers: both decode."""
    plain = orjson.dumps(COMPLETION)
    built = row.build(capture(compress(plain), encoding))
    assert json.loads(built.response) == COMPLETION and built.user_prompt == "Lyon?"


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (orjson.dumps(COMPLETION), "br", "unsupported content-encoding 'br'"),
        (orjson.dumps(COMPLETION), "gzip, deflate", "unsupported content-encoding"),
        (orjson.dumps(COMPLETION), "x" * 100, "unsupported content-encoding 'xxxxx"),
        (b"not deflate at all", "deflate", "does not decompress"),
        (raw_deflate(orjson.dumps(COMPLETION))[:-6], "deflate", "truncated"),
    ],
    ids=["br", "stacked", "long-name", "not-deflate", "truncated"],
)
def test_unsupported_or_broken_encodings_are_unrecordable(
    body: bytes, encoding: str, reason: str
) -> None:
    with pytest.raises(row.Unrecordable, match=reason) as info:
        row.build(capture(body, encoding))
    assert len(str(info.value)) < 200  # a reason, never a body


@pytest.mark.parametrize("encoding", [None, "", "identity", "IDENTITY"])
def test_identity_needs_no_decoding(encoding: str | None) -> None:
    assert json.loads(row.build(capture(orjson.dumps(COMPLETION), encoding)).response) == COMPLETION

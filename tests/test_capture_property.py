"""Production traffic is untrusted data: whatever JSON a request, a response or
an SSE stream holds, the capture path returns a row PostgreSQL accepts or
raises ``Unrecordable``, nothing else."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.capture import prompt, rewrite, row, stream, tags
from tests import factories

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False)
SCALARS |= st.text(max_size=8) | st.sampled_from(["user", "system", "assistant", "tool", "\x00"])
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of the API's keys, each holding a plausible or an arbitrary value."""
    return st.fixed_dictionaries({}, optional={k: v | JSON for k, v in fields.items()})


FUNCTION = shaped({"name": st.text(max_size=5), "arguments": st.text(max_size=5)})
TOOL_CALL = shaped({"index": st.integers(-2, 3), "id": st.text(max_size=3), "function": FUNCTION})
MESSAGE = shaped(
    {
        "role": st.sampled_from(["user", "system", "developer", "assistant", "tool"]),
        "content": st.text(max_size=10)
        | st.lists(shaped({"type": st.sampled_from(["text", "image_url"]), "text": JSON})),
        "tool_calls": st.lists(TOOL_CALL | JSON, max_size=3),
        "tool_call_id": st.text(max_size=3),
    }
)
REQUEST = JSON | shaped(
    {
        "model": st.text(max_size=5),
        "messages": st.lists(MESSAGE | JSON, max_size=4),
        "metadata": st.dictionaries(st.text(max_size=4), JSON, max_size=3),
        "user": st.text(max_size=5),
    }
)
USAGE = shaped({"prompt_tokens": INT64, "completion_tokens": INT64})
DELTA = shaped(
    {
        "role": st.just("assistant"),
        "content": st.text(max_size=6),
        "refusal": st.text(max_size=6),
        "tool_calls": st.lists(TOOL_CALL | JSON, max_size=2),
        "function_call": FUNCTION,
    }
)
CHOICE = shaped(
    {
        "index": st.integers(-1, 3),
        "delta": DELTA,
        "message": MESSAGE,
        "finish_reason": st.sampled_from(["stop", "length"]),
        "logprobs": st.dictionaries(st.text(max_size=3), JSON, max_size=2),
    }
)
RESPONSE = JSON | shaped(
    {"model": st.text(max_size=5), "choices": st.lists(CHOICE | JSON, max_size=3), "usage": USAGE}
)
EVENT = JSON | shaped(
    {"id": st.text(max_size=3), "choices": st.lists(CHOICE | JSON, max_size=3), "usage": USAGE}
)


@st.composite
def sse_bodies(draw: st.DrawFn) -> bytes:
    lines = [b"data: " + orjson.dumps(e) for e in draw(st.lists(EVENT, max_size=5))]
    lines += draw(st.lists(st.binary(max_size=12).map(lambda b: b"data: " + b), max_size=2))
    lines = draw(st.permutations(lines))
    if draw(st.booleans()):
        lines.append(b"data: [DONE]")
    sep = draw(st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n"]))
    return sep.join(lines) + sep


@st.composite
def encoded(draw: st.DrawFn, body: bytes) -> tuple[bytes, str | None]:
    encoding = draw(st.sampled_from([None, "identity", "gzip", "deflate", "br", "GZIP "]))
    if encoding and encoding.strip().lower() == "gzip" and draw(st.booleans()):
        body = gzip.compress(body)
    elif encoding == "deflate" and draw(st.booleans()):
        body = zlib.compress(body)
    return body, encoding


@st.composite
def captures(draw: st.DrawFn) -> row.Capture:
    streamed = draw(st.booleans())
    body = draw(sse_bodies()) if streamed else orjson.dumps(draw(RESPONSE))
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=30))
    body, encoding = draw(encoded(body))
    request = (
        orjson.dumps(draw(REQUEST)) if draw(st.integers(0, 9)) else draw(st.binary(max_size=20))
    )
    meta = {"ns": "ns", "t": 1700000000.0, "lat": 1.0, "st": streamed, "enc": encoding}
    meta.update(
        draw(
            st.dictionaries(
                st.sampled_from(["ns", "t", "lat", "st", "rid", "tags", "rw"]), JSON, max_size=2
            )
        )
    )
    try:
        return row.Capture.from_meta(meta, request, body)
    except row.Unrecordable:
        return factories.spooled(
            streamed=streamed,
            content_encoding=encoding,
            request=request,
            response=body,
        )


def assert_postgres_takes(built: row.Row) -> None:
    """What the COPY into the namespace table relies on."""
    for value in (built.user_prompt, built.system_prompt, built.model):
        assert value is None or (isinstance(value, str) and "\x00" not in value)
    for tokens in (built.prompt_tokens, built.completion_tokens):
        assert tokens is None or (type(tokens) is int and -(2**31) <= tokens < 2**31)
    for text in (built.response, built.request, built.tags):
        json.loads(text)
        assert "\\u0000" not in text
    assert all(isinstance(v, str) for v in json.loads(built.tags).values())


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(captures())
def test_build_returns_a_row_or_unrecordable(capture: row.Capture) -> None:
    try:
        built = row.build(capture)
    except row.Unrecordable:
        return
    assert_postgres_takes(built)


@PROPERTY
@given(sse_bodies())
def test_reassemble_returns_a_completion_none_or_unrecordable(body: bytes) -> None:
    try:
        out = stream.reassemble(body)
    except row.Unrecordable:
        return
    assert out is None or (out["object"] == "chat.completion" and isinstance(out["choices"], list))


@PROPERTY
@given(REQUEST, st.none() | st.text(max_size=20))
def test_prompt_and_tags_read_any_request(request: Any, header: str | None) -> None:
    request = request if isinstance(request, dict) else {"messages": request}
    asked = prompt.extract(request)
    assert isinstance(asked.user_prompt, str) and "\x00" not in asked.user_prompt
    found = tags.from_request(request, header)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())


@PROPERTY
@given(REQUEST | st.binary(max_size=20), st.none() | st.text(max_size=10))
def test_rewrite_any_body(body: Any, short_prompt: str | None) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    out = rewrite.rewrite(raw, "ft:model", short_prompt)
    assert out is None or orjson.loads(out)["model"] == "ft:model"


@PROPERTY
@given(JSON, st.binary(max_size=10), st.binary(max_size=10))
def test_any_spool_metadata_is_a_capture_or_unrecordable(
    meta: Any, request: bytes, response: bytes
) -> None:
    try:
        capture = row.Capture.from_meta(meta, request, response)
    except row.Unrecordable:
        return
    assert isinstance(capture.namespace, str) and isinstance(capture.streamed, bool)

"""Where a streamed reply ends, found from the SSE framing (curation.proxy.sse). Pure."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from curation.proxy.sse import MAX_LINE, EndOfStream


def event(content: str) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


STREAM = event("Hello") + event(" world") + b"data: [DONE]\n\n"


def fed(*chunks: bytes) -> list[bool]:
    end = EndOfStream()
    return [end.feed(c) for c in chunks]


def test_openai_stream_ends_at_the_done_event() -> None:
    assert fed(STREAM) == [True]
    head, done = STREAM[: -len(b"data: [DONE]\n\n")], b"data: [DONE]\n\n"
    assert fed(head, done) == [False, True]


def test_done_inside_the_payload_is_not_the_end() -> None:
    """A delta whose text is the terminator is data, not framing (issue 10, section 4)."""
    tricky = event("data: [DONE]") + event("\n\ndata: [DONE]\n\n") + event("[DONE]")
    assert fed(tricky) == [False]
    assert fed(tricky, b"data: [DONE]\n\n") == [False, True]


def test_every_split_point_agrees() -> None:
    for cut in range(1, len(STREAM)):
        got = fed(STREAM[:cut], STREAM[cut:])
        assert got == [False, True], cut


def test_byte_by_byte_ends_on_the_blank_line() -> None:
    got = fed(*(STREAM[i : i + 1] for i in range(len(STREAM))))
    assert got.index(True) == len(STREAM) - 1


def test_crlf_and_cr_line_ends() -> None:
    assert fed(event("a").replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n") == [True]
    assert fed(b"data: {}\r\rdata: [DONE]\r\r") == [True]
    # \r\n split between two reads is one line end, not an empty line
    assert fed(b"data: [DONE]\r", b"\n", b"\r\n") == [False, False, True]


def test_the_end_event_alone_counts() -> None:
    # a data line before [DONE] in the same event makes its data "x\n[DONE]"
    assert fed(b"data: x\ndata: [DONE]\n\n") == [False]
    # comments and other fields do not
    assert fed(b": keep-alive\n\nevent: end\ndata:[DONE]\n\n") == [True]
    assert fed(b"data: [DONE]x\n\n", b"xdata: [DONE]\n\n") == [False, False]


def test_end_of_input_dispatches_a_last_event() -> None:
    for tail in (b"data: [DONE]\n", b"data: [DONE]", b"data: [DONE]\r\n"):
        end = EndOfStream()
        assert end.feed(event("a") + tail) is False
        assert end.finish() is True
    end = EndOfStream()
    end.feed(event("a") + b"data: [DO")
    assert end.finish() is False


def test_long_lines_keep_memory_bounded() -> None:
    end = EndOfStream()
    for _ in range(100):
        end.feed(b"data: " + b"x" * 100_000)
        assert len(end.line) <= MAX_LINE + 1
    assert end.feed(b"\n\ndata: [DONE]\n\n") is True


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_ends_once_at_the_same_byte(cuts: list[int]) -> None:
    points = sorted({0, *cuts, len(STREAM)})
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    got = fed(*chunks)
    assert got[-1] is True
    first = got.index(True)
    assert sum(len(c) for c in chunks[: first + 1]) == len(STREAM)


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_any_bytes_are_total_and_bounded(chunks: list[bytes]) -> None:
    end = EndOfStream()
    for chunk in chunks:
        end.feed(chunk)
        assert len(end.line) <= MAX_LINE + 1
    assert end.finish() in (True, False)


PIECES = [
    event("a"),
    event("data: [DONE]"),
    b"data: [DONE]\n\n",
    b"data: [DONE]\n",
    b"data: [DONE]",
    b"data: x\n",
    b": comment\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"data: [DO",
    b"NE]",
]


def end_offset(chunks: list[bytes]) -> int | None:
    """The byte count fed when ``feed`` first said done, or None."""
    end, fed_bytes = EndOfStream(), 0
    for chunk in chunks:
        fed_bytes += len(chunk)
        if end.feed(chunk):
            return fed_bytes
    return None


@given(
    st.lists(st.sampled_from(PIECES), max_size=15),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_chunking_never_changes_where_the_end_is(pieces: list[bytes], cuts: list[int]) -> None:
    body = b"".join(pieces)
    points = sorted({0, *(c for c in cuts if c < len(body)), len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    one_by_one = end_offset([body[i : i + 1] for i in range(len(body))])
    got = end_offset(chunks)
    if one_by_one is None:
        assert got is None
    else:  # done with the read that carries the byte where the end became known
        assert got is not None and got - len(chunks[points.index(got) - 1]) < one_by_one <= got

"""The proxy's fast lane (curation/proxy/fastlane.py) through a real proxy process:
which requests it takes, the hand-over to aiohttp on one connection, pipelined
requests, a slow body, and the proxy with the fast lane off. Every answer is
checked on the wire and every recorded call in PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from tests.harness import ProxyProcess, query, wait_for
from tests.test_durability import metrics

Start = Callable[..., ProxyProcess]
NS = "lane"


def request(text: str, *, stream: bool = False, extra: str = "") -> bytes:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": stream}
    )
    return (
        f"POST /ns/{NS}/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer sk-lane\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_answer(s: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer from ``s`` (Content-Length or chunked)."""
    while b"\r\n\r\n" not in buffered:
        buffered += s.recv(65536)
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    buffered[:] = rest
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buffered) < n:
            buffered += s.recv(65536)
        body = bytes(buffered[:n])
        del buffered[:n]
        return status, headers, body
    body = b""
    while True:  # chunked
        while b"\r\n" not in buffered:
            buffered += s.recv(65536)
        size_line, _, _ = bytes(buffered).partition(b"\r\n")
        size = int(size_line, 16)
        need = len(size_line) + 2 + size + 2
        while len(buffered) < need:
            buffered += s.recv(65536)
        body += bytes(buffered[len(size_line) + 2 : len(size_line) + 2 + size])
        del buffered[:need]
        if size == 0:
            return status, headers, body


class Lanes:
    """The proxy's lane counters, read from /metrics; ``handed`` leaves out the hand-overs
    of the health checks and of these /metrics requests themselves."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy, self.reads, self.base = proxy, 0, 0.0
        self.base = self._read()[1] - 1

    def _read(self) -> tuple[float, float]:
        self.reads += 1
        found = {}
        for line in metrics(self.proxy).splitlines():
            if line.startswith("curation_lane_total{"):
                found[line.split('"')[1]] = float(line.split()[-1])
        return found.get("fast", 0.0), found.get("aiohttp", 0.0)

    def __call__(self) -> tuple[float, float]:
        """(calls the fast lane took, connections handed to aiohttp) since the start."""
        fast, aiohttp = self._read()
        return fast, aiohttp - self.base - self.reads


def recorded(db_url: str) -> set[str]:
    try:
        rows = query(db_url, f"SELECT user_prompt FROM {NS}_openai_chat_completion")
    except Exception:
        return set()
    return {r["user_prompt"] for r in rows}


def test_one_connection_fast_then_handed_to_aiohttp(start_proxy: Start, db_url: str) -> None:
    """Recorded calls take the fast lane; the first request of another shape (a GET)
    hands the connection to aiohttp, which answers it and every later one on it."""
    proxy = start_proxy()
    lanes = Lanes(proxy)
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(request("fast one"))
        status, headers, body = read_answer(s, buffered)
        assert status == 200 and "x-curation-id" in headers
        assert json.loads(body)["choices"][0]["message"]["content"] == "Answer to: fast one"
        s.sendall(request("fast two", stream=True))
        status, headers, body = read_answer(s, buffered)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body.rstrip().endswith(b"data: [DONE]")
        assert lanes() == (2, 0)
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-lane\r\n\r\n")
        status, _, body = read_answer(s, buffered)
        assert status == 200 and json.loads(body)["object"] == "list"
        s.sendall(request("after the hand-over"))  # the same connection, now aiohttp's
        status, headers, _ = read_answer(s, buffered)
        assert status == 200 and "x-curation-id" in headers
    assert lanes() == (2, 1)
    wait_for(lambda: recorded(db_url) == {"fast one", "fast two", "after the hand-over"})


def test_pipelined_requests_are_answered_in_order(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    buffered = bytearray()
    texts = [f"pipelined {i}" for i in range(5)]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"".join(request(t, stream=i % 2 == 1) for i, t in enumerate(texts)))
        for i, text in enumerate(texts):
            status, _, body = read_answer(s, buffered)
            assert status == 200
            if i % 2:
                assert body.startswith(b"data: ") and body.rstrip().endswith(b"data: [DONE]")
            else:
                assert json.loads(body)["choices"][0]["message"]["content"] == f"Answer to: {text}"
    assert Lanes(proxy)()[0] == 5
    wait_for(lambda: recorded(db_url) == set(texts))


def test_a_body_slower_than_the_grace_is_read_by_aiohttp(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    lanes = Lanes(proxy)
    data = request("slow body")
    head_end = data.index(b"\r\n\r\n") + 4
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(data[: head_end + 5])
        time.sleep(1.0)  # over BODY_GRACE: the connection goes to aiohttp mid-body
        s.sendall(data[head_end + 5 :])
        status, headers, _ = read_answer(s, buffered)
        assert status == 200 and "x-curation-id" in headers
    assert lanes() == (0, 1)
    wait_for(lambda: recorded(db_url) == {"slow body"})


def test_what_the_fast_lane_leaves_to_aiohttp(start_proxy: Start, db_url: str) -> None:
    """Opt-out, a compressed body, HTTP/1.0 and a bad path each go to aiohttp, and are
    answered as before (the opt-out unrecorded, the path refused in OpenAI's shape)."""
    proxy = start_proxy()
    lanes = Lanes(proxy)
    cases = [
        (request("opted out", extra="X-Curation-Log: off\r\n"), 200),
        (request("http 1.0").replace(b"HTTP/1.1", b"HTTP/1.0", 1), 200),
        (request("dots").replace(b"/v1/chat", b"/v1/../v1/chat", 1), 400),
    ]
    for data, expected in cases:
        buffered = bytearray()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(data)
            status, _, _ = read_answer(s, buffered)
            assert status == expected
    assert lanes() == (0, len(cases))
    wait_for(lambda: recorded(db_url) == {"http 1.0"})
    time.sleep(0.5)
    assert recorded(db_url) == {"http 1.0"}


def test_with_the_fast_lane_off_aiohttp_answers_everything(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_FAST_LANE="0")
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        for text in ("off one", "off two"):
            s.sendall(request(text))
            status, headers, _ = read_answer(s, buffered)
            assert status == 200 and "x-curation-id" in headers
    assert "curation_lane_total{" not in metrics(proxy)  # no fast lane: nothing handed over
    wait_for(lambda: recorded(db_url) == {"off one", "off two"})


def test_a_head_that_never_ends_is_handed_to_aiohttp_and_refused(start_proxy: Start) -> None:
    """httptools buffers an unfinished header line, copying it at every read: past
    HEAD_CAP the connection goes to aiohttp, whose line limit refuses it (431)."""
    proxy = start_proxy()
    lanes = Lanes(proxy)
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(f"POST /ns/{NS}/v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: ".encode())
        s.sendall(b"a" * 200_000)
        status, _, body = read_answer(s, buffered)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_header_too_large"
    assert lanes() == (0, 1)


def test_a_client_that_reads_nothing_gets_no_more_answers(
    start_proxy: Start, fake_openai: Any
) -> None:
    """Pipelined requests wait while the client leaves answers unread, as aiohttp's
    side waits: a client cannot make the proxy buffer (and the upstream bill) answers."""
    fake_openai.raw["big"] = ("application/json", b'{"x": "' + b"y" * 1_000_000 + b'"}')
    proxy = start_proxy()
    lanes = Lanes(proxy)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", proxy.port))
        s.sendall(b"".join(request(f"big {i}", extra="X-Fake-Raw: big\r\n") for i in range(40)))
        time.sleep(2.0)
        fast, _ = lanes()
        assert 1 <= fast <= 5

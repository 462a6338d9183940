"""The proxy's lean upstream client (curation/proxy/upstream.py) against scripted raw
HTTP servers on real sockets: framing, keep-alive reuse, the pool's limit, every
timeout and every way an answer can break."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from curation.proxy import upstream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (with uvloop where the proxy has it)."""

    @functools.wraps(test)
    def wrapper() -> None:
        try:
            import uvloop

            uvloop.run(test())
        except ImportError:  # pragma: no cover
            asyncio.run(test())

    return wrapper


@contextlib.asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that runs ``script`` per connection; yields its URL and the request heads."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        original = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            data = await original(separator)
            if separator == b"\r\n\r\n":
                heads.append(data)
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]
        await handle(reader, writer)

    srv = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/base/", heads
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def pool(url: str, **kw: float) -> upstream.Pool:
    options = {"limit": 4, "connect_timeout": 2.0, "read_timeout": 2.0, **kw}
    return upstream.Pool(
        url,
        limit=int(options["limit"]),
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
    )


@run
async def test_a_content_length_answer_and_the_request_as_sent() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"X-Request-Id: req_1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    async with server(script) as (url, heads):
        p = pool(url)
        headers = {"Authorization": "Bearer sk-x", "Content-Length": "999", "Host": "evil"}
        r = await p.request("POST", "/v1/chat/completions?x=1", headers, b'{"a": 1}')
        assert (r.status, r.content_type) == (201, "application/json")
        assert r.headers["x-request-id"] == "req_1"
        assert await r.read() == b'{"a": 1}'
        r.release()
        head = heads[0].decode()
        assert head.startswith("POST /base/v1/chat/completions?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{url.split(':')[2].split('/')[0]}\r\n" in head
        assert "Content-Length: 8\r\n" in head and "999" not in head and "evil" not in head
        assert "Authorization: Bearer sk-x\r\n" in head
        # the connection is reused: the second call makes no new one
        r = await p.request("POST", "/v1/x", {}, b"two")
        assert await r.read() == b"two"
        r.release()
        assert len(p.open) == 1 and len(heads) == 2
        await p.close()


@run
async def test_a_chunked_stream_arrives_as_it_is_sent() -> None:
    go = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n"
        )
        await go.wait()
        writer.write(b"3\r\none\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection until the client closes it

    async with server(script) as (url, _):
        p = pool(url)
        r = await p.request("POST", "/v1/chat/completions", {}, b"{}")
        assert r.content_type == "text/event-stream"
        chunks = r.content.iter_any()
        assert await chunks.__anext__() == b"data: "
        go.set()
        assert [c async for c in chunks] == [b"one"]
        r.release()
        assert p.idle  # a whole chunked body on a keep-alive connection goes back
        await p.close()


@run
async def test_a_body_that_ends_with_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n")
        await writer.drain()

    async with server(script) as (url, _):
        p = pool(url)
        r = await p.request("POST", "/v1/chat/completions", {}, b"{}")
        assert await r.read() == b"data: x\n\n"
        r.release()
        assert not p.idle
        await p.close()


@run
async def test_a_body_cut_short_raises_cut() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with server(script) as (url, _):
        p = pool(url)
        r = await p.request("POST", "/v1/chat/completions", {}, b"{}")
        with pytest.raises(upstream.Cut):
            await r.read()
        r.release()
        await asyncio.sleep(0.05)
        assert not p.open and not p.idle
        await p.close()


@run
async def test_garbage_instead_of_http_raises_cut() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(script) as (url, _):
        p = pool(url)
        with pytest.raises(upstream.Cut):
            await p.request("POST", "/v1/chat/completions", {}, b"{}")
        await p.close()


@run
async def test_no_head_in_time_and_a_stalled_body_time_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        if body == b"stall":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with server(script) as (url, _):
        p = pool(url, read_timeout=0.2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await p.request("POST", "/v1/chat/completions", {}, b"silent")
        assert 0.15 < loop.time() - t0 < 1.5
        r = await p.request("POST", "/v1/chat/completions", {}, b"stall")
        with pytest.raises(TimeoutError):
            await r.read()
        await p.close()


@run
async def test_a_slow_but_steady_stream_does_not_time_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.6 s in all, never 0.25 s quiet
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(script) as (url, _):
        p = pool(url, read_timeout=0.25)
        r = await p.request("POST", "/v1/chat/completions", {}, b"{}")
        assert b"".join([c async for c in r.content.iter_any()]) == b"xxxxxx"
        r.release()
        await p.close()


@run
async def test_nothing_listening_is_unreachable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with server(script) as (url, _):
        pass  # closed: nothing listens on that port any more
    p = pool(url)
    with pytest.raises(upstream.Unreachable):
        await p.request("POST", "/v1/chat/completions", {}, b"{}")
    assert not p.open and p.connecting == 0
    await p.close()


@run
async def test_over_the_limit_a_call_waits_for_a_connection_at_most_connect_timeout() -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with server(script) as (url, heads):
        p = pool(url, limit=1, connect_timeout=0.2)
        first = asyncio.create_task(p.request("POST", "/a", {}, b""))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):  # the only connection is busy the whole time
            await p.request("POST", "/b", {}, b"")
        second = asyncio.create_task(p.request("POST", "/c", {}, b""))
        await asyncio.sleep(0.05)
        release.set()
        r = await first
        assert await r.read() == b"ok"
        r.release()  # handed to the waiting call, not a new connection
        r2 = await second
        assert await r2.read() == b"ok"
        r2.release()
        assert len(heads) == 2 and len(p.open) == 1
        await p.close()


@run
async def test_a_large_stream_read_slowly_pauses_the_upstream_and_arrives_whole() -> None:
    piece = b"y" * 65536

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):  # 4 MiB
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(script) as (url, _):
        p = pool(url)
        r = await p.request("POST", "/v1/chat/completions", {}, b"{}")
        got = 0
        async for chunk in r.content.iter_any():
            got += len(chunk)
            assert len(chunk) <= 2 * upstream.HIGH_WATER  # paused, not all 4 MiB buffered
            await asyncio.sleep(0.002)
        assert got == 64 * len(piece)
        r.release()
        await p.close()


def test_the_upstream_url_is_parsed_once() -> None:
    o = upstream.Origin.parse("https://api.openai.com/v1/")
    assert (o.host, o.port, o.prefix, o.host_header) == (
        "api.openai.com",
        443,
        "/v1",
        "api.openai.com",
    )
    assert o.tls is not None
    o = upstream.Origin.parse("http://[::1]:8000")
    assert (o.host, o.port, o.prefix, o.host_header, o.tls) == ("::1", 8000, "", "[::1]:8000", None)
    with pytest.raises(ValueError):
        upstream.Origin.parse("ftp://x")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost (openssl's command line)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key),
            *("-out", cert, "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_an_https_upstream_is_verified_and_reused(certificate: tuple[str, str]) -> None:
    """The production upstream is https: the certificate and the host name are checked
    (against SSL_CERT_FILE's CAs here), and the TLS connection is kept for the next call."""
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async def calls() -> None:
        srv = await asyncio.start_server(script, "127.0.0.1", 0, ssl=tls)
        port = srv.sockets[0].getsockname()[1]
        try:
            p = pool(f"https://localhost:{port}")
            for text in (b"one", b"two"):
                r = await p.request("POST", "/v1/chat/completions", {}, text)
                assert await r.read() == text
                r.release()
            assert len(p.open) == 1
            await p.close()
            os.environ.pop("SSL_CERT_FILE")
            untrusted = pool(f"https://localhost:{port}")
            with pytest.raises(upstream.Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.request("POST", "/v1/chat/completions", {}, b"{}")
        finally:
            srv.close()

    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = cert
    try:
        run(calls)()
    finally:
        os.environ.pop("SSL_CERT_FILE", None)
        if before is not None:
            os.environ["SSL_CERT_FILE"] = before


@run
async def test_informational_answers_are_skipped_and_odd_bytes_survive() -> None:
    """A 103 Early Hints (and a 100) come before the answer, which is the one returned;
    header bytes that are not UTF-8 go up and come back unchanged."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nX-Odd: caf\xc3\xa9 \xff\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        await reader.read()

    async with server(script) as (url, heads):
        p = pool(url)
        r = await p.request("POST", "/v1/x", {"X-User": "caf\u00e9 \udcff"}, b"{}")
        assert r.status == 200 and "Link" not in r.headers
        assert r.headers["X-Odd"].encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff"
        assert await r.read() == b"ok"
        r.release()
        assert b"X-User: caf\xc3\xa9 \xff\r\n" in heads[0]
        await p.close()


@run
async def test_bytes_after_a_whole_answer_close_the_connection_quietly() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(script) as (url, _):
        p = pool(url)
        r = await p.request("POST", "/v1/x", {}, b"{}")
        assert await r.read() == b"ok"
        r.release()
        await asyncio.sleep(0.1)
        assert not p.open and not p.idle  # closed: nobody asked for those bytes
        await p.close()

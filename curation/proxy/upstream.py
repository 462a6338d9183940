"""The proxy's client for recorded calls to its upstream: pooled HTTP/1.1 keep-alive
connections on asyncio protocols, responses parsed by httptools.

aiohttp's client did far more per call than the proxy needs (a request object, a
URL, cookies, traces, a stream reader, several timers): profiled, it was about a
third of the proxy's CPU per call. The proxy needs one request whose body is
already in memory, the response's head, and its body whole or as it arrives. So
a recorded call (chat completions, responses) goes through this client; every
other call keeps aiohttp's (``app.py``).

Semantics are aiohttp's as the proxy configured them: at most ``limit``
connections; ``connect_timeout`` bounds both connecting and the wait for a free
connection; ``read_timeout`` bounds every wait for the next bytes of a response
(head or body); idle connections are kept ``keepalive`` seconds; no redirects, no
decompression; a request is never retried (a POST may have reached the upstream).
Failures raise ``TimeoutError``, ``Unreachable`` (no connection) or ``Cut`` (the
connection broke or the upstream sent something that is not HTTP).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# Headers this client writes itself: framing and the upstream's host.
OWN = frozenset({"host", "content-length", "transfer-encoding", "connection"})
HIGH_WATER = 1 << 18  # a streamed body buffered past this pauses reading from the upstream


class UpstreamError(Exception):
    """The upstream could not be reached, or its answer broke off."""


class Unreachable(UpstreamError):
    """No connection to the upstream."""


class Cut(UpstreamError):
    """The connection broke, or the upstream's bytes were not HTTP."""


@dataclass(frozen=True)
class Origin:
    """Where the upstream is: from ``CURATION_UPSTREAM_URL``."""

    host: str
    port: int
    prefix: str  # the base URL's path, without its trailing slash
    host_header: str
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL {base_url!r} is not http(s)://host[:port][/path]")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        default = port == (443 if tls else 80)
        return cls(
            host=host,
            port=port,
            prefix=parts.path.rstrip("/"),
            host_header=shown if default else f"{shown}:{port}",
            tls=ssl.create_default_context() if tls else None,
        )


class Response:
    """An upstream response: its head at once, its body whole (``read``) or as it arrives
    (``content.iter_any()``, as aiohttp's response has it)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self._raw: list[tuple[str, str]] = []
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._released = False
        self._streaming = False  # iter_any() reads it: a full buffer pauses the upstream
        self._body: bytes | None = None

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's default when absent)."""
        value = self.headers.get("Content-Type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    @property
    def content(self) -> Response:
        return self

    async def read(self) -> bytes:
        """The whole body (kept: reading it again returns it, as aiohttp's does)."""
        if self._body is None:
            while not self._complete:
                await self._wait()
            self._body = b"".join(self._chunks)
            self._chunks.clear()
        return self._body

    async def readany(self) -> bytes:
        """What has arrived of the body, waiting for some; b"" at its end."""
        self._streaming = True
        while not self._chunks and not self._complete:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever is buffered, joined, at each step."""
        self._streaming = True
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                self._conn.resume()
                yield data
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Done with it: a whole body on a keep-alive connection goes back to the pool."""
        if self._released:
            return
        self._released = True
        if self._complete and self._keep_alive:
            self._conn.pool.put_back(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Drop the connection (the body is not wanted, or broke off)."""
        self._released = True
        self._conn.close()

    # -- fed by the connection -------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._chunks and not self._complete:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _headers_done(self, status: int) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(self._raw))
        if not self._head.done():
            self._head.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming and self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._complete, self._keep_alive = True, keep_alive
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._complete:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: nobody may be waiting on it any more
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one response at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self.paused = False
        self.until_close = False  # the body ends when the upstream closes the connection
        self.informational = False  # reading a 1xx answer, which the real one follows
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio subclass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._stop_timer()
        response = self.response
        if response is not None and exc is None and self.until_close and response._head.done():
            self.response = None
            response._finish(keep_alive=False)  # a body that ends with the connection
        elif response is not None:
            detail = f": {type(exc).__name__}" if exc is not None else ""
            response._fail(Cut(f"the upstream closed the connection{detail}"))
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.response is not None:
                self.response._fail(Cut(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

    # -- httptools -------------------------------------------------------

    def _current(self) -> Response:
        """The response being read; bytes after a whole answer stop the parser (the
        connection is then closed: nobody asked for them)."""
        if self.response is None:
            raise Cut("the upstream sent bytes after its answer")
        return self.response

    def on_message_begin(self) -> None:
        self._current()._raw.clear()  # an informational answer's headers are not kept

    def on_header(self, name: bytes, value: bytes) -> None:
        # as aiohttp decodes them: bytes that are not UTF-8 survive the round trip
        self._current()._raw.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        response = self._current()
        status = self.parser.get_status_code()
        self.informational = 100 <= status < 200 and status != 101
        if self.informational:
            return  # 100 Continue, 103 Early Hints: the answer follows on this connection
        response._headers_done(status)
        headers = response.headers
        self.until_close = (
            "Content-Length" not in headers
            and "chunked" not in headers.get("Transfer-Encoding", "").lower()
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self._current()._feed(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        response = self._current()
        self.response = None
        self._stop_timer()
        response._finish(self.parser.should_keep_alive())

    # -- the pool's side ---------------------------------------------------

    def send(self, data: bytes, read_timeout: float) -> Response:
        assert self.transport is not None
        self.response = Response(self)
        self.parser = httptools.HttpResponseParser(self)
        self.last_read = self.loop.time()
        self.timer = self.loop.call_later(read_timeout, self._check, read_timeout)
        self.transport.write(data)
        return self.response

    def _check(self, read_timeout: float) -> None:
        """The read timeout: no bytes for ``read_timeout`` seconds fails the response."""
        self.timer = None
        if self.response is None:
            return
        quiet = self.loop.time() - self.last_read
        if self.paused or quiet < read_timeout:
            left = read_timeout - quiet if not self.paused else read_timeout
            self.timer = self.loop.call_later(max(left, 0.001), self._check, read_timeout)
            return
        self.response._fail(TimeoutError(f"no bytes from the upstream for {read_timeout:g}s"))
        self.close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def usable(self, now: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < self.pool.keepalive
        )

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Pool:
    """Connections to one upstream, reused across calls."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = 60.0,
    ) -> None:
        self.origin = Origin.parse(base_url)
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.open: set[_Connection] = set()  # connected or connecting (counts toward limit)
        self.idle: list[_Connection] = []
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.connecting = 0
        self.closed = False

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send one request (``target`` is the path and query after the base URL's path);
        the response once its head is in."""
        head = [
            f"{method} {self.origin.prefix}{target} HTTP/1.1\r\nHost: {self.origin.host_header}\r\n"
        ]
        for key, value in headers.items():
            if key.lower() not in OWN:
                head.append(f"{key}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        data = "".join(head).encode("utf-8", "surrogateescape") + body
        conn = await self._acquire()
        response = conn.send(data, self.read_timeout)
        try:
            await response._head
        except BaseException:
            conn.close()
            raise
        return response

    async def close(self) -> None:
        self.closed = True
        for conn in list(self.open):
            conn.close()
        self.idle.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unreachable("the proxy is shutting down"))

    # -- connections -------------------------------------------------------

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.idle:
            conn = self.idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        if self.closed:
            raise Unreachable("the proxy is shutting down")
        async with asyncio.timeout(self.connect_timeout):
            while len(self.open) + self.connecting >= self.limit:
                waiter: asyncio.Future[_Connection | None] = loop.create_future()
                self.waiters.append(waiter)
                try:
                    handed = await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                        self._give(waiter.result())  # handed over as we were cancelled: pass on
                    raise
                if handed is not None and handed.usable(loop.time()):
                    return handed
                if handed is not None:  # closed by the upstream since it was put back
                    handed.close()
            return await self._connect()

    async def _connect(self) -> _Connection:
        o = self.origin
        self.connecting += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self),
                o.host,
                o.port,
                ssl=o.tls,
                server_hostname=o.host if o.tls else None,
            )
        except BaseException as exc:
            self.connecting -= 1
            self._wake_one()
            if isinstance(exc, OSError):
                raise Unreachable(f"cannot connect to {o.host}:{o.port}: {exc}") from exc
            raise
        self.connecting -= 1
        self.open.add(conn)
        return conn

    def put_back(self, conn: _Connection) -> None:
        """A connection whose response was read whole: to a waiting call, else idle."""
        if conn.closed or self.closed:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._give(conn)

    def _give(self, conn: _Connection | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot opened: the first waiter may connect."""
        if len(self.open) + self.connecting < self.limit:
            self._give(None)


class Pools:
    """One pool per base URL, made on first use: the students' endpoints."""

    def __init__(
        self, *, limit: int, connect_timeout: float, read_timeout: float, keepalive: float = 60.0
    ) -> None:
        self.options = {
            "limit": limit,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "keepalive": keepalive,
        }
        self.pools: dict[str, Pool] = {}

    def get(self, base_url: str) -> Pool:
        """The pool for ``base_url``; ValueError if it is not http(s)://host[:port][/path]."""
        key = base_url.rstrip("/")
        pool = self.pools.get(key)
        if pool is None:
            o = self.options
            pool = self.pools[key] = Pool(
                key,
                limit=int(o["limit"]),
                connect_timeout=o["connect_timeout"],
                read_timeout=o["read_timeout"],
                keepalive=o["keepalive"],
            )
        return pool

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

"""The proxy's fast lane: the common recorded call, handled below aiohttp.

Most production traffic is one shape: an HTTP/1.1 ``POST`` of a chat completion
(or a response) with a ``Content-Length`` body, for a namespace the teacher
answers. Profiled, aiohttp's server and client were most of the proxy's CPU per
call, and that CPU is what the proxy adds to every call's latency and takes from
the machine's throughput. So each client connection starts here: a plain
asyncio protocol parses the request with httptools and, when the request is of
that shape and nothing about it needs the proxy to refuse, warn or decide, sends
it upstream through the lean client (``upstream.py``) and writes the answer back
itself, recording it exactly as ``relay.py`` does (the same ``Relay`` methods:
spooled before the client has the last byte, counted, access-logged).

Everything else is handed to aiohttp (``protocol.Connection`` and ``app.py``) at
the first byte of the request that is not of that shape, with the connection:
the request's bytes so far are kept until it is complete, so aiohttp parses them
from the start and answers as it always has (every refusal, limit, encoding,
served namespace, unrecorded path, HTTP/1.0, ``Expect``, chunked upload...). A
connection stays with aiohttp once handed over. Failures after the request left
for the upstream (unreachable, timeout, cut) are answered here, in the same
shape and with the same metrics as ``app.py``.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
from multidict import CIMultiDict
from prometheus_client import Counter

from curation.proxy import feedback, protocol, routing
from curation.proxy.admission import Refusal, check_key, opted_out
from curation.proxy.app import KINDS, Proxy, upstream_raw_path
from curation.proxy.relay import (
    Call,
    StreamRecording,
    client_headers,
    upstream_failed,
    upstream_timeout,
)
from curation.proxy.upstream import Cut, Response, UpstreamError

log = logging.getLogger("curation.proxy")

HIGH_WATER = 1 << 16  # a client reading slowly: wait before writing more
HEAD_CAP = 64 * 1024  # a request head longer than this is aiohttp's (its per-line limits)
BODY_GRACE = 0.5  # a body not whole this long after its head is aiohttp's to read and time


class HandOver(Exception):
    """The request is not for the fast lane: aiohttp takes the connection."""


class Whole(Exception):
    """The request is complete: stop parsing (what follows is the next request)."""


@dataclass
class Lane:
    """What every fast-lane connection of one proxy process shares."""

    proxy: Proxy
    slow: Callable[[], protocol.Connection]  # aiohttp's protocol, for what is handed over
    gate: protocol.Gate
    connections: set[Front] = field(default_factory=set)
    calls: set[asyncio.Task[None]] = field(default_factory=set)
    fast: Counter = field(init=False)
    handed: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.fast = self.proxy.metrics.lanes.labels("fast")
        self.handed = self.proxy.metrics.lanes.labels("aiohttp")

    def factory(self) -> Front:
        return Front(self)

    async def drain(self, timeout: float) -> None:
        """At shutdown: idle connections closed, calls in flight finished (up to ``timeout``)."""
        for front in list(self.connections):
            if front.busy:
                continue
            if front.raw:  # a request on its way in: aiohttp's shutdown waits for it
                front._hand_over()
            else:
                front.close()
        if self.calls:
            await asyncio.wait(list(self.calls), timeout=timeout)


class Front(asyncio.Protocol):
    """One client connection, until (if ever) it is handed to aiohttp."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.proxy = lane.proxy
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()  # from the first byte of the request being read
        self.fed = 0  # bytes of ``raw`` the parser has seen
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False  # a call in flight: its answer is being written
        self.wrote = False  # some of its answer was written
        self.closing = False  # its answer is the connection's last
        self.gone = False  # the client's connection is lost
        self.admitted = False
        self.handed = False
        self.timer: asyncio.TimerHandle | None = None
        self.writable: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.head_length = 0
        self.content_length = 0
        self.head_seen = False

    # -- asyncio ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
        self.admitted = self.lane.gate.enter()
        if not self.admitted:
            protocol.over_cap(self.transport)
            return
        self.lane.connections.add(self)
        self._arm(self.proxy.settings.idle_timeout, self._idle)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.gone = True
        self._disarm()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.lane.connections.discard(self)
        if self.admitted and not self.handed:
            self.admitted = False
            self.lane.gate.leave()

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.busy:  # the next request, sent before this answer: read once it is done
            if len(self.raw) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        self._parse()

    def eof_received(self) -> bool:
        return self.busy  # an answer in flight is still written; else nothing can follow

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # -- parsing -----------------------------------------------------------

    def _parse(self) -> None:
        if not self.raw or self.fed >= len(self.raw):
            return
        if not self.head_seen and len(self.raw) > HEAD_CAP:
            # httptools buffers a header line until its end, copying it at every read:
            # a long one would cost quadratic CPU here before any limit could be checked
            self._hand_over()
            return
        try:
            self.parser.feed_data(bytes(self.raw[self.fed :]))
            self.fed = len(self.raw)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Whole):
                self._start()
            else:
                self._hand_over()
        except httptools.HttpParserError:
            self._hand_over()  # aiohttp's parser answers it as it always has

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > protocol.MAX_URL_BYTES:
            raise HandOver

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) > protocol.MAX_HEADER_BYTES or len(value) > protocol.MAX_HEADER_BYTES:
            raise HandOver
        # as aiohttp decodes them, so bytes that are not UTF-8 survive the round trip
        self.headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )
        if len(self.headers) > protocol.MAX_HEADERS:
            raise HandOver

    def on_headers_complete(self) -> None:
        self.head_seen = True
        head = self.raw.find(b"\r\n\r\n")
        if head < 0 or not self.raw.startswith(b"POST "):
            raise HandOver
        self.head_length = head + 4
        if self.parser.get_http_version() != "1.1":
            raise HandOver
        self.request_headers = CIMultiDict(self.headers)
        length = self.request_headers.getall("Content-Length", [])
        if len(length) != 1 or not length[0].isdigit():
            raise HandOver  # chunked, both, several or none: aiohttp frames it
        self.content_length = int(length[0])
        if self.content_length > self.proxy.settings.max_body_bytes:
            raise HandOver
        for name in ("Transfer-Encoding", "Content-Encoding", "Expect", "Upgrade"):
            if name in self.request_headers:
                raise HandOver
        self._arm(BODY_GRACE, self._slow_body)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raise Whole

    # -- a whole request -----------------------------------------------------

    def _start(self) -> None:
        """A whole request: the fast lane's if it is of its shape, else aiohttp's."""
        call = self._admit()
        if call is None:
            self._hand_over()
            return
        self._disarm()
        keep_alive = self.parser.should_keep_alive()
        del self.raw[: self.head_length + self.content_length]
        self.fed = 0
        self.parser = httptools.HttpRequestParser(self)
        self.busy, self.wrote = True, False
        self.closing = not keep_alive
        self.lane.fast.inc()
        task = self.loop.create_task(self._call(call, keep_alive))
        self.lane.calls.add(task)
        task.add_done_callback(self.lane.calls.discard)

    def _admit(self) -> Call | None:
        """The call, when nothing about it needs aiohttp's path; else None."""
        proxy, headers = self.proxy, self.request_headers
        raw_path = self.url.decode("latin-1")
        path = raw_path.partition("?")[0]
        try:
            routing.check_path(raw_path)
            route = routing.route(
                "POST",
                _unquote(path),
                headers.get("X-Curation-Namespace"),
                proxy.settings.default_namespace,
            )
        except routing.RouteError:
            return None
        ns = route.namespace
        if not route.record or not ns or proxy.serving.by_namespace.get(ns) is not None:
            return None
        if opted_out(headers):
            return None
        try:
            check_key(headers, proxy.settings.proxy_keys)
            proxy.namespaces.admit(ns, proxy.serving.namespaces)
        except Refusal:
            return None
        body = b"".join(self.body)
        if len(body) != self.content_length:
            return None
        call = Call(
            route=route,
            record=True,
            body=body,
            tags=headers.get("X-Curation-Tags"),
            kind=KINDS.get(route.api, "other"),
            started=time.time(),
            t0=time.perf_counter(),
            call_id=feedback.new_call_id(),
        )
        if proxy.namespaces.exists(ns, proxy.serving.namespaces):
            call.label = ns
        call.headers = headers
        self.target = upstream_raw_path(raw_path)
        return call

    def _hand_over(self) -> None:
        """aiohttp takes the connection, from the first byte of this request."""
        if self.transport is None or self.handed:
            return
        self._disarm()
        self.handed = True
        self.lane.handed.inc()
        self.lane.connections.discard(self)
        slow = self.lane.slow()
        slow.admitted_already = self.admitted
        slow.connection_made(self.transport)
        self.transport.set_protocol(slow)
        if self.raw:
            slow.data_received(bytes(self.raw))
        self.raw.clear()

    # -- the call ------------------------------------------------------------

    async def _call(self, call: Call, keep_alive: bool) -> None:
        proxy = self.proxy
        assert proxy.pool is not None
        headers = routing.upstream_headers(
            call.headers, proxy.settings.openai_api_key if proxy.settings.proxy_keys else None
        )
        call.t_up = time.perf_counter()
        try:
            try:
                answer = await proxy.pool.request("POST", self.target, headers, call.body)
            except TimeoutError:
                proxy.metrics.upstream_errors.labels("timeout").inc()
                self._refuse(call, upstream_timeout())
            except UpstreamError as exc:
                proxy.metrics.upstream_errors.labels("connect").inc()
                log.warning("upstream unreachable: %s", exc)
                self._refuse(call, upstream_failed(exc))
            else:
                try:
                    if answer.content_type == "text/event-stream":
                        keep_alive = await self._stream(call, answer) and keep_alive
                    else:
                        await self._plain(call, answer)
                finally:
                    answer.release()
        except Exception:
            log.exception("the proxy failed on a request")
            keep_alive = self.closing = False
            if self.wrote:
                self.proxy.relay.done(call, 500)
            else:
                self._refuse(
                    call,
                    Refusal(
                        500,
                        "The curation proxy failed on this request.",
                        "proxy_error",
                        "api_error",
                    ),
                )
        finally:
            if self.writable is not None and not self.gone:
                await self.writable  # a client not reading: its next request waits
            self._done(keep_alive)

    async def _plain(self, call: Call, answer: Response) -> None:
        relay = self.proxy.relay
        try:
            data = await answer.read()
        except TimeoutError:
            self.proxy.metrics.upstream_errors.labels("timeout").inc()
            self._refuse(call, upstream_timeout("finish"))
            return
        except UpstreamError as exc:
            self.proxy.metrics.upstream_errors.labels("cut").inc()
            self._refuse(call, upstream_failed(exc, "broke off"))
            return
        t_done = time.perf_counter()
        recorded = 200 <= answer.status < 300
        if recorded:
            relay.record(call, answer, data, streamed=False)
        else:
            self.proxy.metrics.unrecorded.labels("status").inc()
        head = _head(answer, call, recorded, self._closing())
        if answer.status not in (204, 304):
            head.append(b"Content-Length: %d\r\n" % len(data))
        head.append(b"\r\n")
        head.append(data)
        self._write(b"".join(head))
        relay.done(call, answer.status, t_done, time.perf_counter() - t_done)

    async def _stream(self, call: Call, answer: Response) -> bool:
        """Write a stream as it arrives; False when the connection cannot be kept."""
        relay, metrics = self.proxy.relay, self.proxy.metrics
        call.kind += "_stream"
        record = 200 <= answer.status < 300
        head = _head(answer, call, record, self._closing())
        head.append(b"Transfer-Encoding: chunked\r\n\r\n")
        self._write(b"".join(head))
        t_first = time.perf_counter()
        recording = StreamRecording(relay, call, answer, record)
        try:
            async for chunk in answer.iter_any():
                recording.feed(chunk)
                if self.gone:
                    raise ConnectionResetError
                self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if self.writable is not None:
                    await self.writable
            recording.finish()
            self._write(b"0\r\n\r\n")
        except ConnectionResetError:
            answer.close()
            recording.lost("client_disconnect")
            relay.done(call, 499)
            return False
        except (Cut, TimeoutError) as exc:
            answer.close()
            metrics.upstream_errors.labels("cut").inc()
            recording.lost("upstream_cut")
            log.warning("upstream stream broke off: %s", type(exc).__name__)
            self.close()  # the client must see a broken stream, not a clean end
            relay.done(call, 502)
            return False
        relay.done(call, answer.status, t_first)
        return True

    def _refuse(self, call: Call, refusal: Refusal) -> None:
        """The proxy answers this call itself, in OpenAI's error shape (as ``Relay.answer``)."""
        self.proxy.relay.done(call, refusal.status)
        body = refusal.body()
        self._write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (
                refusal.status,
                _phrase(refusal.status),
                len(body),
                b"Connection: close\r\n" if self._closing() else b"",
                body,
            )
        )

    def _closing(self) -> bool:
        """This answer is the connection's last: the client is told so."""
        return self.closing or self.proxy.stopping

    def _write(self, data: bytes) -> None:
        self.wrote = True
        if self.transport is not None and not self.gone and not self.transport.is_closing():
            self.transport.write(data)

    def _done(self, keep_alive: bool) -> None:
        """The answer is written: next request, or close."""
        self.busy = False
        if self.gone or self.transport is None:
            return
        if not keep_alive or self.lane.proxy.stopping:
            self.close()
            return
        self._reset()
        self.transport.resume_reading()
        self._arm(self.proxy.settings.idle_timeout, self._idle)
        self._parse()  # a request sent before the answer was done

    # -- timers ----------------------------------------------------------------

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        """No whole request head for ``idle_timeout`` seconds: closed, as aiohttp's side does."""
        self.timer = None
        if not self.busy and not self.handed:
            self.close()

    def _slow_body(self) -> None:
        """A body still arriving after BODY_GRACE: aiohttp reads it (and times it out)."""
        self.timer = None
        if not self.busy and not self.handed:
            self._hand_over()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _head(answer: Response, call: Call, recorded: bool, closing: bool) -> list[bytes]:
    """The status line and the upstream's headers as the client gets them."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, _phrase(answer.status))]
    for key, value in client_headers(answer, call, recorded).items():
        lines.append(f"{key}: {value}\r\n".encode("utf-8", "surrogateescape"))
    if closing:
        lines.append(b"Connection: close\r\n")
    return lines


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _unquote(path: str) -> str:
    """The path as aiohttp's ``request.path`` has it (percent-decoded)."""
    if "%" not in path:
        return path
    from urllib.parse import unquote

    return unquote(path)

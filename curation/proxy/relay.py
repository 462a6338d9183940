"""Writing the upstream's answer back to the client, and what happens around it.

``Relay`` takes a call's upstream response (the teacher's, or a student's)
and hands it to the client untouched: a plain body at once, an SSE stream
chunk by chunk. A 2xx answer of a recorded call is spooled before its last
byte reaches the client, the call's shadow or watch call is planned then and
started once the client has its whole answer, and every call is counted
(metrics, access log, the student's failures in the serving tallies).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from curation.capture.row import Capture
from curation.config import Settings
from curation.proxy import feedback, routing, shadow, spool, student
from curation.proxy.admission import Refusal
from curation.proxy.metrics import Metrics
from curation.proxy.serving import Serving
from curation.proxy.sse import EndOfStream
from curation.proxy.upstream import Cut, UpstreamError

log = logging.getLogger("curation.proxy")
access = logging.getLogger("curation.access")

CLIENT_GONE = (ConnectionResetError, ConnectionError)
UPSTREAM_CUT = (
    aiohttp.ClientPayloadError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    Cut,
)


def client_headers(answer: Answer, call: Call, recorded: bool) -> CIMultiDict[str]:
    """The upstream's headers as the client gets them (all but hop-by-hop), plus the id
    feedback names a call by when it is recorded."""
    headers = routing.client_headers(answer.headers)
    if recorded and call.call_id is not None:
        headers[feedback.HEADER] = call.call_id
    return headers


def upstream_timeout(what: str = "answer") -> Refusal:
    """The proxy's 504 when the upstream did not ``answer`` (its head) or ``finish`` in time."""
    return Refusal(504, f"The upstream did not {what} in time.", "upstream_timeout", "api_error")


def upstream_failed(exc: BaseException, how: str = "is unreachable") -> Refusal:
    """The proxy's 502 when the upstream ``is unreachable`` or ``broke off``."""
    return Refusal(
        502, f"The upstream {how}: {type(exc).__name__}.", "upstream_unreachable", "api_error"
    )


class Body(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class Answer(Protocol):
    """An upstream's response: aiohttp's (students, unrecorded calls) or ``upstream``'s."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content(self) -> Body: ...
    async def read(self) -> bytes: ...
    def release(self) -> object: ...
    def close(self) -> None: ...


@dataclass(kw_only=True)
class Call:
    """One call in flight: what the handler learned about it so far."""

    route: routing.Route
    record: bool
    body: bytes
    tags: str | None
    kind: str
    started: float
    t0: float
    t_up: float = 0.0
    rewritten: bool = False
    fallback_from: str | None = None  # the student that failed: the teacher answered
    head: bytes = b""  # the student's first chunk, read before the client got a byte
    label: str = ""  # its namespace label in metrics: "" until the namespace is admitted
    call_id: str | None = None  # X-Curation-Id: set when the call is to be recorded
    served: Serving | None = None  # its namespace's serving settings, when it is served
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # the client's
    job: shadow.Job | None = None  # the shadow or watch call to make once the client is answered
    student_failure_tallied: bool = False  # a 5xx whose body then breaks is one failure


@dataclass
class StreamRecording:
    """A stream's recording as its chunks pass to the client: spooled as soon as its end
    is seen, before the client has it all (both the aiohttp path and the fast lane)."""

    relay: Relay
    call: Call
    answer: Answer
    record: bool  # a recorded call with a 2xx answer
    chunks: list[bytes] = field(default_factory=list)
    end: EndOfStream = field(default_factory=EndOfStream)
    spooled: bool = False

    def feed(self, chunk: bytes) -> None:
        if self.record:
            self.chunks.append(chunk)
            if not self.spooled and self.end.feed(chunk):
                self._spool()

    def finish(self) -> None:
        """A clean end of the body, even without [DONE] (some engines never send it):
        the recorder keeps it if every choice finished, else sets it aside."""
        if self.record and not self.spooled:
            self._spool()

    def lost(self, reason: str) -> None:
        """The stream broke off (``client_disconnect``, ``upstream_cut``) before its end."""
        if self.record and not self.spooled:
            self.relay.metrics.unrecorded.labels(reason).inc()

    def _spool(self) -> None:
        self.relay.record(self.call, self.answer, b"".join(self.chunks), streamed=True)
        self.spooled = True


@dataclass(kw_only=True)
class Relay:
    """The client's side of a call: its answer written, recorded, counted."""

    settings: Settings
    metrics: Metrics
    spool: spool.Spool
    background: shadow.Background
    _cache: dict[tuple[object, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def spool_capture(self, capture: Capture) -> None:
        try:
            self.spool.append(spool.encode(capture.meta(), capture.request, capture.response))
        except OSError as exc:
            self.metrics.dropped.labels("disk").inc()
            log.error("could not spool a capture of namespace %s: %s", capture.namespace, exc)
            return
        self.metrics.spooled.inc()

    def _series(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client takes a lock and
        builds a key on every ``labels`` call, and this runs for every call. Label values
        are bounded (namespaces that exist, kinds, statuses), and no series is removed."""
        key = (id(metric), *labels)
        series = self._cache.get(key)
        if series is None:
            series = self._cache[key] = metric.labels(*labels)
        return series

    def student_failed(self, call: Call) -> None:
        """Tally a failure of the student: its call failed, or its answer broke off."""
        if call.rewritten and not call.student_failure_tallied:
            call.student_failure_tallied = True
            self.background.tally(call.route.namespace or "", "student_failures")

    async def respond(
        self, request: web.Request, upstream: Answer, call: Call
    ) -> web.StreamResponse:
        try:
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, call)
            return await self._plain(upstream, call)
        finally:
            upstream.release()

    async def after(
        self,
        request: web.Request,
        response: web.StreamResponse,
        call: Call,
        session: aiohttp.ClientSession,
    ) -> web.StreamResponse:
        """Start the call's shadow or watch call, once the client has its whole answer."""
        if call.job is None:
            return response
        if not response.prepared:  # a plain answer: send it now, not after this returns
            with contextlib.suppress(*CLIENT_GONE):
                await response.prepare(request)
                await response.write_eof()
        self.background.launch(session, call.job)
        return response

    def answer(self, call: Call, refusal: Refusal) -> web.Response:
        """The proxy answers this call itself: counted, then OpenAI's error shape."""
        self.done(call, refusal.status)
        return refusal.response()

    def done(
        self, call: Call, status: int, t_headers: float | None = None, after: float = 0.0
    ) -> None:
        """Count the call; added latency = time to the response head minus upstream time."""
        if t_headers is not None:
            self.metrics.added_latency.observe(max(0.0, call.t_up - call.t0 + after))
            self._series(self.metrics.upstream_latency, call.kind).observe(
                time.perf_counter() - call.t_up
            )
        self._series(self.metrics.requests, call.label, call.kind, str(status)).inc()
        if self.settings.access_log:
            access.info(
                "request",
                extra={
                    "namespace": call.route.namespace,
                    "path": call.route.upstream_path,
                    "kind": call.kind,
                    "status": status,
                    "ms": round((time.perf_counter() - call.t0) * 1000, 2),
                },
            )

    # -- recording -------------------------------------------------------

    def record(self, call: Call, upstream: Answer, response: bytes, streamed: bool) -> None:
        self.spool_capture(
            Capture(
                namespace=call.route.namespace or "",
                started_at=call.started,
                latency_ms=(time.perf_counter() - call.t_up) * 1000,
                streamed=streamed,
                content_encoding=upstream.headers.get("Content-Encoding"),
                request_id=upstream.headers.get("x-request-id"),
                tags_header=call.tags,
                request=call.body,
                response=response,
                rewritten=call.rewritten,
                fallback_from=call.fallback_from,
                api=call.route.api,
                call_id=call.call_id,
            )
        )
        self._plan_background(call, upstream, response, streamed)

    def _plan_background(
        self, call: Call, upstream: Answer, response: bytes, streamed: bool
    ) -> None:
        """Roll the dice for a shadow or watch call of this recorded call."""
        served = call.served
        if served is None or call.call_id is None:
            return
        kind = self.background.plan(
            served,
            rewritten=call.rewritten,
            fallback=call.fallback_from is not None,
            api=call.route.api,
        )
        if kind is not None:
            call.job = shadow.Job(
                kind=kind,
                namespace=call.route.namespace or "",
                call_id=call.call_id,
                served=served,
                api=call.route.api,
                path=call.route.upstream_path,
                request=call.body,
                headers=call.headers,
                answer=response,
                streamed=streamed,
                encoding=upstream.headers.get("Content-Encoding"),
                answer_ms=(time.perf_counter() - call.t_up) * 1000,
            )

    # -- writing ---------------------------------------------------------

    async def _plain(self, upstream: Answer, call: Call) -> web.StreamResponse:
        try:
            data = await upstream.read()
        except TimeoutError:
            self.metrics.upstream_errors.labels("timeout").inc()
            self.student_failed(call)
            return self.answer(call, upstream_timeout("finish"))
        except (aiohttp.ClientError, UpstreamError) as exc:
            self.metrics.upstream_errors.labels("cut").inc()
            self.student_failed(call)
            return self.answer(call, upstream_failed(exc, "broke off"))
        t_done = time.perf_counter()
        recorded = call.record and 200 <= upstream.status < 300
        if recorded:
            self.record(call, upstream, data, streamed=False)
        elif call.record:
            self.metrics.unrecorded.labels("status").inc()
        response = web.Response(
            status=upstream.status,
            body=data,
            headers=client_headers(upstream, call, recorded),
        )
        self.done(call, upstream.status, t_done, time.perf_counter() - t_done)
        return response

    async def _stream(
        self, request: web.Request, upstream: Answer, call: Call
    ) -> web.StreamResponse:
        call.kind += "_stream"
        record = call.record and 200 <= upstream.status < 300
        response = web.StreamResponse(
            status=upstream.status, headers=client_headers(upstream, call, record)
        )
        recording = StreamRecording(self, call, upstream, record)
        try:
            await response.prepare(request)
            t_first = time.perf_counter()
            async for chunk in student.chunks(call.head, upstream):
                recording.feed(chunk)
                await response.write(chunk)
            recording.finish()
            await response.write_eof()
        except CLIENT_GONE:
            upstream.close()
            recording.lost("client_disconnect")
            self.done(call, 499)
            return response
        except (*UPSTREAM_CUT, TimeoutError) as exc:
            upstream.close()
            self.metrics.upstream_errors.labels("cut").inc()
            self.student_failed(call)
            recording.lost("upstream_cut")
            log.warning("upstream stream broke off: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.close()  # the client must see a broken stream, not a clean end
            self.done(call, 502)
            return response
        self.done(call, upstream.status, t_first)
        return response

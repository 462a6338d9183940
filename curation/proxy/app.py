"""The proxy's HTTP handling: forward every /v1/* call, record chat completions and responses.

The request path only copies bytes: the body goes upstream untouched, the
upstream's status, headers and body (or SSE chunks, as they arrive) come
back untouched. A 2xx chat completion is appended to the spool as raw
bytes before its last byte reaches the client; all parsing happens later,
in the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from curation.capture.rewrite import rewrite
from curation.capture.row import Capture
from curation.config import Settings
from curation.proxy import admission, feedback, ops, routing, shadow, spool, student
from curation.proxy.admission import Refusal
from curation.proxy.metrics import Metrics, ServingCollector
from curation.proxy.recorder import Recorder
from curation.proxy.serving import Serving, ServingTable
from curation.proxy.sse import EndOfStream
from curation.rollout.decider import Decider

log = logging.getLogger("curation.proxy")
access = logging.getLogger("curation.access")

CLIENT_GONE = (ConnectionResetError, ConnectionError)
KINDS = {"chat.completions": "chat", "responses": "responses"}  # metric kind of a recorded call
UPSTREAM_CUT = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


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


@dataclass(kw_only=True)
class Proxy:
    settings: Settings
    spool: spool.Spool
    recorder: Recorder
    metrics: Metrics
    serving: ServingTable
    session: aiohttp.ClientSession | None = None
    _supervisor: asyncio.Task[None] = field(init=False)
    _namespaces: admission.NamespaceCap = field(init=False)
    feedback_endpoint: feedback.Endpoint = field(init=False)
    background: shadow.Background = field(init=False)
    decider: Decider | None = field(default=None, init=False)  # the rollout decider (one leads)

    def __post_init__(self) -> None:
        self._namespaces = admission.NamespaceCap(
            self.settings.create_namespaces, self.settings.max_namespaces
        )
        self.feedback_endpoint = feedback.Endpoint(self.serving.url, self.settings, self.metrics)
        self.background = shadow.Background(self.settings, self.metrics, self.serving.url)
        self.metrics.registry.register(ServingCollector(self.serving))

    # -- helpers ---------------------------------------------------------

    def spool_capture(self, capture: Capture) -> None:
        try:
            self.spool.append(spool.encode(capture.meta(), capture.request, capture.response))
        except OSError as exc:
            self.metrics.dropped.labels("disk").inc()
            log.error("could not spool a capture of namespace %s: %s", capture.namespace, exc)
            return
        self.metrics.spooled.inc()

    # -- operations endpoints ------------------------------------------

    # -- the proxy -------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        call = Call(
            route=routing.Route(request.path, None, record=False),  # until routed
            record=False,
            body=b"",
            tags=request.headers.get("X-Curation-Tags"),
            kind="other",
            started=time.time(),
            t0=time.perf_counter(),
        )
        try:
            await self._admit(request, call)
        except Refusal as refusal:
            return self._answer(call, refusal)
        route, ns, body = call.route, call.route.namespace, call.body
        forwarded = body
        served = self.serving.by_namespace.get(ns or "") if route.record else None
        if served is not None:
            taken = served.take()
            changed = (
                rewrite(body, served.model, served.short_prompt, api=route.api) if taken else None
            )
            if changed is not None:
                forwarded, call.rewritten = changed, True
                self.background.tally(ns or "", "student_calls")
            call.served, call.headers = served, request.headers
            self.metrics.served.labels(
                ns or "", "fine_tuned" if changed is not None else "original"
            ).inc()
        url = URL(
            self.settings.upstream_url.rstrip("/") + upstream_raw_path(request.raw_path),
            encoded=True,
        )
        assert self.session is not None
        call.t_up = time.perf_counter()
        if call.rewritten and served is not None and served.endpoint:
            answered = await self._ask_student(request, served, forwarded, call)
            if answered is not None:
                return await self._after(
                    request, await self._respond(request, answered, call), call
                )
            forwarded = body  # the student failed: the teacher gets the client's own call
        try:
            upstream = await self.session.request(
                request.method,
                url,
                data=forwarded,
                headers=routing.upstream_headers(
                    request.headers,
                    self.settings.openai_api_key if self.settings.proxy_keys else None,
                ),
                allow_redirects=False,
            )
        except TimeoutError:
            self.metrics.upstream_errors.labels("timeout").inc()
            self._student_failed(call)
            return self._answer(
                call,
                Refusal(
                    504, "The upstream did not answer in time.", "upstream_timeout", "api_error"
                ),
            )
        except aiohttp.ClientError as exc:
            self.metrics.upstream_errors.labels("connect").inc()
            self._student_failed(call)
            log.warning("upstream unreachable: %s", exc)
            return self._answer(
                call,
                Refusal(
                    502,
                    f"The upstream is unreachable: {type(exc).__name__}.",
                    "upstream_unreachable",
                    "api_error",
                ),
            )
        if upstream.status >= 500:
            self._student_failed(call)
        return await self._after(request, await self._respond(request, upstream, call), call)

    def _student_failed(self, call: Call) -> None:
        """Tally a failure of the student: its call failed, or its stream broke off."""
        if call.rewritten:
            self.background.tally(call.route.namespace or "", "student_failures")

    async def _after(
        self, request: web.Request, response: web.StreamResponse, call: Call
    ) -> web.StreamResponse:
        """Start the call's shadow or watch call, once the client has its whole answer."""
        if call.job is None:
            return response
        if not response.prepared:  # a plain answer: send it now, not after this returns
            with contextlib.suppress(*CLIENT_GONE):
                await response.prepare(request)
                await response.write_eof()
        assert self.session is not None
        self.background.launch(self.session, call.job)
        return response

    async def _ask_student(
        self, request: web.Request, served: Serving, body: bytes, call: Call
    ) -> aiohttp.ClientResponse | None:
        """The student's response, or None (counted) when the teacher must answer instead."""
        assert self.session is not None
        outcome = await student.ask(
            self.session,
            served,
            body,
            request.headers,
            self.settings.student_timeout,
            path=call.route.upstream_path.removeprefix("/v1"),
        )
        if isinstance(outcome, student.Answer):
            call.head = outcome.head
            return outcome.response
        ns = call.route.namespace or ""
        self.metrics.student_fallbacks.labels(ns, outcome.reason).inc()
        self.background.tally(ns, "student_failures")
        log.warning(
            "%s: student %s failed (%s), the teacher answers: %s",
            ns,
            served.model,
            outcome.reason,
            outcome.detail,
        )
        call.rewritten, call.fallback_from = False, served.model
        return None

    async def _respond(
        self, request: web.Request, upstream: aiohttp.ClientResponse, call: Call
    ) -> web.StreamResponse:
        try:
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, call)
            return await self._plain(upstream, call)
        finally:
            upstream.release()

    def _should_record(self, request: web.Request, namespace: str | None) -> bool:
        if request.headers.get("X-Curation-Log", "").strip().lower() in ("off", "0", "false", "no"):
            self.metrics.unrecorded.labels("opt_out").inc()
            return False
        if not namespace:
            self.metrics.unrecorded.labels("no_namespace").inc()
            return False
        return True

    async def _admit(self, request: web.Request, call: Call) -> None:
        """Route the call and read its body, or raise the ``Refusal`` that answers it."""
        route = call.route = admission.route(request, self.settings.default_namespace)
        call.kind = KINDS.get(route.api, "other")
        admission.check_key(request.headers, self.settings.proxy_keys)
        if route.record and route.namespace:
            self._namespaces.admit(route.namespace, self.serving.namespaces)
        if route.namespace and self._namespaces.exists(route.namespace, self.serving.namespaces):
            call.label = route.namespace  # metric labels: only namespaces that exist
        call.body = await admission.read_body(request, self.settings)
        call.record = route.record and self._should_record(request, route.namespace)
        call.call_id = feedback.new_call_id() if call.record else None
        if not route.record:
            self.metrics.unrecorded_requests.labels(routing.family(route.upstream_path)).inc()

    def _record(
        self, call: Call, upstream: aiohttp.ClientResponse, response: bytes, streamed: bool
    ) -> None:
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
        self, call: Call, upstream: aiohttp.ClientResponse, response: bytes, streamed: bool
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
                path=call.route.upstream_path,
                request=call.body,
                headers=call.headers,
                answer=response,
                streamed=streamed,
                encoding=upstream.headers.get("Content-Encoding"),
                answer_ms=(time.perf_counter() - call.t_up) * 1000,
            )

    def _client_headers(
        self, upstream: aiohttp.ClientResponse, call: Call, recorded: bool
    ) -> CIMultiDict[str]:
        """The upstream's headers, plus the id feedback names a call by when it is recorded."""
        headers = routing.client_headers(upstream.headers)
        if recorded and call.call_id is not None:
            headers[feedback.HEADER] = call.call_id
        return headers

    async def _plain(self, upstream: aiohttp.ClientResponse, call: Call) -> web.StreamResponse:
        try:
            data = await upstream.read()
        except TimeoutError:
            self.metrics.upstream_errors.labels("timeout").inc()
            return self._answer(
                call,
                Refusal(
                    504, "The upstream did not finish in time.", "upstream_timeout", "api_error"
                ),
            )
        except aiohttp.ClientError as exc:
            self.metrics.upstream_errors.labels("cut").inc()
            return self._answer(
                call,
                Refusal(
                    502,
                    f"The upstream broke off: {type(exc).__name__}.",
                    "upstream_unreachable",
                    "api_error",
                ),
            )
        t_done = time.perf_counter()
        if call.record:
            if 200 <= upstream.status < 300:
                self._record(call, upstream, data, streamed=False)
            else:
                self.metrics.unrecorded.labels("status").inc()
        response = web.Response(
            status=upstream.status,
            body=data,
            headers=self._client_headers(
                upstream, call, call.record and 200 <= upstream.status < 300
            ),
        )
        self._done(call, upstream.status, t_done, time.perf_counter() - t_done)
        return response

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, call: Call
    ) -> web.StreamResponse:
        call.kind += "_stream"
        record = call.record and 200 <= upstream.status < 300
        response = web.StreamResponse(
            status=upstream.status, headers=self._client_headers(upstream, call, record)
        )
        chunks: list[bytes] = []
        end = EndOfStream()
        spooled = False
        try:
            await response.prepare(request)
            t_first = time.perf_counter()
            async for chunk in student.chunks(call.head, upstream):
                if record:
                    chunks.append(chunk)
                    if not spooled and end.feed(chunk):  # spool before the client has it all
                        self._record(call, upstream, b"".join(chunks), streamed=True)
                        spooled = True
                await response.write(chunk)
            if record and not spooled:
                # A clean end of the body without [DONE] (some engines never send it):
                # the recorder keeps it if every choice finished, else sets it aside.
                self._record(call, upstream, b"".join(chunks), streamed=True)
            await response.write_eof()
        except CLIENT_GONE:
            upstream.close()
            if record and not spooled:
                self.metrics.unrecorded.labels("client_disconnect").inc()
            self._done(call, 499)
            return response
        except (*UPSTREAM_CUT, TimeoutError) as exc:
            upstream.close()
            self.metrics.upstream_errors.labels("cut").inc()
            self._student_failed(call)
            if record and not spooled:
                self.metrics.unrecorded.labels("upstream_cut").inc()
            log.warning("upstream stream broke off: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.close()  # the client must see a broken stream, not a clean end
            self._done(call, 502)
            return response
        self._done(call, upstream.status, t_first)
        return response

    def _answer(self, call: Call, refusal: Refusal) -> web.Response:
        """The proxy answers this call itself: counted, then OpenAI's error shape."""
        self._done(call, refusal.status)
        return refusal.response()

    def _done(
        self, call: Call, status: int, t_headers: float | None = None, after: float = 0.0
    ) -> None:
        """Count the call; added latency = time to the response head minus upstream time."""
        if t_headers is not None:
            self.metrics.added_latency.observe(max(0.0, call.t_up - call.t0 + after))
            self.metrics.upstream_latency.labels(call.kind).observe(time.perf_counter() - call.t_up)
        self.metrics.requests.labels(call.label, call.kind, str(status)).inc()
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

    # -- lifecycle -------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.upstream_max_connections,
            limit_per_host=0,
            keepalive_timeout=60,
            enable_cleanup_closed=True,
        )
        # connect also bounds the wait for a free pooled connection: over the pool limit,
        # a call waits at most that long and then gets an OpenAI-shaped 504
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.upstream_connect_timeout,
            sock_connect=s.upstream_connect_timeout,
            sock_read=s.upstream_read_timeout,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        self.recorder.start()
        self._supervisor = asyncio.create_task(self.recorder.supervise(), name="curation-recorder")
        self.serving.start()
        self.background.start()
        if s.rollout_decider:
            self.decider = Decider(self.serving.url, interval=s.rollout_interval)
            self.decider.start()

    async def on_cleanup(self, app: web.Application) -> None:
        if self.decider is not None:
            await self.decider.stop()  # closing its connection hands the lock to another proxy
        await self.serving.stop()
        await self.background.close()
        await self.feedback_endpoint.close()
        self._supervisor.cancel()
        if self.session is not None:
            await self.session.close()


def upstream_raw_path(raw_path: str) -> str:
    """The path and query as the client encoded them, without ``/ns/<name>``."""
    if raw_path.startswith("/ns/"):
        parts = raw_path.split("/", 3)
        return "/" + (parts[3] if len(parts) > 3 else "")
    return raw_path


def build_app(proxy: Proxy) -> web.Application:
    app = web.Application(client_max_size=proxy.settings.max_body_bytes + 1)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", functools.partial(ops.readyz, proxy))
    app.router.add_get("/metrics", functools.partial(ops.metrics, proxy))
    app.router.add_route("*", feedback.PATH, proxy.feedback_endpoint.handle)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.on_startup.append(proxy.on_startup)
    app.on_cleanup.append(proxy.on_cleanup)
    return app

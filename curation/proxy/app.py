"""The proxy's HTTP handling: forward every /v1/* call, record chat completions and responses.

The request path only copies bytes: the body goes upstream untouched, the
upstream's status, headers and body (or SSE chunks, as they arrive) come
back untouched (``relay.py`` writes them). A 2xx chat completion is
appended to the spool as raw bytes before its last byte reaches the client;
all parsing happens later, in the writer. A served namespace's call may go to
its student first (``student.py``), and may get a shadow or watch call in the
background (``shadow.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from curation.capture.rewrite import rewrite
from curation.config import Settings
from curation.proxy import (
    admission,
    feedback,
    ops,
    routing,
    shadow,
    spool,
    student,
    upstream,
)
from curation.proxy.admission import Refusal
from curation.proxy.metrics import Metrics, ServingCollector
from curation.proxy.recorder import Recorder
from curation.proxy.relay import Answer, Call, Relay, upstream_failed, upstream_timeout
from curation.proxy.serving import Serving, ServingTable
from curation.rollout.decider import Decider

log = logging.getLogger("curation.proxy")

KINDS = {"chat.completions": "chat", "responses": "responses"}  # metric kind of a recorded call


@dataclass(kw_only=True)
class Proxy:
    settings: Settings
    spool: spool.Spool
    recorder: Recorder
    metrics: Metrics
    serving: ServingTable
    session: aiohttp.ClientSession | None = None
    pool: upstream.Pool | None = None  # recorded calls to the upstream (the hot path)
    students: upstream.Pools | None = None  # served namespaces' students, by endpoint
    _supervisor: asyncio.Task[None] = field(init=False)
    namespaces: admission.NamespaceCap = field(init=False)
    stopping: bool = field(default=False, init=False)  # shutting down: no new keep-alive
    feedback_endpoint: feedback.Endpoint = field(init=False)
    background: shadow.Background = field(init=False)
    relay: Relay = field(init=False)
    decider: Decider | None = field(default=None, init=False)  # the rollout decider (one leads)

    def __post_init__(self) -> None:
        self.namespaces = admission.NamespaceCap(
            self.settings.create_namespaces, self.settings.max_namespaces
        )
        self.feedback_endpoint = feedback.Endpoint(self.serving.url, self.settings, self.metrics)
        self.background = shadow.Background(self.settings, self.metrics, self.serving.url)
        self.relay = Relay(
            settings=self.settings,
            metrics=self.metrics,
            spool=self.spool,
            background=self.background,
        )
        self.metrics.registry.register(ServingCollector(self.serving))

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
            return self.relay.answer(call, refusal)
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
        assert self.session is not None
        call.t_up = time.perf_counter()
        if call.rewritten and served is not None and served.endpoint:
            answered = await self._ask_student(request, served, forwarded, call)
            if answered is not None:
                return await self._finish(request, answered, call)
            forwarded = body  # the student failed: the teacher gets the client's own call
        headers = routing.upstream_headers(
            request.headers, self.settings.openai_api_key if self.settings.proxy_keys else None
        )
        try:
            answer: Answer
            if route.record and self.pool is not None:
                answer = await self.pool.request(
                    request.method, upstream_raw_path(request.raw_path), headers, forwarded
                )
            else:
                url = URL(
                    self.settings.upstream_url.rstrip("/") + upstream_raw_path(request.raw_path),
                    encoded=True,
                )
                answer = await self.session.request(
                    request.method, url, data=forwarded, headers=headers, allow_redirects=False
                )
        except TimeoutError:
            self.metrics.upstream_errors.labels("timeout").inc()
            self.relay.student_failed(call)
            return self.relay.answer(call, upstream_timeout())
        except (aiohttp.ClientError, upstream.UpstreamError) as exc:
            self.metrics.upstream_errors.labels("connect").inc()
            self.relay.student_failed(call)
            log.warning("upstream unreachable: %s", exc)
            return self.relay.answer(call, upstream_failed(exc))
        if answer.status >= 500:
            self.relay.student_failed(call)
        return await self._finish(request, answer, call)

    async def _finish(self, request: web.Request, answer: Answer, call: Call) -> web.StreamResponse:
        """The client gets the upstream's ``answer``; then the call's background call starts."""
        assert self.session is not None
        response = await self.relay.respond(request, answer, call)
        return await self.relay.after(request, response, call, self.session)

    async def _ask_student(
        self, request: web.Request, served: Serving, body: bytes, call: Call
    ) -> upstream.Response | None:
        """The student's response, or None (counted) when the teacher must answer instead."""
        assert self.session is not None
        assert self.students is not None
        outcome = await student.ask(
            self.students,
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

    def _should_record(self, request: web.Request, namespace: str | None) -> bool:
        if admission.opted_out(request.headers):
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
            self.namespaces.admit(route.namespace, self.serving.namespaces)
        if route.namespace and self.namespaces.exists(route.namespace, self.serving.namespaces):
            call.label = route.namespace  # metric labels: only namespaces that exist
        call.body = await admission.read_body(request, self.settings)
        call.record = route.record and self._should_record(request, route.namespace)
        call.call_id = feedback.new_call_id() if call.record else None
        if not route.record:
            self.metrics.unrecorded_requests.labels(routing.family(route.upstream_path)).inc()

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
        self.pool = upstream.Pool(
            s.upstream_url,
            limit=s.upstream_max_connections,
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
        )
        self.students = upstream.Pools(
            limit=s.upstream_max_connections,
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
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
        if self.pool is not None:
            await self.pool.close()
        if self.students is not None:
            await self.students.close()
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

"""Shadow and watch: the other model answers a live call in the background, and the two are compared.

Shadow: a call the teacher answered is also sent, rewritten as the student is
served (short prompt, its model), to the student. Watch: a call the student
answered is also sent, as the client sent it, to the teacher upstream with the
client's own credentials (held in memory for that one call, never stored or
logged). Either starts only once the client has its whole answer, and never
waits for a client: a namespace's calls per minute (``shadow_per_minute``) and
the proxy's calls in flight (``CURATION_BACKGROUND_CONCURRENCY``) are bounded,
and a call over either is dropped and counted, as is a comparison that cannot
wait for PostgreSQL. Chat completions and Responses API calls are both shadowed
and watched: a Responses call goes to the student's ``/responses`` and the two
Responses are compared by their output text and function calls.

The comparison is the namespace's comparator (``eval``'s exact, json or a
command; a command runs as an asyncio subprocess in its own process group,
bounded by ``eval``'s timeout and killed, group and all, when shutdown cancels
its comparison, so stopping the proxy never waits for one), and goes to
``shadow_comparison`` through ``db/shadow.py``, with the serving tallies the
rollout decider reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from curation.capture.responses import API as RESPONSES_API
from curation.capture.responses import CHAT_API
from curation.config import Settings
from curation.db.shadow import Comparison, ShadowStore
from curation.errors import CurationError, InvalidInput
from curation.evaluate import compare, live
from curation.proxy import routing, student
from curation.proxy.metrics import Metrics
from curation.proxy.serving import Serving

log = logging.getLogger("curation.shadow")

SHADOW, WATCH = "shadow", "watch"
INLINE = ("exact", "json")  # comparators fast enough to run on the event loop
CLOSE_SECONDS = 1.0  # shutdown waits this long for cancelled background calls to end


def proxy_name() -> str:
    """This proxy as the tallies name it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Job:
    """One background call to make once the client has its answer, and what to compare."""

    kind: str  # shadow | watch
    namespace: str
    call_id: str
    served: Serving
    api: str  # chat.completions | responses
    path: str  # the call's upstream path (/v1/chat/completions, /v1/responses)
    request: bytes  # the client's own body
    headers: Mapping[str, str] = field(repr=False)  # the client's: its key, in memory only
    answer: bytes  # what the client got: a completion, or the SSE stream of one
    streamed: bool
    encoding: str | None
    answer_ms: float


@dataclass(frozen=True)
class Asked:
    """The background model's answer, or why there is none, and how long it took."""

    answer: live.Answer | None
    ms: float | None
    error: str | None = None
    failed: bool = False  # the call itself failed (timeout, status, connect): the model's fault


class Background:
    """The proxy's shadow and watch calls: planned per call, bounded, compared, stored."""

    def __init__(self, settings: Settings, metrics: Metrics, url: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = ShadowStore(url, proxy_name(), on_drop=self._lost)
        self.tasks: set[asyncio.Task[None]] = set()
        self._spent: dict[str, tuple[int, int]] = {}  # namespace -> (minute, calls made in it)
        self._told: set[tuple[str, str]] = set()  # (namespace, comparator) already logged

    def plan(self, served: Serving, *, rewritten: bool, fallback: bool, api: str) -> str | None:
        """Whether this call gets a background call, and which kind (the per-call dice)."""
        if api not in (CHAT_API, RESPONSES_API):
            return None
        if rewritten:
            return WATCH if served.watch() else None
        return SHADOW if not fallback and served.shadow() else None

    def tally(self, namespace: str, what: str) -> None:
        self.store.count(namespace, what, time.time())

    def launch(self, session: aiohttp.ClientSession, job: Job) -> None:
        """Start ``job`` now (the client has its answer), or drop it over a bound."""
        reason = self._over(job)
        if reason is not None:
            self.metrics.background_dropped.labels(job.namespace, reason).inc()
            self.tally(job.namespace, "background_dropped")
            return
        self.tally(job.namespace, "background_calls")
        task = asyncio.create_task(self._run(session, job), name=f"curation-{job.kind}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _over(self, job: Job) -> str | None:
        minute = int(time.time() // 60)
        start, used = self._spent.get(job.namespace, (minute, 0))
        used = used if start == minute else 0
        if used >= job.served.per_minute:
            return "budget"
        if len(self.tasks) >= self.settings.background_concurrency:
            return "concurrency"
        self._spent[job.namespace] = (minute, used + 1)
        return None

    def start(self) -> None:
        self.store.start()

    async def close(self) -> None:
        """Cancel the calls in flight (they are telemetry) and flush what is stored."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=CLOSE_SECONDS)
        await self.store.stop()

    # -- one background call ------------------------------------------

    async def _run(self, session: aiohttp.ClientSession, job: Job) -> None:
        try:
            await self._compare_one(session, job)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not vanish as a never-retrieved task exception
            log.exception("%s: a %s comparison failed", job.namespace, job.kind)

    async def _compare_one(self, session: aiohttp.ClientSession, job: Job) -> None:
        launched = time.monotonic()  # the comparison counts in the stage it was launched in
        try:
            known: live.Answer | None = live.answer_of(
                job.answer, job.streamed, job.encoding, api=job.api
            )
        except live.NoAnswer as exc:
            known, asked = None, Asked(None, None, f"the client's answer: {exc}")
        else:
            asked = await self._ask(session, job)
        agreed, error = None, asked.error
        if known is not None and asked.answer is not None:
            teacher, pupil = (known, asked.answer) if job.kind == SHADOW else (asked.answer, known)
            agreed, error = await self._agree(job.namespace, job.served.compare, teacher, pupil)
        self._store(job, known, asked, agreed, error, launched)

    async def _ask(self, session: aiohttp.ClientSession, job: Job) -> Asked:
        url, headers, body = self._request(job)
        if body is None:
            return Asked(None, None, f"the call is not a {job.api} request")
        timeout = self.settings.background_timeout
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    data = await response.read()
        except TimeoutError:
            return Asked(None, None, f"timeout: no answer within {timeout:g}s", failed=True)
        except aiohttp.ClientError as exc:
            return Asked(None, None, f"connect: {type(exc).__name__}", failed=True)
        ms = (time.perf_counter() - t0) * 1000
        if not 200 <= response.status < 300:
            return Asked(None, ms, f"status {response.status}", failed=True)
        try:
            answer = live.answer_of(
                data, encoding=response.headers.get("Content-Encoding"), api=job.api
            )
        except live.NoAnswer as exc:
            return Asked(None, ms, str(exc))
        return Asked(answer, ms)

    def _request(self, job: Job) -> tuple[str, CIMultiDict[str], bytes | None]:
        """Where the background call goes, with which headers, and its body."""
        served = job.served
        if job.kind == SHADOW and served.endpoint:
            url = student.chat_url(served.endpoint, job.path.removeprefix("/v1"))
            headers = CIMultiDict(student.request_headers({}, served.api_key))
        else:  # the teacher, or a student served by the upstream: the client's credentials
            url = self.settings.upstream_url.rstrip("/") + job.path
            key = self.settings.openai_api_key if self.settings.proxy_keys else None
            headers = routing.upstream_headers(job.headers, key)
            for name in ("Content-Length", "Content-Encoding"):
                headers.popall(name, None)
            headers["Accept"], headers["Accept-Encoding"] = "application/json", "identity"
        if job.kind == SHADOW:
            return (
                url,
                headers,
                live.background_body(job.request, served.model, served.short_prompt, job.api),
            )
        return url, headers, live.background_body(job.request, api=job.api)

    async def _agree(
        self, namespace: str, name: str | None, teacher: live.Answer, pupil: live.Answer
    ) -> tuple[bool | None, str | None]:
        """The comparator's verdict, or (None, why) when it cannot give one."""
        name = name or "exact"
        try:
            comparator = compare.resolve(name)  # a bad name raises here
            if name in INLINE:
                return live.agree(comparator, teacher, pupil), None
            return await run_command(name, live.command_input(teacher, pupil)), None
        except live.NoAnswer as exc:
            return None, str(exc)
        except CurationError as exc:
            if (namespace, name) not in self._told:
                self._told.add((namespace, name))
                log.error("%s: the comparator cannot compare live answers: %s", namespace, exc)
            return None, f"comparator: {exc}"

    def _store(
        self,
        job: Job,
        known: live.Answer | None,
        asked: Asked,
        agreed: bool | None,
        error: str | None,
        launched: float,
    ) -> None:
        result = "error" if agreed is None else ("agree" if agreed else "disagree")
        self.metrics.comparisons.labels(job.namespace, job.kind, result).inc()
        teacher, pupil = (known, asked.answer) if job.kind == SHADOW else (asked.answer, known)
        teacher_ms, student_ms = (
            (job.answer_ms, asked.ms) if job.kind == SHADOW else (asked.ms, job.answer_ms)
        )
        if agreed is not None:
            for who, ms in (("teacher", teacher_ms), ("student", student_ms)):
                if ms is not None:
                    self.metrics.comparison_latency.labels(job.namespace, who).observe(ms / 1000)
        stored = self.store.add(
            Comparison(
                call_id=job.call_id,
                namespace=job.namespace,
                kind=job.kind,
                teacher_model=teacher.model if teacher else None,
                student_model=job.served.model,  # the rollout's model, not the dated name it answers as
                teacher_answer=teacher.message if teacher else None,
                student_answer=pupil.message if pupil else None,
                agreed=agreed,
                error=error,
                call_failed=asked.failed,
                launched=launched,
                teacher_ms=teacher_ms,
                student_ms=student_ms,
                teacher_prompt_tokens=teacher.prompt_tokens if teacher else None,
                teacher_completion_tokens=teacher.completion_tokens if teacher else None,
                student_prompt_tokens=pupil.prompt_tokens if pupil else None,
                student_completion_tokens=pupil.completion_tokens if pupil else None,
            )
        )
        if not stored:
            self._lost(job.namespace, 1, "queue")

    def _lost(self, namespace: str, n: int, reason: str = "database") -> None:
        self.metrics.background_dropped.labels(namespace, reason).inc(n)


async def run_command(cmd: str, payload: bytes, timeout: float = compare.COMMAND_TIMEOUT) -> bool:
    """A command comparator as ``eval`` runs it (``compare.command``: the answers on stdin,
    exit 0 a match), without a thread: cancelled, it kills its process group at once."""
    proc = await asyncio.create_subprocess_shell(
        cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            stderr = await _talk(proc, payload)
    except TimeoutError:
        raise InvalidInput(f"{cmd!r} ran past {timeout:g}s on one call; make it faster") from None
    finally:
        if proc.returncode is None:  # timed out, or cancelled by shutdown
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    code = await proc.wait()  # already ended: its exit code
    return compare.verdict(cmd, code, stderr.decode("utf-8", "replace"))


async def _talk(proc: asyncio.subprocess.Process, payload: bytes) -> bytes:
    """Write ``payload`` to the command while reading its stderr (as ``communicate`` does, so
    neither pipe can fill and stall it), then wait for its end."""
    assert proc.stdin is not None and proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        # a command may end without reading its input (uvloop then says the pipe is closed)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            stdin.write(payload)
            await stdin.drain()
            stdin.close()

    stderr, _ = await asyncio.gather(proc.stderr.read(), feed())
    await proc.wait()
    return stderr

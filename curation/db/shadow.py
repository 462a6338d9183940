"""Writing live comparisons and serving tallies from the proxy: telemetry, bounded, lossy.

A comparison (proxy/shadow.py) waits in a bounded queue in memory and goes to
PostgreSQL with the others every couple of seconds; the serving tallies are
added up in memory per namespace and 10-second bucket and upserted as increments
at the same pace, so any number of proxies add to the same bucket. Nothing here is on
a client's path: a full queue drops the new comparison, PostgreSQL away drops
the batch (both told to ``on_drop`` and logged once per outage), and tallies
wait for the next flush (the rollout decider reads them; they are small).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from curation.db import queries
from curation.db.capture import AsyncConnection
from curation.db.errors import CONNECTION_ERRORS, wrap_errors
from curation.errors import DatabaseUnavailable

log = logging.getLogger("curation.shadow")

TALLIES = ("student_calls", "student_failures", "background_calls", "background_dropped")
FLUSH_SECONDS = 2.0
MAX_QUEUE = 10_000  # comparisons waiting for PostgreSQL; more are dropped
BUCKET_SECONDS = 10  # serving_tally's granularity (rollout.sql's error window)
KEEP_TALLY_MINUTES = 15  # tallies PostgreSQL could not take are kept this long, then dropped


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One row of shadow_comparison: both answers to one client call, and whether they agree."""

    call_id: str
    namespace: str
    kind: str  # shadow | watch
    teacher_model: str | None
    student_model: str
    teacher_answer: dict[str, Any] | None
    student_answer: dict[str, Any] | None
    agreed: bool | None
    error: str | None
    teacher_ms: float | None
    student_ms: float | None
    teacher_prompt_tokens: int | None = None
    teacher_completion_tokens: int | None = None
    student_prompt_tokens: int | None = None
    student_completion_tokens: int | None = None
    call_failed: bool = False  # the background call failed: timeout, status, connect
    launched: float | None = None  # time.monotonic() when the background call started

    def params(self) -> dict[str, Any]:
        """The row; created_at is the launch: the database's now() less the age this proxy
        measured on its monotonic clock (no clock skew between proxy and database)."""
        out = asdict(self)
        age = 0.0 if self.launched is None else time.monotonic() - self.launched
        out["age_s"] = max(0.0, age)
        for key in ("teacher_answer", "student_answer"):
            if out[key] is not None:  # json takes \u0000, but the curator's jsonb views do not
                out[key] = orjson.dumps(out[key]).decode().replace("\\u0000", "\\ufffd")
        return out


def bucket_of(now: float) -> datetime:
    """The tally bucket ``now`` falls in: short, so an error window starts near its stage."""
    return datetime.fromtimestamp(now // BUCKET_SECONDS * BUCKET_SECONDS, UTC)


class ShadowStore:
    """The proxy's telemetry writer: ``add`` and ``count`` never wait; a task flushes."""

    def __init__(
        self,
        url: str,
        proxy: str,
        *,
        on_drop: Callable[[str, int], None] = lambda namespace, n: None,
        max_queue: int = MAX_QUEUE,
        interval: float = FLUSH_SECONDS,
    ) -> None:
        self.url = url
        self.proxy = proxy
        self.on_drop = on_drop
        self.max_queue = max_queue
        self.interval = interval
        self.queue: list[Comparison] = []
        self.tallies: dict[tuple[str, datetime], Counter[str]] = {}
        self.database_ok = True
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, comparison: Comparison) -> bool:
        """Queue ``comparison`` for the next flush; False (dropped) when the queue is full."""
        if len(self.queue) >= self.max_queue:
            return False
        self.queue.append(comparison)
        return True

    def count(self, namespace: str, what: str, now: float, n: int = 1) -> None:
        """Add ``n`` to this bucket's tally ``what`` (one of ``TALLIES``) of ``namespace``."""
        self.tallies.setdefault((namespace, bucket_of(now)), Counter())[what] += n

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-shadow-store")

    async def stop(self, last_flush: float = 2.0) -> None:
        """Stop flushing; what is waiting gets one last flush of at most ``last_flush`` s."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(last_flush):
                await self.flush()
        await self._disconnect()

    async def _disconnect(self) -> None:
        closing, self._conn = self._conn, None
        if closing is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await closing.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Write the tallies and the queued comparisons; PostgreSQL away: see the module."""
        tallies, self.tallies = self.tallies, {}
        batch, self.queue = self.queue, []
        if not tallies and not batch:
            return
        try:
            with wrap_errors():
                conn = await self._connect()
                if tallies:
                    await self._write_tallies(conn, tallies)
                    tallies = {}
                if batch:
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            queries.get("shadow_insert"), [c.params() for c in batch]
                        )
        except DatabaseUnavailable as exc:
            await self._disconnect()
            self._lost(exc, tallies, batch)
            return
        except asyncio.CancelledError:  # shutdown mid-flush: stop()'s last flush takes them
            self._put_back(tallies, batch)
            await self._disconnect()  # cut mid-statement: the next flush starts a new session
            raise
        if not self.database_ok:
            log.info("shadow comparisons are written to PostgreSQL again")
        self.database_ok = True

    async def _connect(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5, row_factory=dict_row
            )
            await self._conn.execute(queries.get("shadow_session"))
        return self._conn

    async def _write_tallies(
        self, conn: AsyncConnection, tallies: dict[tuple[str, datetime], Counter[str]]
    ) -> None:
        rows = [
            {"namespace": ns, "proxy": self.proxy, "bucket": bucket}
            | {what: counts[what] for what in TALLIES}
            for (ns, bucket), counts in sorted(tallies.items())
        ]
        async with conn.cursor() as cur, conn.transaction():
            await cur.executemany(queries.get("serving_tally_add"), rows)

    def _put_back(
        self, tallies: dict[tuple[str, datetime], Counter[str]], batch: list[Comparison]
    ) -> None:
        """What a cancelled flush had not written goes back before what came since. A
        statement cancelled in flight may have been committed: a tally counted twice, or a
        comparison written twice, is the price of not losing them."""
        for key, counts in tallies.items():
            self.tallies.setdefault(key, Counter()).update(counts)
        self.queue[:0] = batch[: max(0, self.max_queue - len(self.queue))]

    def _lost(
        self,
        exc: Exception,
        tallies: dict[tuple[str, datetime], Counter[str]],
        dropped: list[Comparison],
    ) -> None:
        if self.database_ok:
            log.warning("shadow comparisons are dropped while PostgreSQL cannot take them: %s", exc)
        self.database_ok = False
        oldest = bucket_of(datetime.now(UTC).timestamp() - KEEP_TALLY_MINUTES * 60)
        for key, counts in tallies.items():
            if key[1] >= oldest:
                self.tallies.setdefault(key, Counter()).update(counts)
        for namespace, n in Counter(c.namespace for c in dropped).items():
            self.on_drop(namespace, n)

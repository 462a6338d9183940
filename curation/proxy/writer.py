"""The background writer: spool -> rows -> PostgreSQL, in batches, exactly once.

It runs as a task on the proxy's event loop and yields between small slices
of work, so parsing never holds up a request for long. PostgreSQL down:
it retries with backoff while the spool grows. A batch PostgreSQL refuses
for its data is retried row by row; rows it still refuses go to
``rejected.jsonl`` in the spool directory (kept, counted, logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import psycopg

from curation.capture import row as capture_row
from curation.db import capture as db
from curation.proxy.metrics import Metrics
from curation.proxy.spool import Frame, Position, Spool

log = logging.getLogger("curation.writer")

BATCH_FRAMES = 1000
BATCH_BYTES = 16 << 20
SLICE = 16
LINGER = 0.05  # group commit: after a wake-up, let a batch fill for this long
# A failure on a connection that is still healthy is the data's fault (retry
# row by row); one that broke the connection means PostgreSQL is away (retry later).
ConnectionErrors = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


class Writer:
    def __init__(self, spool: Spool, url: str, metrics: Metrics) -> None:
        self.spool = spool
        self.url = url
        self.metrics = metrics
        self.known_namespaces: set[str] | None = None
        self.database_ok = False
        self.committed_frames = 0
        self._conn: db.AsyncConnection | None = None
        self._committed = Position(0, 0)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.1
        self._fresh_connection = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-writer")

    def wake(self) -> None:
        self._wake.set()

    @property
    def backlog(self) -> int:
        return max(0, self.spool.appended - self.committed_frames)

    async def stop(self, timeout: float) -> bool:
        """Flush what is spooled (up to ``timeout``); True when nothing is left."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            log.warning(
                "writer stopped with records still in the spool; they are replayed on start"
            )
        if self._conn is not None:
            await self._conn.close()
        return self._task.done() and not self._task.cancelled()

    # -- the loop --------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._conn is None and not await self._connect():
                if self._stopping:
                    return
                continue
            frames = await self._read_batch()
            end = self.spool.read_position
            if not frames and end == self._committed:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                if not self._stopping:
                    await asyncio.sleep(LINGER)
                continue
            rows = await self._build(frames)
            if not await self.commit(rows, end):
                return  # stopping while PostgreSQL is down: the spool keeps the rest
            self._committed = end
            self.committed_frames += len(frames)
            self.spool.release(end)

    async def _read_batch(self) -> list[Frame]:
        """Up to a batch of frames, read in slices so requests are never held up for long."""
        frames: list[Frame] = []
        while len(frames) < BATCH_FRAMES:
            got = self.spool.read(SLICE, BATCH_BYTES)
            frames += got
            if len(got) < SLICE:
                break
            await asyncio.sleep(0)
        return frames

    async def _connect(self) -> bool:
        try:
            conn = await db.connect(self.url)
            checkpoint = await db.checkpoint(conn, self.spool.id)
            self.known_namespaces = await db.namespaces(conn)
        except ConnectionErrors as exc:
            self._down(exc)
            await self._sleep()
            return False
        self._conn = conn
        self._fresh_connection = True
        if checkpoint:
            self.spool.seek(Position(*checkpoint))
            self._committed = max(self._committed, Position(*checkpoint))
        self._up()
        return True

    async def _build(self, frames: Sequence[Frame]) -> list[capture_row.Row]:
        rows = []
        for i, frame in enumerate(frames):
            try:
                capture = capture_row.Capture.from_meta(frame.meta, frame.request, frame.response)
                rows.append(capture_row.build(capture))
            except (capture_row.Unrecordable, KeyError, TypeError, ValueError, OSError) as exc:
                self.metrics.unrecorded.labels("unrecordable").inc()
                self._reject(frame, f"unrecordable: {exc}")
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        return rows

    async def commit(self, rows: list[capture_row.Row], end: Position) -> bool:
        """Write ``rows`` and move the checkpoint to ``end``; False if stopped first."""
        while True:
            conn = self._conn
            if conn is None:
                if self._stopping:
                    return False
                await self._connect()
                continue
            try:
                if self._fresh_connection:  # a commit whose ack was lost shows here
                    checkpoint = await db.checkpoint(conn, self.spool.id)
                    self._fresh_connection = False
                    if checkpoint and Position(*checkpoint) >= end:
                        return True
                try:
                    await self._write(conn, rows, end)
                except psycopg.Error:
                    if conn.broken or conn.closed:
                        raise
                    await self._write_one_by_one(conn, rows, end)
                self.metrics.rows_written.inc(len(rows))
                self._up()
                return True
            except (*ConnectionErrors, psycopg.Error) as exc:
                self.metrics.write_errors.inc()
                self._down(exc)
                await self._close()
                if self._stopping:
                    return False
                await self._sleep()

    async def _write(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row], end: Position
    ) -> None:
        async with conn.transaction():
            await self._ensure_namespaces(conn, rows)
            if rows:
                await db.insert_rows(conn, rows)
            await db.set_checkpoint(conn, self.spool.id, end.segment, end.offset, len(rows))
        self.known_namespaces = (self.known_namespaces or set()) | {r.namespace for r in rows}

    async def _write_one_by_one(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row], end: Position
    ) -> None:
        self.metrics.write_errors.inc()
        async with conn.transaction():
            await self._ensure_namespaces(conn, rows)
            for r in rows:
                try:
                    async with conn.transaction():
                        await db.insert_rows(conn, [r], clear=True)
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        raise
                    self.metrics.rejected.inc()
                    self._reject_row(r, str(exc).splitlines()[0])
            await db.set_checkpoint(conn, self.spool.id, end.segment, end.offset, len(rows))

    async def _ensure_namespaces(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row]
    ) -> None:
        missing = {r.namespace for r in rows} - (self.known_namespaces or set())
        if missing:
            await db.create_namespaces(conn, missing)

    # -- state -----------------------------------------------------------

    def _up(self) -> None:
        if not self.database_ok:
            log.info("writer connected to PostgreSQL")
        self.database_ok = True
        self.metrics.database_up.set(1)
        self._backoff = 0.1

    def _down(self, exc: BaseException) -> None:
        if self.database_ok or self._backoff <= 0.1:
            log.error(
                "writer cannot reach PostgreSQL; captures stay in the spool: %s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
        self.database_ok = False
        self.metrics.database_up.set(0)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*ConnectionErrors):
                await conn.close()

    async def _sleep(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 5.0)

    def _reject(self, frame: Frame, reason: str) -> None:
        self._append_rejected(
            {
                "at": time.time(),
                "reason": reason,
                "meta": frame.meta,
                "request": frame.request.decode("utf-8", "replace"),
                "response": frame.response.decode("utf-8", "replace"),
            }
        )

    def _reject_row(self, r: capture_row.Row, reason: str) -> None:
        log.error("PostgreSQL refused a capture of namespace %s: %s", r.namespace, reason)
        self._append_rejected({"at": time.time(), "reason": reason, "row": r.__dict__})

    def _append_rejected(self, entry: dict[str, object]) -> None:
        path: Path = self.spool.directory / "rejected.jsonl"
        with open(path, "ab") as f:
            f.write(orjson.dumps(entry, default=str) + b"\n")

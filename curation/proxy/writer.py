"""The writer: spool -> rows -> PostgreSQL, in batches, exactly once.

It runs in the recorder process (see recorder.py), off the proxy's request
path, and polls the spool. PostgreSQL down:
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
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg

from curation.capture import row as capture_row
from curation.db import capture as db
from curation.proxy.spool import Frame, Position, SpoolReader

log = logging.getLogger("curation.writer")

BATCH_FRAMES = 1000
BATCH_BYTES = 16 << 20
SLICE = 16
LINGER = 0.05  # group commit: poll the spool this often when caught up
# A failure on a connection that is still healthy is the data's fault (retry
# row by row); one that broke the connection means PostgreSQL is away (retry later).
ConnectionErrors = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


@dataclass
class Stats:
    """What the writer has done; the recorder publishes it for the proxy's /metrics."""

    database_ok: bool = False
    rows_written: int = 0
    write_errors: int = 0
    rejected: int = 0
    unrecordable: int = 0
    torn: int = 0
    committed_frames: int = 0  # in segments this proxy run appended to
    committed: tuple[int, int] = (0, 0)


class Writer:
    def __init__(
        self, spool: SpoolReader, url: str, stats: Stats | None = None, first_segment: int = 0
    ) -> None:
        self.spool = spool
        self.url = url
        self.stats = stats or Stats()
        self.first_segment = first_segment
        self.known_namespaces: set[str] | None = None
        self._conn: db.AsyncConnection | None = None
        self._committed = Position(0, 0)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.1
        self._fresh_connection = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-writer")

    @property
    def database_ok(self) -> bool:
        return self.stats.database_ok

    async def stop(self, timeout: float) -> bool:
        """Flush what is spooled (up to ``timeout``); True when nothing is left."""
        self._stopping = True
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
                await asyncio.sleep(LINGER)  # group commit: let a batch gather
                continue
            rows = await self._build(frames)
            if not await self.commit(rows, end):
                return  # stopping while PostgreSQL is down: the spool keeps the rest
            self._committed = end
            self.stats.committed = (end.segment, end.offset)
            self.stats.committed_frames += sum(1 for f in frames if f.segment >= self.first_segment)
            self.stats.torn = self.spool.torn
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
                self.stats.unrecordable += 1
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
                self.stats.rows_written += len(rows)
                self._up()
                return True
            except (*ConnectionErrors, psycopg.Error) as exc:
                self.stats.write_errors += 1
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
        self.stats.write_errors += 1
        async with conn.transaction():
            await self._ensure_namespaces(conn, rows)
            for r in rows:
                try:
                    async with conn.transaction():
                        await db.insert_rows(conn, [r], clear=True)
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        raise
                    self.stats.rejected += 1
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
        if not self.stats.database_ok:
            log.info("writer connected to PostgreSQL")
        self.stats.database_ok = True
        self._backoff = 0.1

    def _down(self, exc: BaseException) -> None:
        if self.stats.database_ok or self._backoff <= 0.1:
            log.error(
                "writer cannot reach PostgreSQL; captures stay in the spool: %s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
        self.stats.database_ok = False

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

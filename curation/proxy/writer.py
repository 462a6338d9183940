"""The writer: spool -> rows -> PostgreSQL, in batches, exactly once.

It runs in the recorder process (see recorder.py), off the proxy's request
path, and polls the spool. PostgreSQL down:
it retries with backoff while the spool grows. A batch PostgreSQL refuses
for its data is retried row by row; rows it still refuses go to
``rejected.jsonl`` in the spool directory (kept, counted, logged). So does a
frame that cannot become a row, whatever the reason: one capture never
stops the ones after it (see also quarantine.py).

The writer shows the supervisor (recorder.py) that it is alive but slow:
``parsed`` counts the frames it has parsed, and ``in_database_since`` is set
while it waits on PostgreSQL (connecting or writing a batch). A recorder
waiting there is reported as not progressing but never killed: its
replacement would only send the same batch again, so a slow but healthy
database cannot cause an endless kill loop. Missing namespaces are created in
a short transaction of their own before the batch's (creating one takes
locks that would otherwise block every other proxy's writer for the whole
batch); the batch itself still moves the checkpoint in its own transaction,
so rows stay exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from curation.capture import row as capture_row
from curation.db import capture as db
from curation.errors import DatabaseUnavailable, RowRefused
from curation.proxy.quarantine import REJECTED, Note, SetAside, Span
from curation.proxy.spool import Frame, Position
from curation.proxy.spool_reader import SpoolReader

log = logging.getLogger("curation.writer")

BATCH_FRAMES = 1000
BATCH_BYTES = 16 << 20
SLICE = 64  # frames read, or built, between two yields to the event loop
LINGER = 0.05  # group commit: poll the spool this often when caught up


@dataclass(kw_only=True)
class Stats:
    """What the writer has done; the recorder publishes it for the proxy's /metrics."""

    database_ok: bool = False
    rows_written: int = 0
    write_errors: int = 0
    rejected: int = 0
    unrecordable: int = 0
    torn: int = 0
    committed: tuple[int, int] = (0, 0)
    parsed: int = 0  # frames parsed by this process: progress short of a commit
    in_database_since: float = 0.0  # waiting on PostgreSQL since (wall clock); 0: not


class Writer:
    def __init__(
        self,
        spool: SpoolReader,
        url: str,
        stats: Stats | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.spool = spool
        self.url = url
        self.stats = stats or Stats()
        self.on_commit = on_commit or (lambda: None)
        self.note = Note(spool.directory)
        self._suspect = self.note.load()
        self.set_aside = SetAside(spool.directory)
        self.known_namespaces: set[str] | None = None
        self._conn: db.AsyncConnection | None = None
        self._committed = Position(0, 0)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.1
        self._fresh_connection = False
        self._torn_seen = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-writer")

    @property
    def database_ok(self) -> bool:
        return self.stats.database_ok

    @property
    def failure(self) -> BaseException | None:
        """What ended the writer's loop when it ended by itself (a bug): the recorder exits."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def stop(self, timeout: float) -> bool:
        """Flush what is spooled (up to ``timeout``); True when nothing is left."""
        self._stopping = True
        if self._task is None:
            return True
        await asyncio.wait({self._task}, timeout=timeout)  # its failure is ``failure``'s
        if not self._task.done():
            self._task.cancel()
            log.warning(
                "writer stopped with records still in the spool; they are replayed on start"
            )
        await self._close()
        return self._task.done() and not self._task.cancelled() and self.failure is None

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
            self.stats.torn += self.spool.torn - self._torn_seen
            self._torn_seen = self.spool.torn
            self.set_aside.committed()
            self.on_commit()
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
            with self._in_database():
                conn, checkpoint, self.known_namespaces = await db.open_writer(
                    self.url, self.spool.id
                )
        except DatabaseUnavailable as exc:
            self._down(exc)
            await self._sleep()
            return False
        self._conn = conn
        self._fresh_connection = True
        if checkpoint:
            self.spool.seek(Position(*checkpoint))
            self._committed = max(self._committed, Position(*checkpoint))
            self.stats.committed = (self._committed.segment, self._committed.offset)
        self._up()
        return True

    async def _build(self, frames: Sequence[Frame]) -> list[capture_row.Row]:
        """The rows of ``frames``; a frame that cannot be one is set aside, never raised."""
        if not frames:
            return []
        careful = self._suspect is not None and frames[0].position < self._suspect.end
        if not careful:
            self._suspect = None
            self.note.write(Span(frames[0].position, frames[-1].end))
        rows = []
        set_aside = self.set_aside.positions
        for i, frame in enumerate(frames):
            if set_aside and frame.position in set_aside:
                built = None  # set aside before a restart: never parsed again
            else:
                built = self._build_alone(frame) if careful else self._build_one(frame)
            self.stats.parsed += 1
            if built is not None:
                rows.append(built)
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        self.note.clear()
        return rows

    def _build_alone(self, frame: Frame) -> capture_row.Row | None:
        """After a death while parsing: one frame at a time, the one it died on twice set aside."""
        suspect = self._suspect
        if suspect is None or frame.position >= suspect.end:
            return self._build_one(frame)
        if suspect.frame == frame.position:
            self._unrecordable(frame, "the recorder died twice while parsing it; not parsed again")
            return None
        self.note.write(Span(suspect.start, suspect.end, frame.position, time.time()))
        return self._build_one(frame)

    def _build_one(self, frame: Frame) -> capture_row.Row | None:
        try:
            capture = capture_row.Capture.from_meta(frame.meta, frame.request, frame.response)
            return capture_row.build(capture)
        except capture_row.Unrecordable as exc:
            self._unrecordable(frame, str(exc))
        except Exception as exc:  # a parsing bug costs this capture, never the ones after it
            self._unrecordable(frame, f"capture parsing failed with {type(exc).__name__}")
        return None

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
                with self._in_database():
                    if self._fresh_connection:  # a commit whose ack was lost shows here
                        checkpoint = await db.checkpoint(conn, self.spool.id)
                        self._fresh_connection = False
                        if checkpoint and Position(*checkpoint) >= end:
                            return True
                    try:
                        await self._write(conn, rows, end)
                        written = len(rows)
                    except RowRefused:  # PostgreSQL refused, or psycopg could not send, a value
                        written = await self._write_one_by_one(conn, rows, end)
                self.stats.rows_written += written
                self._up()
                return True
            except DatabaseUnavailable as exc:  # PostgreSQL is away: the spool keeps the batch
                self.stats.write_errors += 1
                self._down(exc)
                await self._close()
                if self._stopping:
                    return False
                await self._sleep()

    async def _write(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row], end: Position
    ) -> None:
        await self._ensure_namespaces(conn, rows)  # committed on its own: short locks
        await db.write_batch(conn, self.spool.id, rows, end.segment, end.offset)

    async def _write_one_by_one(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row], end: Position
    ) -> int:
        """Each row in a savepoint of its own; those refused go to rejected.jsonl. How many went in."""
        self.stats.write_errors += 1
        count, written = await db.write_each(
            conn, self.spool.id, rows, end.segment, end.offset, self._refused
        )
        self.known_namespaces = (self.known_namespaces or set()) | written
        return count

    async def _ensure_namespaces(
        self, conn: db.AsyncConnection, rows: Sequence[capture_row.Row]
    ) -> None:
        missing = {r.namespace for r in rows} - (self.known_namespaces or set())
        if missing:
            await db.ensure_namespaces(conn, missing)
            self.known_namespaces = (self.known_namespaces or set()) | missing

    @contextlib.contextmanager
    def _in_database(self) -> Iterator[None]:
        """Mark a wait on PostgreSQL: the supervisor does not take it for a stall."""
        self.stats.in_database_since = time.time()
        try:
            yield
        finally:
            self.stats.in_database_since = 0.0

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
            await db.close(conn)

    async def _sleep(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 5.0)

    def _unrecordable(self, frame: Frame, reason: str) -> None:
        """Keep a frame that cannot be a row aside: counted, logged once (never its body)."""
        if frame.position in self.set_aside.positions:
            return  # set aside before a restart: already kept, counted and logged
        self.set_aside.pending(frame.position)
        self._append_rejected(
            {
                "at": time.time(),
                "reason": f"unrecordable: {reason}",
                "spool": self.spool.id,
                "position": [frame.segment, frame.offset],
                "meta": frame.meta,
                "request": frame.request.decode("utf-8", "replace"),
                "response": frame.response.decode("utf-8", "replace"),
            }
        )
        self.set_aside.add(frame.position)
        self.stats.unrecordable += 1  # one entry, one count, one log line
        namespace = frame.meta.get("ns")
        shown = namespace[:60] if isinstance(namespace, str) else "?"
        log.error(
            "capture of namespace %s not recorded: %s (kept in rejected.jsonl)",
            shown,
            reason,
            extra={"namespace": shown, "reason": reason},
        )
        self.on_commit()  # published now: a kill before the commit keeps the count

    def _refused(self, r: capture_row.Row, exc: RowRefused) -> None:
        self.stats.rejected += 1
        self._reject_row(r, str(exc))

    def _reject_row(self, r: capture_row.Row, reason: str) -> None:
        log.error("PostgreSQL refused a capture of namespace %s: %s", r.namespace, reason)
        self._append_rejected({"at": time.time(), "reason": reason, "row": r.__dict__})

    def _append_rejected(self, entry: dict[str, object]) -> None:
        path: Path = self.spool.directory / REJECTED
        try:  # full bodies: readable by the owner only, like the spool segments
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "ab") as f:
                f.write(orjson.dumps(entry, default=str) + b"\n")
        except OSError as exc:  # counted and logged all the same; the writer goes on
            log.error("could not keep a capture in %s: %s", path, exc)

"""A local, append-only spool: every capture is on disk before it is queued.

Layout: ``<dir>/id`` (this spool's uuid), ``<dir>/.lock`` (one proxy per
spool), and numbered segment files ``000000000007.seg``. A frame is::

    b"CUR1 <meta len> <request len> <response len>\\n" meta request response b"\\n"

Appends are one ``write()`` of a whole frame, so a killed process (even
kill -9) leaves at most a torn last frame in its last segment, which replay
skips. The writer reads frames in order and reports how far the database
has them (``committed``); whole segments before that are deleted. The
database keeps the same position (``spool_checkpoint``), updated in the
transaction that writes the rows, so a replay never writes a frame twice.

Over ``max_bytes`` the oldest segment is dropped (its unread frames are
counted as dropped): the proxy keeps serving, and the newest data wins.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from curation.errors import Conflict, InvalidInput

log = logging.getLogger("curation.spool")

MAGIC = b"CUR1"
SUFFIX = ".seg"
MAX_HEADER = 80


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class Frame:
    meta: dict[str, object]
    request: bytes
    response: bytes


def encode(meta: dict[str, object], request: bytes, response: bytes) -> bytes:
    meta_bytes = orjson.dumps(meta)
    header = b"%s %d %d %d\n" % (MAGIC, len(meta_bytes), len(request), len(response))
    return b"".join((header, meta_bytes, request, response, b"\n"))


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync: bool = False,
        segment_bytes: int | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes or max(64 * 1024, min(64 << 20, max_bytes // 8))
        self.on_drop = on_drop
        self.id = ""
        self.appended = 0
        self.torn = 0
        self._sizes: dict[int, int] = {}
        self._active = 0
        self._fd = -1
        self._lock_fd = -1
        self._read = Position(0, 0)
        self._reader: tuple[int, BinaryIO] | None = None

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, find old segments, start a new one for appends."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InvalidInput(
                f"spool directory {self.directory} is not writable ({exc.strerror}); "
                "set CURATION_SPOOL_DIR to a writable folder"
            ) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise Conflict(
                f"spool directory {self.directory} is in use by another proxy; "
                "give each proxy process its own CURATION_SPOOL_DIR"
            ) from exc
        id_file = self.directory / "id"
        if not id_file.exists():
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(str(uuid.uuid4()))
            tmp.replace(id_file)
        self.id = id_file.read_text().strip()
        for path in self.directory.glob("*" + SUFFIX):
            self._sizes[int(path.stem)] = path.stat().st_size
        existing = sorted(self._sizes)
        self._read = Position(existing[0] if existing else 1, 0)
        self._start_segment((existing[-1] if existing else 0) + 1)

    def close(self) -> None:
        if self._reader:
            self._reader[1].close()
            self._reader = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}{SUFFIX}"

    def _start_segment(self, segment: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = segment
        self._sizes[segment] = 0

    # -- appending (the proxy's request path) ----------------------------

    def append(self, frame: bytes) -> None:
        """Write one encoded frame; raises OSError if the disk refuses it."""
        view = memoryview(frame)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)
        self._sizes[self._active] += len(frame)
        self.appended += 1
        if self._sizes[self._active] >= self.segment_bytes:
            self._start_segment(self._active + 1)
        if self.total_bytes > self.max_bytes:
            self._drop_oldest()

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def _drop_oldest(self) -> None:
        while self.total_bytes > self.max_bytes:
            oldest = min(self._sizes)
            if oldest == self._active:
                self._start_segment(self._active + 1)
                continue
            start = self._read.offset if self._read.segment == oldest else 0
            lost = 0 if self._read.segment > oldest else self._count_frames(oldest, start)
            self._forget(oldest)
            if self._read.segment <= oldest:
                self._read = Position(oldest + 1, 0)
            log.error(
                "spool over its cap of %d bytes: dropped segment %d with %d unwritten records",
                self.max_bytes,
                oldest,
                lost,
            )
            if self.on_drop and lost:
                self.on_drop(lost)

    def _count_frames(self, segment: int, offset: int) -> int:
        count = 0
        try:
            with open(self._path(segment), "rb") as f:
                f.seek(offset)
                while (header := f.readline(MAX_HEADER)).endswith(b"\n"):
                    lengths = _lengths(header)
                    if lengths is None:
                        break
                    f.seek(sum(lengths) + 1, os.SEEK_CUR)
                    count += 1
        except FileNotFoundError:
            pass
        return count

    def _forget(self, segment: int) -> None:
        if self._reader and self._reader[0] == segment:
            self._reader[1].close()
            self._reader = None
        self._sizes.pop(segment, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(segment).unlink()

    # -- reading (the writer) --------------------------------------------

    def seek(self, position: Position | None) -> None:
        """Start reading after ``position`` (the database's checkpoint)."""
        if position is not None:
            self._read = max(self._read, position)

    @property
    def read_position(self) -> Position:
        return self._read

    def read(self, max_frames: int, max_bytes: int) -> list[Frame]:
        """The next frames in order (fewer when caught up); advances the read position."""
        frames: list[Frame] = []
        size = 0
        while len(frames) < max_frames and size < max_bytes:
            segment = self._current_segment()
            if segment is None:
                break
            frame = self._next_frame(segment)
            if frame is None:
                if segment == self._active:
                    break
                self._read = Position(segment + 1, 0)  # finished (or torn) old segment
                continue
            frames.append(frame)
            size += len(frame.request) + len(frame.response)
        return frames

    def _current_segment(self) -> int | None:
        later = [s for s in self._sizes if s >= self._read.segment]
        if not later:
            return None
        segment = min(later)
        if segment != self._read.segment:
            self._read = Position(segment, 0)
        return segment

    def _file(self, segment: int) -> BinaryIO:
        if self._reader is None or self._reader[0] != segment:
            if self._reader:
                self._reader[1].close()
            self._reader = (segment, open(self._path(segment), "rb"))  # noqa: SIM115
        return self._reader[1]

    def _next_frame(self, segment: int) -> Frame | None:
        f = self._file(segment)
        f.seek(self._read.offset)
        header = f.readline(MAX_HEADER)
        if not header:
            return None
        lengths = _lengths(header) if header.endswith(b"\n") else None
        body = f.read(sum(lengths) + 1) if lengths else b""
        if lengths is None or len(body) != sum(lengths) + 1 or not body.endswith(b"\n"):
            if segment != self._active:
                self.torn += 1
                log.warning(
                    "spool segment %d: torn or corrupt frame at byte %d skipped",
                    segment,
                    self._read.offset,
                )
            return None
        meta_len, req_len, _ = lengths
        self._read = Position(segment, self._read.offset + len(header) + len(body))
        return Frame(
            meta=orjson.loads(body[:meta_len]),
            request=body[meta_len : meta_len + req_len],
            response=body[meta_len + req_len : -1],
        )

    def release(self, committed: Position) -> None:
        """The database has everything before ``committed``: drop older segments."""
        for segment in sorted(self._sizes):
            if segment >= committed.segment or segment == self._active:
                break
            self._forget(segment)

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk not yet read by the writer (an upper bound of its backlog)."""
        done = self._read.offset if self._read.segment in self._sizes else 0
        return sum(v for k, v in self._sizes.items() if k >= self._read.segment) - done


def _lengths(header: bytes) -> tuple[int, int, int] | None:
    parts = header.split()
    if len(parts) != 4 or parts[0] != MAGIC:
        return None
    try:
        a, b, c = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    return (a, b, c) if min(a, b, c) >= 0 else None


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)

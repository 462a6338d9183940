"""A local, append-only spool: every capture is on disk before it is queued.

Layout: ``<dir>/id`` (this spool's uuid), numbered segment files
``000000000007.seg``, and two locks: ``.lock`` (the one proxy that appends)
and ``.writer.lock`` (the one recorder that reads). A frame is::

    b"CUR1 <meta len> <request len> <response len>\\n" meta request response b"\\n"

Appends are one ``write()`` of a whole frame, so a killed process (even
kill -9) leaves at most a torn last frame in its last segment, which the
reader skips. The reader takes frames in order; the database keeps its
position (``spool_checkpoint``) in the same transaction as the rows, so a
replay never writes a frame twice, and segments wholly before it are
deleted. The newest segment may still be growing: an incomplete frame there
means "not yet", anywhere else "torn".

Over ``max_bytes`` the appender drops the oldest segment (its unwritten
frames are counted as dropped): the proxy keeps serving, the newest data wins.
The count is exact: the reader holds a shared ``flock`` on the segment it
reads from and notes its position in ``read.pos`` before letting go; the
appender drops a segment only under an exclusive ``flock``, counts the frames
past that position (frames the reader took are not lost: they are written
from memory), and the reader skips a segment it finds unlinked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from curation.errors import Conflict, InvalidInput

log = logging.getLogger("curation.spool")

MAGIC = b"CUR1"
SUFFIX = ".seg"
MAX_HEADER = 80
READ_POS = "read.pos"  # the reader's position: two little-endian int64


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class Frame:
    meta: dict[str, object]
    request: bytes
    response: bytes
    segment: int = 0
    offset: int = 0  # where the frame starts in its segment
    size: int = 0  # its bytes on disk, header included

    @property
    def position(self) -> Position:
        return Position(self.segment, self.offset)

    @property
    def end(self) -> Position:
        return Position(self.segment, self.offset + self.size)


def encode(meta: dict[str, object], request: bytes, response: bytes) -> bytes:
    meta_bytes = orjson.dumps(meta)
    header = b"%s %d %d %d\n" % (MAGIC, len(meta_bytes), len(request), len(response))
    return b"".join((header, meta_bytes, request, response, b"\n"))


def _lengths(header: bytes) -> tuple[int, int, int] | None:
    parts = header.split()
    if len(parts) != 4 or parts[0] != MAGIC:
        return None
    try:
        a, b, c = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    return (a, b, c) if min(a, b, c) >= 0 else None


def segment_sizes(directory: Path) -> dict[int, int]:
    """Segment number -> size, as the directory has them now."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.endswith(SUFFIX):
                with contextlib.suppress(FileNotFoundError, ValueError):
                    found[int(entry.name[: -len(SUFFIX)])] = entry.stat().st_size
    return found


def bytes_after(sizes: dict[int, int], position: Position | None) -> int:
    """Bytes of the segments ``sizes`` past ``position`` (a reader's checkpoint)."""
    if position is None:
        return sum(sizes.values())
    later = sum(size for seg, size in sizes.items() if seg > position.segment)
    return later + max(0, sizes.get(position.segment, 0) - position.offset)


class _Directory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.id = ""
        self._lock_fd = -1

    def path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}{SUFFIX}"

    def on_disk(self) -> dict[int, int]:
        """Segment number -> size, as the directory has them now."""
        return segment_sizes(self.directory)

    def _lock(self, name: str, *, wait: float = 0.0) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InvalidInput(
                f"spool directory {self.directory} is not writable ({exc.strerror}); "
                "set CURATION_SPOOL_DIR to a writable folder"
            ) from exc
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(self._lock_fd)
                self._lock_fd = -1
                raise Conflict(
                    f"spool directory {self.directory} is in use by another proxy; "
                    "give each proxy process its own CURATION_SPOOL_DIR"
                ) from exc

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class Spool(_Directory):
    """The appending side: the proxy's request path."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync: bool = False,
        segment_bytes: int | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes or max(64 * 1024, min(64 << 20, max_bytes // 8))
        self.on_drop = on_drop
        self.appended = 0
        self.first_segment = 1
        self._sizes: dict[int, int] = {}
        self._ends: dict[int, array[int]] = {}  # where each whole frame ends, per segment
        self._active = 0
        self._fd = -1

    def open(self) -> None:
        """Lock the directory, find old segments, start a new one for appends."""
        self._lock(".lock")
        id_file = self.directory / "id"
        if not id_file.exists():
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(str(uuid.uuid4()))
            tmp.replace(id_file)
        self.id = id_file.read_text().strip()
        self._sizes = self.on_disk()
        self._ends = {segment: _frame_ends(self.path(segment)) for segment in self._sizes}
        self.first_segment = max(self._sizes, default=0) + 1
        self._start_segment(self.first_segment)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._unlock()

    def _start_segment(self, segment: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = segment
        self._sizes[segment] = 0
        self._ends[segment] = array("q")

    def append(self, frame: bytes) -> None:
        """Write one encoded frame; raises OSError if the disk refuses it (then it is
        not in the spool: a partly written frame is cut off again)."""
        before = self._sizes[self._active]
        view = memoryview(frame)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            self._cut_back(before)
            raise
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:  # the frame is written; only its durability is in doubt
                log.warning("spool fsync failed: %s", exc)
        self._sizes[self._active] += len(frame)
        self._ends[self._active].append(before + len(frame))
        self.appended += 1
        if self._sizes[self._active] >= self.segment_bytes:
            self._start_segment(self._active + 1)
        if self.total_bytes > self.max_bytes:
            self.rescan()
            self._drop_oldest()

    def _cut_back(self, size: int) -> None:
        """Remove a partly written frame, so the reader never waits on it; failing
        that, go on in a new segment (the reader skips a torn end of an old one)."""
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            with contextlib.suppress(OSError):
                self._start_segment(self._active + 1)

    def rescan(self) -> None:
        """Forget segments the reader has deleted (it owns that)."""
        disk = self.on_disk()
        self._sizes = {k: v for k, v in self._sizes.items() if k in disk or k == self._active}
        self._ends = {k: v for k, v in self._ends.items() if k in self._sizes}

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def bytes_after(self, position: Position | None) -> int:
        """Spooled bytes past ``position`` (the recorder's checkpoint): its exact backlog.
        Call ``rescan`` first to see the recorder's deletions."""
        return bytes_after(self._sizes, position)

    def frames_after(self, position: Position | None) -> int:
        """Whole frames past ``position``: the captures not yet in PostgreSQL."""
        return sum(self._frames_after(segment, position) for segment in self._ends)

    def _frames_after(self, segment: int, position: Position | None) -> int:
        ends = self._ends.get(segment, array("q"))
        if position is None or segment > position.segment:
            return len(ends)
        if segment < position.segment:
            return 0
        return len(ends) - bisect_right(ends, position.offset)

    def _drop_oldest(self) -> None:
        while self.total_bytes > self.max_bytes:
            oldest = min(self._sizes)
            if oldest == self._active:
                self._start_segment(self._active + 1)
                continue
            lost = self._drop(oldest)
            if lost is None:
                return  # the reader is in it this instant: drop it on the next append
            log.error(
                "spool over its cap of %d bytes: dropped segment %d with %d unwritten records",
                self.max_bytes,
                oldest,
                lost,
            )
            if self.on_drop and lost:
                self.on_drop(lost)

    def _drop(self, segment: int) -> int | None:
        """Delete ``segment``; the frames the reader never took from it, or None if busy."""
        try:
            fd = os.open(self.path(segment), os.O_RDONLY)
        except FileNotFoundError:  # the reader released it meanwhile
            lost = 0
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                lost = self._frames_after(segment, read_position(self.directory))
                self.path(segment).unlink()
            finally:
                os.close(fd)
        self._sizes.pop(segment, None)
        self._ends.pop(segment, None)
        return lost


def read_position(directory: Path) -> Position | None:
    """Where the reader is (None: no reader has read this spool yet)."""
    try:
        raw = (directory / READ_POS).read_bytes()
    except FileNotFoundError:
        return None
    return Position(*struct.unpack("<qq", raw)) if len(raw) == 16 else None


def _frame_ends(path: Path) -> array[int]:
    """Where each whole frame of a segment ends (up to a torn one, as the reader sees it)."""
    ends = array("q")
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while (header := f.readline(MAX_HEADER)).endswith(b"\n"):
            lengths = _lengths(header)
            if lengths is None:
                break
            end = f.seek(sum(lengths) + 1, os.SEEK_CUR)
            if end > size:
                break
            ends.append(end)
    return ends

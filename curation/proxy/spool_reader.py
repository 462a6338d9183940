"""The reading side of the spool (the recorder's): frames in order, exactly once.

The format, the locks and the appender are in spool.py. The reader holds a
shared ``flock`` on the segment it reads and notes its position in
``read.pos`` before letting go, so the appender's cap can count exactly what
it drops; it skips a segment it finds unlinked, and frames a killed writer
tore.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

import orjson

from curation.proxy.spool import (
    MAX_HEADER,
    READ_POS,
    Frame,
    Position,
    _Directory,
    _lengths,
    log,
)

CHUNK = 1 << 20  # read from a segment this much at a time
NEWLINE = ord("\n")


class SpoolReader(_Directory):
    """The reading side: the recorder, one per spool."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.torn = 0
        self._read = Position(0, 0)
        self._file: tuple[int, BinaryIO] | None = None
        self._locked = False  # a shared flock on the open segment: the appender waits
        self._pos_fd = -1
        self._buf = b""  # bytes of segment _buf_segment from offset _buf_at (see _window)
        self._buf_segment = 0
        self._buf_at = 0

    def open(self, wait: float = 30.0) -> None:
        """Take the reader lock (waiting for a previous recorder to finish) and the spool id."""
        self._lock(".writer.lock", wait=wait)
        id_file = self.directory / "id"
        deadline = time.monotonic() + wait
        while not id_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.id = id_file.read_text().strip()
        segments = self.on_disk()
        self._read = Position(min(segments, default=1), 0)
        self._pos_fd = os.open(self.directory / READ_POS, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        self._close_segment()
        if self._pos_fd >= 0:
            os.close(self._pos_fd)
            self._pos_fd = -1
        self._unlock()

    def seek(self, position: Position | None) -> None:
        """Start reading after ``position`` (the database's checkpoint)."""
        if position is not None:
            self._read = max(self._read, position)
            self._note_position()  # frames a dead reader took but never wrote count again

    def _note_position(self) -> None:
        if self._pos_fd >= 0:
            os.pwrite(self._pos_fd, struct.pack("<qq", self._read.segment, self._read.offset), 0)

    @property
    def read_position(self) -> Position:
        return self._read

    def read(self, max_frames: int, max_bytes: int) -> list[Frame]:
        """The next frames in order (fewer when caught up); advances the read position."""
        try:
            return self._read_frames(max_frames, max_bytes)
        finally:
            self._let_go()

    def _read_frames(self, max_frames: int, max_bytes: int) -> list[Frame]:
        frames: list[Frame] = []
        size = 0
        segments = sorted(self.on_disk())
        newest = segments[-1] if segments else 0
        while len(frames) < max_frames and size < max_bytes:
            later = [s for s in segments if s >= self._read.segment]
            if not later:
                break
            if later[0] != self._read.segment:
                self._read = Position(later[0], 0)
            segment = later[0]
            try:
                frame = self._next_frame(segment, growing=segment == newest)
            except FileNotFoundError:  # dropped by the appender over its cap
                segments.remove(segment)
                continue
            if frame is None:
                if segment == newest:
                    break
                self._read = Position(segment + 1, 0)  # finished (or torn) old segment
                continue
            frames.append(frame)
            size += len(frame.request) + len(frame.response)
        return frames

    def _handle(self, segment: int) -> BinaryIO:
        """The segment's file, under a shared flock; FileNotFoundError once it is dropped."""
        if self._file is None or self._file[0] != segment:
            self._close_segment()
            self._file = (segment, open(self.path(segment), "rb"))  # noqa: SIM115 - kept open across reads
        f = self._file[1]
        if not self._locked:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            self._locked = True
            if os.fstat(f.fileno()).st_nlink == 0:  # dropped over the cap (and counted)
                self._close_segment()
                raise FileNotFoundError(self.path(segment))
        return f

    def _let_go(self) -> None:
        """Note the position, then let the appender drop the segment if it must."""
        if self._locked and self._file is not None:
            self._note_position()
            fcntl.flock(self._file[1].fileno(), fcntl.LOCK_UN)
        self._locked = False

    def _close_segment(self) -> None:
        self._let_go()
        if self._file is not None:
            self._file[1].close()
            self._file = None

    def _window(self, f: BinaryIO, segment: int, start: int, need: int) -> tuple[bytes, int]:
        """Bytes of ``segment`` from ``start`` on (at least ``need`` of them where the file
        has them): the buffer and where ``start`` is in it. One ``pread`` serves many
        frames; written bytes never change, so the buffer stays true until it runs out."""
        at = start - self._buf_at
        if self._buf_segment == segment and at >= 0 and len(self._buf) - at >= need:
            return self._buf, at
        self._buf = os.pread(f.fileno(), max(CHUNK, need), start)
        self._buf_segment, self._buf_at = segment, start
        return self._buf, 0

    def _next_frame(self, segment: int, growing: bool) -> Frame | None:
        f = self._handle(segment)
        start = self._read.offset
        buf, at = self._window(f, segment, start, MAX_HEADER)
        newline = buf.find(b"\n", at, at + MAX_HEADER)
        header_end = newline + 1 if newline >= 0 else min(len(buf), at + MAX_HEADER)
        if header_end == at:
            return None  # nothing (more) there
        header = header_end - at
        lengths = _lengths(buf[at:header_end]) if newline >= 0 else None
        size = header + sum(lengths) + 1 if lengths is not None else 0
        if lengths is not None and len(buf) - at < size:
            if size > os.fstat(f.fileno()).st_size - start:
                lengths = None  # not all there (yet): never read a length a corrupt header claims
            else:
                buf, at = self._window(f, segment, start, size)
        if lengths is not None and (len(buf) - at < size or buf[at + size - 1] != NEWLINE):
            lengths = None  # torn (a killed writer's last frame), or still being written
        if lengths is None:
            if not growing:
                self.torn += 1
                log.warning(
                    "spool segment %d: torn or corrupt frame at byte %d skipped",
                    segment,
                    start,
                )
            return None
        meta_len, req_len, _ = lengths
        body = at + header  # where the metadata starts in the buffer
        self._read = Position(segment, start + size)
        return Frame(
            meta=_meta(buf[body : body + meta_len]),
            request=buf[body + meta_len : body + meta_len + req_len],
            response=buf[body + meta_len + req_len : at + size - 1],
            segment=segment,
            offset=start,
            size=size,
        )

    def release(self, committed: Position) -> None:
        """The database has everything before ``committed``: delete older segments."""
        for segment in sorted(self.on_disk()):
            if segment >= committed.segment:
                break
            if self._file and self._file[0] == segment:
                self._close_segment()
            with contextlib.suppress(FileNotFoundError):
                self.path(segment).unlink()


def _meta(raw: bytes) -> dict[str, object]:
    """A frame's metadata; damaged metadata reads as empty (the writer rejects the frame)."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}

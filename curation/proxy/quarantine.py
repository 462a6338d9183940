"""Frames the recorder died on: set aside on the next start, so none can stall the spool.

Parsing is total (``capture.shape``) and the writer rejects a frame whose
parsing raises, but a process can still die or hang while parsing (memory,
a native crash, a loop): the supervisor then restarts it, and the same frame
comes first again. So before building rows the writer notes the span of
frames it parses in ``<spool>/parsing``, and clears the note when done. A
note found on start means the last recorder died inside that span: the new
one parses the span one frame at a time, noting each, and the frame a second
death is noted on is rejected unparsed. The spool moves on either way.

Only a real death is a strike. The supervisor's own kill of a recorder
that made no progress (recorder.py) is not: after such a kill it calls
``after_stall_kill``, which keeps the note's span (the next recorder parses
it one frame at a time) but drops the frame from it, unless that one frame
had been parsing alone for the whole stall time (a hang: a strike). So a
slow machine or a slow PostgreSQL never sets a good capture aside.

A frame set aside goes to ``rejected.jsonl`` (mode 0600: it holds full
bodies) before its batch commits; its position waits in ``<spool>/set-aside``
until then, so a replay of the batch after a restart neither parses it, nor
writes it there, counts or logs it again. The position is noted as pending
(with the size of ``rejected.jsonl`` before the entry) before the entry is
appended, and confirmed after: a recorder that died in between leaves either
a whole entry (confirmed on load) or a torn one (cut off on load, and the
frame set aside again), so each frame set aside is one entry, counted once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from curation.proxy.spool import Position

log = logging.getLogger("curation.writer")

NOTE = "parsing"
SET_ASIDE = "set-aside"
REJECTED = "rejected.jsonl"


@dataclass(frozen=True)
class Span:
    start: Position
    end: Position
    frame: Position | None = None  # the one frame parsed alone, in a careful pass
    since: float = 0.0  # when that frame's parsing began (wall clock)


class Note:
    """The ``parsing`` note of a spool directory."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / NOTE

    def load(self) -> Span | None:
        """The span the last recorder died in, if it did (an unreadable note counts as none)."""
        try:
            raw = orjson.loads(self.path.read_bytes())
            frame = raw.get("frame")
            return Span(
                Position(*raw["start"]),
                Position(*raw["end"]),
                Position(*frame) if frame else None,
                float(raw.get("since") or 0.0),
            )
        except (OSError, orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            return None

    def write(self, span: Span) -> None:
        _write(
            self.path,
            {
                "start": [span.start.segment, span.start.offset],
                "end": [span.end.segment, span.end.offset],
                "frame": [span.frame.segment, span.frame.offset] if span.frame else None,
                "since": span.since,
            },
        )

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def after_stall_kill(directory: Path, stall_seconds: float) -> None:
    """The supervisor killed a recorder that made no progress: no strike against a frame,
    unless that frame alone had been parsing for ``stall_seconds`` (it hangs)."""
    note = Note(directory)
    span = note.load()
    if span is None or span.frame is None:
        return  # a batch pass: the next recorder parses its span one frame at a time
    if span.since and time.time() - span.since >= stall_seconds:
        return  # killed while parsing this one frame alone all along: a strike
    note.write(Span(span.start, span.end))


class SetAside:
    """Positions of the frames set aside in the batch not yet committed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SET_ASIDE
        self.rejected = directory / REJECTED
        self.positions: set[Position] = set()
        self._pending: dict[Position, int] = {}  # entry being appended: size before it
        with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError, ValueError):
            for segment, offset, *pending in orjson.loads(self.path.read_bytes()):
                position = Position(segment, offset)
                if pending and pending[0] is not None and not self._kept(int(pending[0])):
                    continue  # died before its entry was whole: it is set aside again
                self.positions.add(position)

    def _kept(self, size: int) -> bool:
        """Whether a whole entry follows ``size`` in rejected.jsonl (a torn one is cut off)."""
        try:
            with open(self.rejected, "r+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end > size:
                    f.seek(end - 1)
                    if f.read(1) == b"\n":
                        return True
                f.truncate(size)
        except OSError:
            pass
        return False

    def pending(self, position: Position) -> None:
        """Before the entry of ``position`` is appended to rejected.jsonl."""
        try:
            size = self.rejected.stat().st_size
        except OSError:
            size = 0
        self._pending[position] = size
        self.positions.add(position)
        self._save()

    def add(self, position: Position) -> None:
        """After its entry is appended."""
        self._pending.pop(position, None)
        self.positions.add(position)
        self._save()

    def _save(self) -> None:
        _write(
            self.path,
            sorted([p.segment, p.offset, self._pending.get(p)] for p in self.positions),
        )

    def committed(self) -> None:
        if self.positions:
            self.positions = set()
            self._pending = {}
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _write(path: Path, value: object) -> None:
    """Replace ``path`` atomically; a full disk costs the protection, never the writer."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(orjson.dumps(value))
        tmp.replace(path)
    except OSError as exc:
        log.error("could not write %s: %s", path, exc)

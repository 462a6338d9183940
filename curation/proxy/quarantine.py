"""Frames the recorder died on: set aside on the next start, so none can stall the spool.

Parsing is total (``capture.shape``) and the writer rejects a frame whose
parsing raises, but a process can still die or hang while parsing (memory,
a native crash, a loop): the supervisor then restarts it, and the same frame
comes first again. So before building rows the writer notes the span of
frames it parses in ``<spool>/parsing``, and clears the note when done. A
note found on start means the last recorder died inside that span: the new
one parses the span one frame at a time, noting each, and the frame a second
death is noted on is rejected unparsed. The spool moves on either way.

A frame set aside goes to ``rejected.jsonl`` before its batch commits; its
position waits in ``<spool>/set-aside`` until then, so a replay of the batch
after a restart neither writes it there again nor counts or logs it twice.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from curation.proxy.spool import Position

log = logging.getLogger("curation.writer")

NOTE = "parsing"
SET_ASIDE = "set-aside"


@dataclass(frozen=True)
class Span:
    start: Position
    end: Position
    frame: Position | None = None  # the one frame parsed alone, in a careful pass


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
            },
        )

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class SetAside:
    """Positions of the frames set aside in the batch not yet committed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SET_ASIDE
        self.positions: set[Position] = set()
        with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError):
            self.positions = {Position(*p) for p in orjson.loads(self.path.read_bytes())}

    def add(self, position: Position) -> None:
        self.positions.add(position)
        _write(self.path, sorted([p.segment, p.offset] for p in self.positions))

    def committed(self) -> None:
        if self.positions:
            self.positions = set()
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

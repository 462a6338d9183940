"""Where a streamed reply ends: the ``data: [DONE]`` event, found from the SSE framing. Pure.

The proxy spools a streamed capture the moment the upstream's end event is
complete, before the client has the last byte. The bytes arrive in reads cut
anywhere (inside a line, between the ``\\r`` and ``\\n`` of a line end), so
the end is found by parsing the framing as it comes: lines end with ``\\n``,
``\\r\\n`` or ``\\r``; an empty line dispatches an event; the end is an event
whose only data line is ``data: [DONE]``. The same bytes inside a payload (a
delta whose text is ``data: [DONE]``) sit inside a JSON line and are data.
Only the start of the unfinished line is kept, so memory stays bounded
whatever the upstream sends.
"""

from __future__ import annotations

DONE = b"[DONE]"
MAX_LINE = 64  # a line longer than this cannot be the end line: only its start is kept


class EndOfStream:
    """Feed the stream's bytes as they arrive; ``feed`` is true once the end event is complete."""

    def __init__(self) -> None:
        self.done = False
        self.line = b""  # the start of the unfinished line
        self._after_cr = False  # the last read ended with \r: a \n first is the same line end
        self._data_lines = 0  # data lines of the event being read
        self._says_done = False  # its one data line is [DONE]

    def feed(self, chunk: bytes) -> bool:
        if self.done or not chunk:
            return self.done
        if self._whole_events_only(chunk):
            self._after_cr = False
            return False
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        *complete, rest = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if complete:
            self._line(self.line + complete[0][: MAX_LINE + 1])
            for line in complete[1:]:
                if self.done:
                    break
                self._line(line)
            self.line = b""
        self.line = (self.line + rest[: MAX_LINE + 1])[: MAX_LINE + 1]
        return self.done

    def finish(self) -> bool:
        """The upstream closed: an unterminated last line and event still count."""
        if not self.done:
            if self.line:
                self._line(self.line)
                self.line = b""
            self._line(b"")
        return self.done

    def _whole_events_only(self, chunk: bytes) -> bool:
        """The usual read, whole events after a whole event, none of them the end: it
        leaves nothing to carry over, so its lines need not be looked at one by one."""
        return (
            not self.line
            and not self._data_lines
            and chunk.endswith(b"\n\n")
            and DONE not in chunk
            and b"\r" not in chunk
        )

    def _line(self, line: bytes) -> None:
        if not line:  # an empty line dispatches the event
            self.done = self._data_lines == 1 and self._says_done
            self._data_lines, self._says_done = 0, False
            return
        name, colon, value = line.partition(b":")
        if name != b"data":
            return  # a comment (empty name) or another field
        self._data_lines += 1
        self._says_done = bool(colon) and len(line) <= MAX_LINE and value.strip() == DONE

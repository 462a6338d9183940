"""The recorder: a child process of the proxy that writes the spool to PostgreSQL.

Parsing, stream reassembly and COPY cost CPU; in a process of its own they
use another core and never hold up a request. It shares nothing with the
proxy but the spool directory: it reads the frames, publishes what it did in
``<spool>/recorder.json`` for the proxy's /metrics and /readyz, and exits
when told (SIGTERM, after flushing) or when its parent is gone.

Proxy side: ``Recorder`` starts it, restarts it if it dies or stalls, and
stops it. Progress is a commit or a frame parsed. No progress for
``stall_seconds`` while captures wait is reported (/readyz, /metrics, the
log); the recorder is killed and restarted only when it is not waiting on
PostgreSQL (a slow INSERT or a lock wait would only start over in a new
recorder: an endless kill loop). So a kill happens only when one frame's
parsing, or the recorder's loop itself, hangs; such a deliberate kill is not
a death while parsing a batch (quarantine.after_stall_kill), so it never
sets a good capture aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from curation import config, logs
from curation.proxy import quarantine
from curation.proxy.spool import Position, bytes_after, segment_sizes
from curation.proxy.spool_reader import SpoolReader
from curation.proxy.writer import Stats, Writer

log = logging.getLogger("curation.recorder")

STATUS = "recorder.json"
PUBLISH_EVERY = 0.25
FLUSH_TIMEOUT = 10.0
STALE = 5.0  # a status older than this: the recorder's loop is not running
COUNTERS = ("rows_written", "write_errors", "rejected", "unrecordable", "torn")
URL_ENV = (
    "CURATION_RECORDER_URL"  # the URL travels in the environment, never in argv (ps shows argv)
)
NICE_ENV = "CURATION_RECORDER_NICE"


def publish(path: Path, stats: Stats) -> None:
    """Write the status file (a full disk only leaves it stale: the proxy sees that)."""
    tmp = path.with_suffix(".tmp")
    # its fields are plain values: vars() is asdict() without the deep copy (once a batch)
    status = {**vars(stats), "pid": os.getpid(), "ppid": os.getppid()}
    with contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps({**status, "at": time.time()}))
        tmp.replace(path)


def resumed(path: Path, parent: int) -> Stats:
    """The counters a previous recorder of this proxy published: they go on, not from zero."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        last = orjson.loads(path.read_bytes())
        if last.get("ppid") == parent:
            return Stats(**{k: last[k] for k in COUNTERS if isinstance(last.get(k), int)})
    return Stats()


async def run(reader: SpoolReader, url: str, parent: int) -> int:
    """Write the spool until told to stop (0), or until the writer fails (1: restart us)."""
    status = reader.directory / STATUS
    stats = resumed(status, parent)
    writer = Writer(reader, url, stats, on_commit=lambda: publish(status, stats))
    writer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        publish(status, stats)
        if os.getppid() != parent:
            log.warning("the proxy is gone; recorder flushing and stopping")
            break
        if (failure := writer.failure) is not None:
            log.error(
                "the recorder's writer stopped on %s: %s; exiting to be restarted",
                type(failure).__name__,
                str(failure).strip().splitlines()[0] if str(failure).strip() else "",
                exc_info=failure,
            )
            return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PUBLISH_EVERY)
    await writer.stop(FLUSH_TIMEOUT)
    publish(status, stats)
    return 0


def niceness(env: Mapping[str, str]) -> int:
    """The recorder's ``os.nice`` increment: CURATION_RECORDER_NICE, inherited from the
    proxy (which checked it on start), else the default; never a reason not to record."""
    raw = env.get(NICE_ENV, "")
    try:
        return int(config.within("recorder_nice", config.parse_count(raw)))
    except ValueError:
        return config.Settings.recorder_nice


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the proxy drains first, then stops us
    with contextlib.suppress(OSError):
        os.nice(niceness(os.environ))  # background work: requests first on a busy CPU
    spool_dir, parent = Path(sys.argv[1]), int(sys.argv[2])
    logs.setup(os.environ.get("CURATION_LOG_LEVEL", "INFO"))
    reader = SpoolReader(spool_dir)
    reader.open()
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        code = asyncio.run(run(reader, os.environ[URL_ENV], parent))
    finally:
        reader.close()
    sys.exit(code)


class Recorder:
    """The proxy's handle on its recorder process."""

    def __init__(self, spool_dir: Path, url: str, stall_seconds: float = 60.0) -> None:
        self.spool_dir = spool_dir
        self.url = url
        self.stall_seconds = stall_seconds
        self.restarts = 0
        self.stalled = False  # from a stall until the next progress
        self.in_database = False  # stalled while waiting on PostgreSQL: not restarted
        self._proc: subprocess.Popen[bytes] | None = None
        self._status: dict[str, Any] = {}
        self._read_at = 0.0
        self._stopping = False
        self._committed: Position | None = None
        # the committed position and frames parsed, and when they last moved
        self._progress: tuple[tuple[Position | None, object], float] = ((None, 0), 0.0)

    def start(self) -> None:
        env = {**os.environ, URL_ENV: self.url}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "curation.proxy.recorder",
                str(self.spool_dir),
                str(os.getpid()),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self._progress = ((self.committed(), None), time.monotonic())

    async def supervise(self) -> None:
        """Restart the recorder if it dies or stalls (the spool keeps what it had not written)."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._stopping or self._proc is None:
                continue
            if self._proc.poll() is not None:
                log.error("recorder exited with %s; restarting it", self._proc.returncode)
                self._restart()
            elif self._check_progress():
                log.error(
                    "recorder made no progress for %ss with %d spooled bytes waiting; restarting it",
                    self.stall_seconds,
                    self.backlog(),
                )
                self._restart(stalled=True)

    def _check_progress(self) -> bool:
        """True when the recorder has stalled and a restart can help: captures wait,
        nothing moves, PostgreSQL is up and the recorder is not waiting on it."""
        status, now = self.status(), time.monotonic()
        moved = (self.committed(), status.get("parsed"))
        waiting_for_database = self.fresh and not status.get("database_ok")
        if moved != self._progress[0] or waiting_for_database or self.backlog() == 0:
            self._progress = (moved, now)
            self.stalled = self.in_database = False
            return False
        if now - self._progress[1] < self.stall_seconds:
            return False
        since = status.get("in_database_since")
        # set by the writer: inside a call to PostgreSQL (a stale status there is no hang of ours)
        since = since if isinstance(since, float) and since > 0 else 0.0
        in_database = since > 0
        if in_database and not self.in_database:
            log.error(
                "recorder made no progress for %ss with %d spooled bytes waiting: it has been "
                "waiting on PostgreSQL for %.0fs (a slow write or a lock); not restarted",
                self.stall_seconds,
                self.backlog(),
                time.time() - since,
            )
        self.stalled, self.in_database = True, in_database
        return not in_database

    def _restart(self, stalled: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # exactly once holds across kill -9: the spool is replayed
            self._proc.wait()
        if stalled:  # our own kill: no strike against the frames it was parsing
            quarantine.after_stall_kill(self.spool_dir, self.stall_seconds)
        self.restarts += 1
        self.start()

    def backlog(self) -> int:
        """Spooled bytes past the recorder's checkpoint."""
        return bytes_after(segment_sizes(self.spool_dir), self.committed())

    async def stop(self, timeout: float = FLUSH_TIMEOUT + 5) -> None:
        self._stopping = True
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self._proc.wait, timeout)
        except subprocess.TimeoutExpired:
            log.error(
                "recorder did not stop in %ss; killed (its spool is replayed on start)", timeout
            )
            self._proc.kill()

    def status(self) -> dict[str, Any]:
        """The recorder's last published state (re-read at most every 100 ms)."""
        now = time.monotonic()
        if now - self._read_at > 0.1:
            with contextlib.suppress(OSError, ValueError):
                self._status = orjson.loads((self.spool_dir / STATUS).read_bytes())
            self._read_at = now
        return self._status

    @property
    def fresh(self) -> bool:
        """The recorder's loop published lately."""
        at = self.status().get("at")
        return isinstance(at, float) and time.time() - at < STALE

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self.fresh

    @property
    def database_ok(self) -> bool:
        return self.alive and bool(self.status().get("database_ok"))

    def committed(self) -> Position | None:
        """The spool position PostgreSQL has everything before (it never moves back, even
        while a restarted recorder has not yet read it from the database)."""
        with contextlib.suppress(TypeError, ValueError):
            published = Position(*self.status().get("committed") or ())
            if self._committed is None or published > self._committed:
                self._committed = published
        return self._committed


if __name__ == "__main__":
    main()

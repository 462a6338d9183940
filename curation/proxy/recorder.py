"""The recorder: a child process of the proxy that writes the spool to PostgreSQL.

Parsing, stream reassembly and COPY cost CPU; in a process of its own they
use another core and never hold up a request. It shares nothing with the
proxy but the spool directory: it reads the frames, publishes what it did in
``<spool>/recorder.json`` for the proxy's /metrics and /readyz, and exits
when told (SIGTERM, after flushing) or when its parent is gone.

Proxy side: ``Recorder`` starts it, restarts it if it dies, and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from curation import logs
from curation.proxy.spool import Position, SpoolReader
from curation.proxy.writer import Stats, Writer

log = logging.getLogger("curation.recorder")

STATUS = "recorder.json"
PUBLISH_EVERY = 0.25
FLUSH_TIMEOUT = 10.0
URL_ENV = (
    "CURATION_RECORDER_URL"  # the URL travels in the environment, never in argv (ps shows argv)
)


def publish(path: Path, stats: Stats) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        orjson.dumps({**dataclasses.asdict(stats), "pid": os.getpid(), "at": time.time()})
    )
    tmp.replace(path)


async def run(reader: SpoolReader, url: str, parent: int, first_segment: int) -> None:
    stats = Stats()
    writer = Writer(reader, url, stats, first_segment)
    writer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    status = reader.directory / STATUS
    while not stop.is_set():
        publish(status, stats)
        if os.getppid() != parent:
            log.warning("the proxy is gone; recorder flushing and stopping")
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PUBLISH_EVERY)
    await writer.stop(FLUSH_TIMEOUT)
    publish(status, stats)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the proxy drains first, then stops us
    with contextlib.suppress(OSError):
        os.nice(19)  # background work: the proxy's requests come first on a busy CPU
    spool_dir, parent, first_segment = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    logs.setup(os.environ.get("CURATION_LOG_LEVEL", "INFO"))
    reader = SpoolReader(spool_dir)
    reader.open()
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(run(reader, os.environ[URL_ENV], parent, first_segment))
    finally:
        reader.close()


class Recorder:
    """The proxy's handle on its recorder process."""

    def __init__(self, spool_dir: Path, url: str, first_segment: int) -> None:
        self.spool_dir = spool_dir
        self.url = url
        self.first_segment = first_segment
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._status: dict[str, Any] = {}
        self._read_at = 0.0
        self._stopping = False

    def start(self) -> None:
        env = {**os.environ, URL_ENV: self.url}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "curation.proxy.recorder",
                str(self.spool_dir),
                str(os.getpid()),
                str(self.first_segment),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )

    async def supervise(self) -> None:
        """Restart the recorder if it dies (the spool keeps what it had not written)."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._proc is not None and self._proc.poll() is not None and not self._stopping:
                log.error("recorder exited with %s; restarting it", self._proc.returncode)
                self.restarts += 1
                self.start()

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
    def alive(self) -> bool:
        at = self.status().get("at")
        return (
            self._proc is not None
            and self._proc.poll() is None
            and at is not None
            and time.time() - at < 5
        )

    @property
    def database_ok(self) -> bool:
        return self.alive and bool(self.status().get("database_ok"))

    def committed(self) -> Position | None:
        committed = self.status().get("committed")
        return Position(*committed) if committed else None


if __name__ == "__main__":
    main()

"""Several proxy processes on one port: ``curation proxy --workers N``.

One Python process forwards a few thousand calls a second; more calls need
more processes. Each worker is a whole proxy (event loop, spool, recorder)
listening on the same port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them, and they share nothing but PostgreSQL. Worker 0
spools into the spool directory itself, as a single proxy does; worker i into
``<spool>/worker-<i>``. This process only supervises: it checks the port and
migrates once, restarts a worker that dies (its new recorder replays its spool,
exactly once, as after any crash), stops the workers that outlive it, and on
SIGTERM/SIGINT tells every worker to stop and waits while each finishes its
calls and flushes its spool. /metrics and /readyz describe the worker that
takes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import re
import signal
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from curation import logs
from curation.config import Settings
from curation.errors import CurationError, InvalidInput
from curation.proxy import recorder, server

log = logging.getLogger("curation.proxy")

RESTART_DELAY = 1.0  # a worker that keeps dying is restarted at most this often
STOP_TIMEOUT = server.SHUTDOWN_TIMEOUT + recorder.FLUSH_TIMEOUT + 15
WORKER_DIR = re.compile(r"^worker-(\d+)$")


def spool_dir(root: Path, index: int) -> Path:
    return root if index == 0 else root / f"worker-{index}"


def supervise(settings: Settings, count: int) -> None:
    """Run ``count`` workers until SIGTERM/SIGINT; a start-up failure of any is raised."""
    host, port = server.parse_listen(settings.listen)
    check_free(host, port)
    server.prepare_database(settings)  # once: the workers only connect
    warn_leftovers(settings.effective_spool_dir, count)
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    workers: dict[int, tuple[BaseProcess, Connection]] = {}
    try:
        for i in range(count):
            workers[i] = _start(settings, i)
            _wait_ready(i, *workers[i], stopping)
        log.info("proxy workers listening", extra={"workers": count, "listen": settings.listen})
        while not stopping:
            _restart_dead(settings, workers)
    finally:
        _stop([process for process, _ in workers.values()])


def _start(settings: Settings, index: int) -> tuple[BaseProcess, Connection]:
    ours, theirs = multiprocessing.Pipe(duplex=False)
    # spawn: a fresh interpreter, nothing of this process's state (sockets, locks) shared
    process = multiprocessing.get_context("spawn").Process(
        target=_worker, args=(settings, index, theirs), name=f"curation-proxy-{index}"
    )
    process.start()
    theirs.close()
    return process, ours


def _wait_ready(index: int, process: BaseProcess, pipe: Connection, stopping: list[int]) -> None:
    """Wait until the worker listens (or we are told to stop); its start-up error
    (port, spool, schema) is ours."""
    while not stopping and not pipe.poll(0.2):
        pass
    if stopping:
        return
    try:
        message = pipe.recv()
    except EOFError:
        process.join()
        raise CurationError(
            f"proxy worker {index} exited with {process.exitcode} while starting; see its log"
        ) from None
    if message[0] == "error":
        process.join()
        raise CurationError(message[1], exit_code=message[2])


def _restart_dead(settings: Settings, workers: dict[int, tuple[BaseProcess, Connection]]) -> None:
    sentinels = [process.sentinel for process, _ in workers.values()]
    multiprocessing.connection.wait(sentinels, timeout=0.5)
    for i, (process, pipe) in list(workers.items()):
        if process.exitcode is None:
            continue
        reason = _last_error(pipe)
        pipe.close()
        log.error(
            "proxy worker %d (pid %s) exited with %s%s; restarting it (its spool is replayed)",
            i,
            process.pid,
            process.exitcode,
            f" ({reason})" if reason else "",
        )
        time.sleep(RESTART_DELAY)
        workers[i] = _start(settings, i)


def _last_error(pipe: Connection) -> str:
    """The error a worker sent before it exited, if any (after "ready")."""
    reason = ""
    with contextlib.suppress(EOFError, OSError):
        while pipe.poll():
            message = pipe.recv()
            if message[0] == "error":
                reason = str(message[1])
    return reason


def _stop(processes: list[BaseProcess]) -> None:
    """SIGTERM to each worker, then wait: each drains its calls and flushes its spool."""
    for process in processes:
        if process.exitcode is None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error("proxy worker pid %s did not stop in time; killed", process.pid)
            process.kill()
            process.join()


def _worker(settings: Settings, index: int, pipe: Connection) -> None:
    """A worker process: one proxy on the shared port, reporting ready or its error."""
    logs.setup(settings.log_level)
    try:
        server.serve_one(
            settings,
            spool_dir=spool_dir(settings.effective_spool_dir, index),
            migrated=True,
            reuse_port=True,
            on_ready=lambda: pipe.send(("ready",)),
        )
    except CurationError as exc:  # the supervisor reports it (one line at start)
        with contextlib.suppress(OSError):
            pipe.send(("error", str(exc), exc.exit_code))
        raise SystemExit(exc.exit_code) from None


def check_free(host: str, port: int) -> None:
    """The port must be free: SO_REUSEPORT would let the workers join another proxy's."""
    if port == 0:
        raise InvalidInput(
            "--workers needs a fixed port in --listen: with 0 each would get its own"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidInput(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen"
            ) from exc


def warn_leftovers(root: Path, count: int) -> None:
    """Captures in the spool of a worker this proxy will not run are not lost, but wait
    until a proxy with that many workers runs again: say so at start."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        found = WORKER_DIR.match(path.name)
        if not found or int(found.group(1)) < count or not path.is_dir():
            continue
        waiting = recorder.Recorder(path, "").backlog()
        if waiting:
            log.warning(
                "spool %s holds %d bytes not yet in PostgreSQL; run the proxy with "
                "--workers %d or more to record them",
                path,
                waiting,
                int(found.group(1)) + 1,
            )

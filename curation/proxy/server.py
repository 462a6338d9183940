"""Start and stop the proxy: checks, the event loop, graceful shutdown.

Start: the spool must be writable (else exit); PostgreSQL may be down (the
spool takes the captures until it is back), but a schema behind the code
is an error. Stop (SIGTERM/SIGINT): stop accepting, let in-flight calls and
streams finish, then flush the spool to PostgreSQL. With ``workers`` > 1 this
process only supervises that many proxy processes on the same port
(``proxy/workers.py``); each runs ``serve_one``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from curation import logs
from curation.config import Settings
from curation.db import connect, migrate
from curation.errors import DatabaseUnavailable, InvalidInput
from curation.proxy import fastlane, protocol
from curation.proxy.app import Proxy, build_app
from curation.proxy.metrics import Metrics, RecorderCollector
from curation.proxy.recorder import Recorder
from curation.proxy.serving import ServingTable
from curation.proxy.spool import Spool

log = logging.getLogger("curation.proxy")

SHUTDOWN_TIMEOUT = 30.0


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInput(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def prepare_database(settings: Settings) -> str:
    """The database URL, migrated (embedded) or checked (DATABASE_URL)."""
    url = connect.database_url(settings)
    try:
        if settings.database_url is None:
            migrate.upgrade(url)
        else:
            with connect.connection(url) as conn:
                migrate.check_current(conn)
    except DatabaseUnavailable as exc:
        log.warning("starting without PostgreSQL; captures wait in the spool: %s", exc)
    return url


def serve(settings: Settings, workers: int = 1) -> None:
    logs.setup(settings.log_level)
    if workers > 1:
        from curation.proxy import workers as pool

        pool.supervise(settings, workers)
        return
    from curation.proxy.workers import warn_leftovers

    warn_leftovers(settings.effective_spool_dir, 1)
    serve_one(settings)


def serve_one(
    settings: Settings,
    *,
    spool_dir: Path | None = None,
    migrated: bool = False,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """One proxy process: its spool, its recorder, its event loop, until SIGTERM/SIGINT.
    A worker of ``--workers`` passes its own spool, ``migrated`` (the parent did it)
    and ``reuse_port`` (its siblings listen on the same port)."""
    protocol.redact_parser_errors()
    host, port = parse_listen(settings.listen)
    metrics = Metrics()
    spool = Spool(
        spool_dir or settings.effective_spool_dir,
        max_bytes=settings.spool_max_bytes,
        fsync=settings.spool_fsync,
        on_drop=metrics.dropped.labels("spool_cap").inc,
    )
    spool.open()
    try:
        url = connect.database_url(settings) if migrated else prepare_database(settings)
        recorder = Recorder(spool.directory, url, settings.recorder_stall_seconds)
        metrics.registry.register(RecorderCollector(recorder, spool))
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            pass
        proxy = Proxy(
            settings=settings,
            spool=spool,
            recorder=recorder,
            metrics=metrics,
            serving=ServingTable(url),
        )
        asyncio.run(_run(proxy, host, port, reuse_port, on_ready))
    finally:
        spool.close()


async def _run(
    proxy: Proxy,
    host: str,
    port: int,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    runner = web.AppRunner(
        build_app(proxy), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    gate = protocol.Gate(proxy.settings.max_client_connections, proxy.metrics)
    slow = protocol.factory(runner.server, proxy.settings, proxy.metrics, gate)
    lane = fastlane.Lane(proxy, slow, gate) if proxy.settings.fast_lane else None
    try:
        listener = await loop.create_server(
            lane.factory if lane is not None else slow,
            host,
            port,
            backlog=2048,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except OSError as exc:
        await runner.cleanup()
        await proxy.recorder.stop()
        raise InvalidInput(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen"
        ) from exc
    gc.freeze()  # start-up objects never need collecting: keeps GC pauses short
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphaned = None
    if on_ready is not None:  # a worker: it stops when its supervisor is gone
        on_ready()
        orphaned = asyncio.create_task(_watch_parent(os.getppid(), stop))
    log.info(
        "listening",
        extra={
            "listen": f"{host}:{port}",
            "upstream": proxy.settings.upstream_url,
            "spool": str(proxy.spool.directory),
            "default_namespace": proxy.settings.default_namespace,
        },
    )
    await stop.wait()
    if orphaned is not None:
        orphaned.cancel()
    log.info("shutting down: finishing in-flight calls")
    proxy.stopping = True
    listener.close()
    if lane is not None:
        await lane.drain(SHUTDOWN_TIMEOUT)
    await runner.cleanup()
    await proxy.recorder.stop()
    proxy.spool.rescan()
    log.info("stopped", extra={"spool_bytes": proxy.spool.total_bytes})


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the proxy's supervisor is gone; this worker drains and stops")
    stop.set()

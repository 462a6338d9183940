"""Start and stop the proxy: checks, the event loop, graceful shutdown.

Start: the spool must be writable (else exit); PostgreSQL may be down (the
spool takes the captures until it is back), but a schema behind the code
is an error. Stop (SIGTERM/SIGINT): stop accepting, let in-flight calls and
streams finish, then flush the spool to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from curation import logs
from curation.config import Settings
from curation.db import connect, migrate
from curation.errors import DatabaseUnavailable, InvalidInput
from curation.proxy import protocol
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


def serve(settings: Settings) -> None:
    logs.setup(settings.log_level)
    protocol.redact_parser_errors()
    host, port = parse_listen(settings.listen)
    metrics = Metrics()
    spool = Spool(
        settings.effective_spool_dir,
        max_bytes=settings.spool_max_bytes,
        fsync=settings.spool_fsync,
        on_drop=metrics.dropped.labels("spool_cap").inc,
    )
    spool.open()
    try:
        url = prepare_database(settings)
        recorder = Recorder(spool.directory, url, settings.recorder_stall_seconds)
        metrics.registry.register(RecorderCollector(recorder, spool))
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            pass
        proxy = Proxy(settings, spool, recorder, metrics, ServingTable(url))
        asyncio.run(_run(proxy, host, port))
    finally:
        spool.close()


async def _run(proxy: Proxy, host: str, port: int) -> None:
    runner = web.AppRunner(
        build_app(proxy), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            protocol.factory(runner.server, proxy.settings, proxy.metrics),
            host,
            port,
            backlog=2048,
            reuse_address=True,
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
    log.info("shutting down: finishing in-flight calls")
    listener.close()
    await runner.cleanup()
    await proxy.recorder.stop()
    proxy.spool.rescan()
    log.info("stopped", extra={"spool_bytes": proxy.spool.total_bytes})

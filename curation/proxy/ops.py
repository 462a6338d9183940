"""Operations endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from curation.proxy.app import Proxy


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(proxy: Proxy, request: web.Request) -> web.Response:
    """Ready: PostgreSQL reachable by the recorder, and the spool not near its cap."""
    proxy.spool.rescan()
    over = proxy.spool.total_bytes >= proxy.spool.max_bytes * 0.9
    database_ok = proxy.recorder.database_ok
    ready = database_ok and not over
    body = {
        "status": "ready" if ready else "degraded",
        "database": "ok" if database_ok else "unreachable",
        "recorder": "running" if proxy.recorder.alive else "not running",
        "spool_bytes": proxy.spool.total_bytes,
        "spool_max_bytes": proxy.spool.max_bytes,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(proxy: Proxy, request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(proxy.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )

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
    """Ready: the recorder running and making progress, PostgreSQL reachable by it, and
    the spool not near its cap; else 503 with the reasons."""
    proxy.spool.rescan()
    recorder = proxy.recorder
    reasons = []
    if not recorder.alive:
        reasons.append("the recorder is not running (it is restarted)")
    elif recorder.stalled and recorder.in_database:
        reasons.append(
            f"the recorder made no progress for {recorder.stall_seconds:g}s with captures "
            "waiting: it is waiting on PostgreSQL (a slow write or a lock)"
        )
    elif recorder.stalled:
        reasons.append(
            f"the recorder made no progress for {recorder.stall_seconds:g}s with captures "
            "waiting (it is restarted)"
        )
    elif not recorder.database_ok:
        reasons.append("the recorder cannot reach PostgreSQL (captures wait in the spool)")
    if proxy.spool.total_bytes >= proxy.spool.max_bytes * 0.9:
        reasons.append("the spool is near its cap (the oldest captures are dropped over it)")
    body = {
        "status": "degraded" if reasons else "ready",
        "reasons": reasons,
        "database": "ok" if recorder.database_ok else "unreachable",
        "recorder": "stalled"
        if recorder.stalled
        else ("running" if recorder.alive else "not running"),
        "spool_bytes": proxy.spool.total_bytes,
        "spool_max_bytes": proxy.spool.max_bytes,
    }
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(proxy: Proxy, request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(proxy.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )

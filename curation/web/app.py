"""The web page's application: routes, errors, and ``serve``.

A ``CurationError`` from a handler becomes
the page's one-line ``#error`` with the status that fits (a permission the login
lacks is a 403 saying so, never a traceback). A refused action (a POST whose handler
named the page it came from in ``request["back"]``) goes back there instead, the line
in the session for that page to show (POST-redirect-GET: a reload sends nothing again).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from curation.errors import Conflict, CurationError, InvalidInput, NotFound, PermissionDenied
from curation.web import actions, auth, pages
from curation.web.view import CONFIG, HOSTS, SESSIONS, Config, render

log = logging.getLogger("curation.web")
STATIC = Path(__file__).parent / "static"
STATUS = {InvalidInput: 400, PermissionDenied: 403, NotFound: 404, Conflict: 409}
SWEEP_SECONDS = 60.0
# a correction of MAX_FIELD characters, form-encoded (up to 12 bytes a character), fits
MAX_BODY = 16 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@web.middleware
async def errors(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CurationError as exc:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 503)
        s: auth.Session | None = request.get("session")
        back: str | None = request.get("back")
        if back and s is not None and auth.wants_html(request):
            s.failure = str(exc)
            raise web.HTTPSeeOther(back) from exc
        if not auth.wants_html(request):
            return web.json_response({"error": str(exc)}, status=status)
        return render(request, "error.html", status=status, error=str(exc))
    except web.HTTPException:
        raise
    except Exception:  # a bug: logged with its traceback, the page says one line
        log.exception("curation web: %s %s failed", request.method, request.path)
        return render(request, "error.html", status=500, error="a bug: see the server's log")


def make_app(config: Config) -> web.Application:
    sessions = auth.Sessions(config.idle)
    hosts = auth.Hosts(config.host, config.allow_hosts)
    app = web.Application(
        middlewares=[auth.headers, auth.origin(hosts), auth.guard(sessions), errors],
        client_max_size=MAX_BODY,
    )
    app[CONFIG] = config
    app[SESSIONS] = sessions
    app[HOSTS] = hosts
    app.router.add_get("/", pages.home)
    app.router.add_get("/login", pages.login_page)
    app.router.add_post("/login", actions.login)
    app.router.add_post("/logout", actions.logout)
    app.router.add_post("/ns/{ns}/prompt", actions.prompt)
    app.router.add_get("/ns/{ns}/rows", pages.rows)
    app.router.add_get("/ns/{ns}/next", pages.next_pending)
    app.router.add_get("/ns/{ns}/rows/{id:[0-9]{1,19}}", pages.row)
    app.router.add_post("/ns/{ns}/rows/{id:[0-9]{1,19}}/{action}", actions.decide)
    app.router.add_static("/static/", STATIC)
    app.cleanup_ctx.append(_sweeper)
    return app


async def _sweeper(app: web.Application) -> Any:
    """End idle sessions now and then, and every session at shutdown."""

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            await asyncio.to_thread(auth.close_all, app[SESSIONS].expired())
            await asyncio.to_thread(auth.rest_all, app[SESSIONS].resting())

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    await asyncio.to_thread(auth.close_all, app[SESSIONS].every())


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; print the sign-in link once the port is bound."""
    asyncio.run(_serve(config, host, port))


async def _serve(config: Config, host: str, port: int) -> None:
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InvalidInput(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen"
        ) from exc
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    app[HOSTS].port = bound
    shown = f"[{host}]" if ":" in host else host
    print(f"curation web: http://{shown}:{bound}/?token={config.token}", flush=True)
    if host not in LOOPBACK_HOSTS:
        print(
            f"curation web: warning: {host} is not loopback and this is plain HTTP: "
            "passwords and cookies cross the network readable; put it behind a TLS reverse proxy",
            file=sys.stderr,
            flush=True,
        )
    if config.passwordless_logins:
        print(
            "curation web: warning: --allow-passwordless-logins: on a trust/peer-auth "
            "PostgreSQL anyone may sign in as any login (development and tests only)",
            file=sys.stderr,
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        sys.stdout.flush()

"""What every handler shares: the server's configuration, the session store's key,
and the templates (autoescaped: no row value is ever marked safe)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from curation.web import auth


@dataclass(frozen=True)
class Config:
    """What the server needs: the database, who the token signs in as, the token."""

    url: str
    curator: str
    token: str
    idle: float = 8 * 3600.0
    models_file: Path | None = None
    host: str = "127.0.0.1"  # the bound host: a name requests may use (auth.Hosts)
    allow_hosts: tuple[str, ...] = ()  # --allow-host: more such names
    # --allow-passwordless-logins: for development and tests on a trust-auth server only
    passwordless_logins: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # signs login CSRF


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("curation.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
CONFIG = web.AppKey("config", Config)
SESSIONS = web.AppKey("sessions", auth.Sessions)
HOSTS = web.AppKey("hosts", auth.Hosts)


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    s: auth.Session | None = request.get("session")
    html = TEMPLATES.get_template(template).render(
        session=s,
        csrf=s.csrf if s else "",
        status=s.said() if s else None,
        failure=s.failed() if s else None,
        **values,
    )
    return web.Response(text=html, status=status, content_type="text/html")

"""Who is on the page: sessions, the two ways to sign in, CSRF, and the headers of
every response.

Sign-in by the token printed at start (the person who started the server, as the
curator it names) or by a PostgreSQL login and password (the page then opens its
connections as that login; the password lives only in that session's memory).
A session is a random id in an HttpOnly, SameSite=Strict cookie, kept server-side
and dropped after ``idle`` seconds without a request; its connection goes with it,
and with that any row it held.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from curation.db.web import Link

if TYPE_CHECKING:
    from curation.curate.coverage import Plan  # numpy: only when a review asks for it

T = TypeVar("T")
COOKIE = "curation_session"
LOGIN_COOKIE = "curation_login_csrf"  # the sign-in form's CSRF token, before any session
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin: no Referer leaves for other sites, and a form's POST carries its real
    # Origin (under no-referrer a browser sends "Origin: null", which origin() refuses)
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
OPEN_PATHS = ("/login", "/static/")  # reachable without a session
MAX_SESSIONS = 64  # beyond: the longest unused session ends (each holds a connection)
REST_SECONDS = 300.0  # an idle session's connection holding no row is closed (reopened on use)
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class Session:
    """One signed-in browser: its curator name, its database connection, its review state."""

    id: str
    curator: str
    login: str | None  # the PostgreSQL login it signed in with; None: the server's own
    link: Link
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)
    skipped: dict[str, list[int]] = field(default_factory=dict)  # per namespace, as review's
    last: tuple[str, int] | None = None  # (namespace, row id) of the last decision: undo
    plans: dict[str, Plan] = field(default_factory=dict)  # next?order=coverage, per namespace
    flash: str | None = None  # what the next page says in #status
    failure: str | None = None  # a refused action's line: the next page's #error
    draft: tuple[str, int, str] | None = None  # a refused correction's text, to edit again
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def call(self, blocking: Callable[..., T], *args: Any) -> T:
        """``blocking(*args)`` in a thread, one at a time per session (its one connection)."""
        async with self.busy:
            return await asyncio.to_thread(blocking, *args)

    async def db(self, work: Callable[..., T], *args: Any, commit: bool = False) -> T:
        """``work(conn, *args)`` on this session's connection."""
        return await self.call(lambda: self.link.run(lambda conn: work(conn, *args), commit=commit))

    def said(self) -> str | None:
        shown, self.flash = self.flash, None
        return shown

    def failed(self) -> str | None:
        shown, self.failure = self.failure, None
        return shown


class Sessions:
    """The server-side store: session id -> Session, each dropped after ``idle`` seconds."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._all: dict[str, Session] = {}

    def start(self, curator: str, login: str | None, link: Link) -> Session:
        s = Session(secrets.token_urlsafe(32), curator, login, link)
        self._all[s.id] = s
        return s

    def make_room(self, replaced: str | None) -> list[Session]:
        """Before a sign-in: forget the browser's current session (``replaced``) and, at
        MAX_SESSIONS, the longest unused; return them, to close their connections."""
        gone = [s for s in [self._all.get(replaced or "")] if s is not None]
        for s in gone:
            self.drop(s)
        while len(self._all) >= MAX_SESSIONS:
            oldest = min(self._all.values(), key=lambda s: s.seen)
            self.drop(oldest)
            gone.append(oldest)
        return gone

    def resting(self) -> list[Session]:
        """Sessions unused for REST_SECONDS: their connections may close (``Link.rest``)."""
        now = time.monotonic()
        return [s for s in self._all.values() if now - s.seen > REST_SECONDS]

    def get(self, session_id: str | None) -> Session | None:
        s = self._all.get(session_id or "")
        if s is None:
            return None
        if time.monotonic() - s.seen > self.idle:
            self.drop(s)
            s.link.close()  # idle for hours: no request of its own holds the connection
            return None
        s.seen = time.monotonic()
        return s

    def drop(self, s: Session) -> None:
        """Forget ``s`` (the caller closes its connection, in a thread)."""
        self._all.pop(s.id, None)

    def expired(self) -> list[Session]:
        """Forget the sessions idle too long and return them, to close their connections
        (which lets go of the rows they held). The store is touched only on the event
        loop; closing, which may wait for a connection, happens in a thread."""
        now = time.monotonic()
        gone = [s for s in self._all.values() if now - s.seen > self.idle]
        for s in gone:
            self.drop(s)
        return gone

    def every(self) -> list[Session]:
        """Forget every session (at shutdown) and return them, to close their connections."""
        gone = list(self._all.values())
        self._all.clear()
        return gone


def close_all(gone: list[Session]) -> None:
    for s in gone:
        s.link.close()


def rest_all(idle: list[Session]) -> None:
    for s in idle:
        s.link.rest()


async def begin(
    request: web.Request, sessions: Sessions, curator: str, login: str | None, link: Link
) -> web.HTTPSeeOther:
    """A new session for this browser (its previous one ends) and the redirect that
    sets its cookie."""
    gone = sessions.make_room(request.cookies.get(COOKIE))
    await asyncio.to_thread(close_all, gone)
    s = sessions.start(curator, login, link)
    response = web.HTTPSeeOther("/")
    set_cookie(response, COOKIE, s.id, secure=request.secure)
    return response


def signed(secret: bytes, nonce: str) -> str:
    """The sign-in form's CSRF token: a nonce and its HMAC under the server's per-process
    secret, so a cookie planted by another site on localhost (any port) is not accepted."""
    mac = hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{nonce}.{mac}"


def genuine(secret: bytes, token: str) -> bool:
    nonce, _, _mac = token.partition(".")
    return bool(nonce) and same(token, signed(secret, nonce))


class Hosts:
    """The names a request may address this server by (its Host header, and a POST's
    Origin): the bound host and loopback names with the bound port, and ``--allow-host``
    names with any port. Anything else is DNS rebinding or a stray proxy: 403."""

    def __init__(self, host: str, allowed: tuple[str, ...]) -> None:
        bound = f"[{host}]" if ":" in host else host
        self.local = {bound.lower(), *LOOPBACK}
        self.allowed = {name.lower() for name in allowed}
        self.port: int | None = None  # known once bound (--listen port 0: any free one)

    def accepts(self, netloc: str) -> bool:
        netloc = netloc.lower()
        name, sep, port = netloc.rpartition(":") if not netloc.endswith("]") else ("", "", "")
        if not sep or not port.isdigit():
            name, port = netloc, ""
        if name in self.allowed:
            return True
        here = str(self.port)
        return name in self.local and (port == here or (not port and here == "80"))


def same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a secret the browser sent."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def set_cookie(
    response: web.StreamResponse, name: str, value: str, *, secure: bool = False
) -> None:
    """``secure``: the request came over HTTPS (never sent back over plain HTTP)."""
    response.set_cookie(name, value, httponly=True, samesite="Strict", path="/", secure=secure)


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


async def csrf_token(request: web.Request) -> str | None:
    if "X-CSRF-Token" in request.headers:
        return request.headers["X-CSRF-Token"]
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get("csrf")
        return value if isinstance(value, str) else None
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers on every response, errors and redirects included."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    response.headers.update(HEADERS)
    return response


def origin(hosts: Hosts) -> Any:
    """Only requests addressed to this server by a name it answers to (DNS rebinding
    sends the attacker's name); a POST from a page of another origin is refused too."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not hosts.accepts(request.headers.get("Host", "")):
            raise web.HTTPForbidden(text="unknown Host: open the link curation web printed")
        sent = request.headers.get("Origin")
        if request.method == "POST" and sent is not None:
            scheme, sep, netloc = sent.partition("://")
            if not sep or scheme not in ("http", "https") or not hosts.accepts(netloc):
                raise web.HTTPForbidden(text="a form of another site: refused")
        return await handler(request)

    return middleware


def same_site(request: web.Request) -> bool:
    """A GET that changes something (next pending lets go of a row, claims one, and may
    plan a coverage order): only from this page or the address bar, when the browser says."""
    return request.headers.get("Sec-Fetch-Site", "none") in ("same-origin", "none")


def guard(sessions: Sessions) -> Any:
    """The session of each request (``request["session"]``): none on a page that needs
    one sends a browser to /login (a script gets 401); a POST without the session's
    CSRF token gets 403."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        s = sessions.get(request.cookies.get(COOKIE))
        request["session"] = s
        if request.path.startswith(OPEN_PATHS) or (
            request.path == "/" and "token" in request.query
        ):
            return await handler(request)
        if s is None:
            if wants_html(request) and request.method == "GET":
                raise web.HTTPSeeOther("/login")
            raise web.HTTPUnauthorized(text="sign in first: open /login")
        if request.method == "POST" and not same(await csrf_token(request), s.csrf):
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
        return await handler(request)

    return middleware

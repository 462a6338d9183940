"""The proxy's client connections, below the handler: what aiohttp's HTTP parser
refuses, and connections that hold the proxy without sending a request.

aiohttp answers a request it cannot parse (a header or URL over its limit, too
many headers, garbage) with a ``text/plain`` 400 and logs the parser's message,
which quotes the offending bytes: an ``Authorization`` header over 8,190 bytes
reached the ERROR log. Here such a request gets OpenAI's error shape, is
counted, and is logged as one line naming the error class, never its bytes; a
logging filter drops the bytes from any other record that carries a parser
error. A connection without a whole request head for ``idle_timeout`` seconds
(a new one, an idle keep-alive one, or one sending its head a byte at a time)
is closed, and so at once is one whose client closed its sending side with no
whole request to answer. Over ``max_client_connections`` open connections, a new
one gets a 503 and is closed (counted; logged at most once a minute).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from curation.config import Settings
from curation.proxy import routing
from curation.proxy.metrics import Metrics

log = logging.getLogger("curation.proxy")

MAX_URL_BYTES = 16 * 1024  # the request line
MAX_HEADER_BYTES = 8190  # one header's name or value (aiohttp's default)
MAX_HEADERS = 128
LINGER_SECONDS = 5.0  # after an early answer (413, 408), read and drop the rest this long
CAP_LOG_SECONDS = 60.0  # the connection cap is logged at most this often


@dataclass
class Gate:
    """Open client connections, against their cap."""

    limit: int
    metrics: Metrics
    open: int = 0
    refused: int = 0
    logged_at: float = float("-inf")

    def enter(self) -> bool:
        """Count one more connection; False (counted, maybe logged) when over the cap."""
        if self.open >= self.limit:
            self.refused += 1
            self.metrics.refused_connections.inc()
            now = time.monotonic()
            if now - self.logged_at >= CAP_LOG_SECONDS:
                self.logged_at = now
                log.warning(
                    "client connection cap reached: %d open (CURATION_MAX_CLIENT_CONNECTIONS); "
                    "new connections get a 503 (%d so far)",
                    self.limit,
                    self.refused,
                )
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        """One connection fewer."""
        self.open -= 1


OVER_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


def over_cap(transport: asyncio.BaseTransport) -> None:
    """Answer a connection over the cap with a 503, and close it."""
    body = orjson.dumps(
        routing.error_body(
            "The curation proxy has too many open client connections; retry shortly.",
            "too_many_connections",
            "api_error",
        )
    )
    writer = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
    writer.write(OVER_CAP % (len(body), body))
    writer.close()


class Connection(web.RequestHandler):
    """One client connection; requests the parser refuses are answered in OpenAI's shape."""

    metrics: Metrics
    gate: Gate
    admitted: bool = False
    admitted_already: bool = False  # handed over by the fast lane, which counted it
    answered: int = 0  # requests answered (their handler done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.admitted = self.admitted_already or self.gate.enter()
        if not self.admitted:
            over_cap(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.leave()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that failed to read after the proxy answered (aiohttp reads the rest
        of it to keep the connection): one line, never the traceback or the bytes."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            cause = type(exc.__cause__ or exc).__name__
            log.info("refused a request whose body could not be read: %s", cause)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            status, text, code = refusal(exc)
            log.info("refused a request the HTTP parser rejected: %s", type(exc).__name__)
        else:  # the handler raised: a bug, logged with its traceback as aiohttp does
            if exc is not None:
                log.error("the proxy failed on a request", exc_info=exc)
            text, code = "The curation proxy failed on this request.", "proxy_error"
        if request.writer.output_size > 0:  # the response has begun: only closing is left
            raise ConnectionError("response already started")
        self.metrics.requests.labels("", "other", str(status)).inc()
        kind = "api_error" if status >= 500 else "invalid_request_error"
        response = web.Response(
            status=status,
            body=orjson.dumps(routing.error_body(text, code, kind)),
            content_type="application/json",
        )
        response.force_close()
        return response

    async def _handle_request(self, *args: Any, **kw: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kw)
        finally:
            self.answered += 1

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio's: bool | None
        """The client closed its sending side. With a whole request not yet answered
        (as ``nc`` sends one), answer it, then close; else close now: nothing more can
        arrive to answer (a connection closed after a partial request held its file)."""
        if self._request_count > self.answered:  # aiohttp's count of requests parsed
            self._close = True
            return True
        return False


def refusal(exc: HttpProcessingError) -> tuple[int, str, str]:
    """Status, message and code for a request the parser refused; never its bytes."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_URL_BYTES,):
            return (
                414,
                f"The request URL is over the curation proxy's limit of {MAX_URL_BYTES} bytes.",
                "request_uri_too_long",
            )
        return 431, header_limit_message(), "request_header_too_large"
    if "too many headers" in exc.message.lower():
        return 431, header_limit_message(), "request_header_too_large"
    return (
        400,
        f"The curation proxy could not parse this HTTP request ({type(exc).__name__}); "
        "a body needs a Content-Length header or chunked transfer encoding.",
        "malformed_request",
    )


def header_limit_message() -> str:
    return (
        f"The request headers are over the curation proxy's limits: {MAX_HEADER_BYTES} bytes "
        f"per header, {MAX_HEADERS} headers."
    )


def factory(
    server: web.Server, settings: Settings, metrics: Metrics, gate: Gate
) -> Callable[[], Connection]:
    """The protocol factory for ``loop.create_server``: one ``Connection`` per client."""
    loop = asyncio.get_running_loop()

    def make() -> Connection:
        connection = Connection(
            server,
            loop=loop,
            keepalive_timeout=settings.idle_timeout,
            access_log=None,  # type: ignore[arg-type]  # aiohttp takes None: no access log
            max_line_size=MAX_URL_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
            lingering_time=LINGER_SECONDS,
        )
        connection.metrics = metrics
        connection.gate = gate
        return connection

    return make


class RedactParserErrors(logging.Filter):
    """Any record carrying an HTTP parser error loses the error's text: it quotes the
    request's bytes (an Authorization header, a body) and no header may reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "HTTP parser error: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


def redact_parser_errors() -> None:
    """Install ``RedactParserErrors`` on every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactParserErrors())

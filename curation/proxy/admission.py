"""What the proxy refuses before it forwards a call, in OpenAI's error shape.

A path it does not route or with dot segments, a missing or wrong proxy key, a
namespace it will not create (creation on use is off, or the cap is reached), a
body too big, too slow, cut short or without a length (HTTP/1.0). Each refusal is
a ``Refusal``; the handler counts it and answers it like any other call.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from curation.config import Settings
from curation.proxy import routing


class Refusal(Exception):
    """A call the proxy answers itself, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.param = status, code, kind, param

    def body(self) -> bytes:
        return orjson.dumps(routing.error_body(str(self), self.code, self.kind, self.param))

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body(), content_type="application/json")


def opted_out(headers: Mapping[str, str]) -> bool:
    """The client asked for this call not to be recorded (``X-Curation-Log: off``)."""
    return headers.get("X-Curation-Log", "").strip().lower() in ("off", "0", "false", "no")


def route(request: web.Request, default_namespace: str) -> routing.Route:
    try:
        routing.check_path(request.raw_path)
        return routing.route(
            request.method,
            request.path,
            request.headers.get("X-Curation-Namespace"),
            default_namespace,
        )
    except routing.RouteError as exc:
        raise Refusal(exc.status, str(exc), exc.code) from exc


def check_key(headers: Mapping[str, str], keys: tuple[str, ...]) -> None:
    """In proxy-keys mode, the client's key must be one of ``keys``; a missing key is told
    apart from a wrong one, since the fix differs (send one, or send the right one)."""
    if not keys:
        return
    authorization = headers.get("Authorization", "").strip()
    given = "" if authorization == "Bearer" else authorization.removeprefix("Bearer ").strip()
    if not given:
        raise Refusal(
            401,
            "No API key given to the curation proxy: it admits only its proxy keys "
            "(CURATION_PROXY_KEYS); send one as `Authorization: Bearer KEY` "
            "(the SDK's api_key, or OPENAI_API_KEY).",
            "missing_api_key",
        )
    found = False
    for key in keys:  # no early exit: time does not tell which key
        found |= hmac.compare_digest(given.encode(), key.encode())
    if not found:
        raise Refusal(
            401,
            "Incorrect API key provided to the curation proxy: it is not one of its proxy keys "
            "(CURATION_PROXY_KEYS).",
            "invalid_api_key",
        )


@dataclass
class NamespaceCap:
    """A namespace not yet known is created on use (unless ``create`` is off), up to
    ``limit`` namespaces in all; counted per proxy process, so several proxies may
    each go up to it. Beyond it, calls are refused, not forwarded unrecorded."""

    create: bool
    limit: int
    created: set[str] = field(default_factory=set)  # what this proxy let create

    def exists(self, ns: str, known: set[str] | None) -> bool:
        """In PostgreSQL or created on use here: only these become metric label values."""
        return (known is not None and ns in known) or ns in self.created

    def admit(self, ns: str, known: set[str] | None) -> None:
        if self.exists(ns, known):
            return
        if not self.create:
            if known is not None:  # None: PostgreSQL not read yet, nothing to check against
                raise Refusal(
                    404,
                    f"unknown curation namespace {ns!r} (namespaces are not created on use here)",
                    "namespace_not_found",
                )
            return
        if len((known or set()) | self.created) >= self.limit:
            raise Refusal(
                404,
                f"unknown curation namespace {ns!r}: this proxy creates namespaces on use up to "
                f"{self.limit} in all (CURATION_MAX_NAMESPACES); create it with "
                f"`curation ns create {ns}`",
                "namespace_limit_reached",
            )
        self.created.add(ns)


async def read_body(request: web.Request, settings: Settings) -> bytes:
    unframed = request.version < (1, 1) and request.content_length is None
    if unframed and request.method in ("POST", "PUT", "PATCH"):
        raise Refusal(
            411, "An HTTP/1.0 request body needs a Content-Length header.", "length_required"
        )
    limit = settings.max_body_bytes
    too_big = Refusal(
        413,
        f"Request body over the curation proxy's limit of {limit} bytes; the operator raises it "
        "with CURATION_MAX_BODY_BYTES (or `curation proxy --max-body-bytes`), e.g. 64MiB.",
        "request_too_large",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
    except web.RequestPayloadError as exc:
        if isinstance(exc.__cause__, ContentEncodingError):
            encoding = request.headers.get("Content-Encoding", "")
            raise Refusal(
                400,
                f"The request body is not valid {encoding[:20]} data (Content-Encoding: "
                f"{encoding[:20]}); send it compressed as labelled, or uncompressed without "
                "Content-Encoding.",
                "invalid_content_encoding",
            ) from None
        raise Refusal(
            400,
            "The request body could not be read: malformed chunked encoding or cut short.",
            "malformed_request",
        ) from None
    except TimeoutError:
        raise Refusal(
            408,
            f"The request body did not arrive within {settings.body_timeout:g} s.",
            "request_timeout",
        ) from None
    return b"".join(chunks)

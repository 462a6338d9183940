"""Feedback from production: the id a recorded call carries, and the endpoint
that attaches scores, labels, comments and corrections to it.

Every call the proxy will record gets a fresh id when it is admitted, sent back
as ``X-Curation-Id`` with the response head (streams too) and spooled with the
capture; the writer maps it to the row (curation/db/feedback.py). Making the id
costs the request path a random number, never a database round trip.

``POST /curation/v1/feedback`` (one fixed path, whatever namespace the call was
in: the id says which row) takes ``{"id", "score", "label", "comment",
"correction"}``, all but ``id`` optional, checks it (``parse``, pure and total:
any body gives an ``Event`` or an ``Invalid``) and stores it at once in
PostgreSQL, over one connection per proxy that requests take turns on. While
PostgreSQL is unreachable the answer is 503: feedback is never accepted and then
lost, and the client (the SDK retries 503s) sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from curation.config import Settings
from curation.db import feedback as db
from curation.errors import CurationError, DatabaseUnavailable
from curation.proxy import admission
from curation.proxy.admission import Refusal
from curation.proxy.metrics import Metrics

log = logging.getLogger("curation.feedback")

PATH = "/curation/v1/feedback"
HEADER = "X-Curation-Id"
MAX_BODY = 1 << 20
MAX_LABEL = 256
MAX_COMMENT = 16_384
FIELDS = ("id", "score", "label", "comment", "correction")
STORE_TIMEOUT = 10.0  # waiting for the connection, connecting and writing, in all


def new_call_id() -> str:
    """A UUIDv7 (RFC 9562): the time in milliseconds first, so ``recorded_call``'s key index
    grows at its end, then 74 random bits, so no id can be guessed from another."""
    b = bytearray(os.urandom(16))
    b[0:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    b[6] = 0x70 | (b[6] & 0x0F)  # version 7
    b[8] = 0x80 | (b[8] & 0x3F)  # the RFC's variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Invalid(Refusal):
    """A feedback body refused (400): OpenAI's error shape, naming the parameter."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(400, message, code, param=param)


def parse(body: bytes) -> db.Event:
    """The event ``body`` asks to store, or Invalid saying what to fix."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Invalid(
            'The body is not valid JSON: send {"id": "<X-Curation-Id>", "score": -1}.',
            None,
            "invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise Invalid(
            'The body must be a JSON object: {"id": "<X-Curation-Id>", "score": -1}.',
            None,
            "invalid_json",
        )
    for key in data:
        if key not in FIELDS:
            raise Invalid(
                f"Unknown parameter {key[:40]!r}: feedback takes {', '.join(FIELDS)}.",
                key[:40],
                "unknown_parameter",
            )
    return db.Event(
        call_id=_call_id(data.get("id")),
        score=_score(data.get("score")),
        label=_text(data.get("label"), "label", MAX_LABEL),
        comment=_text(data.get("comment"), "comment", MAX_COMMENT),
        correction=_correction(data.get("correction")),
    )


def _call_id(value: Any) -> str:
    if value is None:
        raise Invalid(
            "Missing id: send the X-Curation-Id header value the answer came with.",
            "id",
            "missing_id",
        )
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        raise Invalid(
            "Invalid id: it must be the X-Curation-Id header value the answer came with "
            "(a UUID such as 0192c3a4-5b6c-7d8e-9f01-23456789abcd).",
            "id",
            "invalid_id",
        ) from None


def _score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
        raise Invalid(
            "Invalid score: a number from -1 (bad) to 1 (good).", "score", "invalid_score"
        )
    return float(value)


def _text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise Invalid(
            f"Invalid {name}: a string of at most {limit} characters.", name, f"invalid_{name}"
        )
    return value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL


def _correction(value: Any) -> str | None:
    """The JSON text of the assistant message a correction stands for."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"content": value}
    if not isinstance(value, dict) or not _is_answer(value):
        raise Invalid(
            "Invalid correction: the right answer as a string, or as an assistant message "
            '{"content": "..."} or {"content": null, "tool_calls": [...]}.',
            "correction",
            "invalid_correction",
        )
    message = {"role": "assistant", "content": value.get("content")}
    if value.get("tool_calls"):
        message["tool_calls"] = value["tool_calls"]
    # json keeps \u0000 but ->> on it fails: written as U+FFFD, as captured rows are
    return orjson.dumps(message).decode().replace("\\u0000", "\\ufffd")


def _is_answer(m: dict[str, Any]) -> bool:
    content, calls = m.get("content"), m.get("tool_calls")
    return (
        set(m) <= {"role", "content", "tool_calls"}
        and m.get("role", "assistant") == "assistant"
        and (content is None or isinstance(content, str))
        and (calls is None or (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)))
        and (isinstance(content, str) or bool(calls))
    )


class Endpoint:
    """``POST /curation/v1/feedback``: check, store, answer."""

    def __init__(self, url: str, settings: Settings, metrics: Metrics) -> None:
        self.url = url
        self.keys = settings.proxy_keys
        self.access_log = settings.access_log
        self.body_settings = dataclasses.replace(
            settings, max_body_bytes=min(MAX_BODY, settings.max_body_bytes)
        )
        self.metrics = metrics
        self._conn: db.AsyncConnection | None = None
        self._turn = asyncio.Lock()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        response = await self._answer(request)
        self.metrics.requests.labels("", "feedback", str(response.status)).inc()
        if self.access_log:
            logging.getLogger("curation.access").info(
                "request",
                extra={
                    "path": PATH,
                    "kind": "feedback",
                    "status": response.status,
                    "ms": round((time.perf_counter() - t0) * 1000, 2),
                },
            )
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return Refusal(405, f"{PATH} takes POST only.", "method_not_allowed").response()
        try:
            admission.check_key(request.headers, self.keys)
            event = parse(await admission.read_body(request, self.body_settings))
        except Refusal as refusal:  # Invalid too: it names the parameter at fault
            return refusal.response()
        try:
            stored = await self._store(event)
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("feedback not stored, PostgreSQL unreachable: %s", exc or "timeout")
            return Refusal(
                503,
                "Feedback cannot be stored now: the curation proxy cannot reach PostgreSQL. "
                "Nothing was kept; send it again later.",
                "database_unavailable",
                "api_error",
            ).response()
        except CurationError:  # a bug: the event was checked; the transaction rolled back
            log.exception("feedback not stored")
            return Refusal(
                500,
                "Feedback could not be stored (see the proxy's log).",
                "server_error",
                "api_error",
            ).response()
        return web.json_response(
            {
                "object": "curation.feedback",
                "id": stored.id,
                "call_id": event.call_id,
                "attached": stored.row_id is not None,  # False: attached once recorded
                "proposed": stored.proposed,
            }
        )

    async def _store(self, event: db.Event) -> db.Stored:
        """Requests take turns on the one connection, each waiting and working for a bounded
        time; a connection left mid-statement (a timeout, a cancel) is closed, not reused."""
        async with asyncio.timeout(STORE_TIMEOUT):
            await self._turn.acquire()
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                if self._conn is None or self._conn.closed:
                    self._conn = await db.connect(self.url)
                return await db.add(self._conn, event)
        except BaseException as exc:  # the connection may be mid-statement: not reused
            if not (isinstance(exc, CurationError) and not isinstance(exc, DatabaseUnavailable)):
                await self.close()
            raise
        finally:
            self._turn.release()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError, DatabaseUnavailable):
                await db.close(conn)

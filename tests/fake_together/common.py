"""What both halves of the fake share: Together's error body, its timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as Together sends it: the fake's own ``_keys`` left out."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}

"""One captured call (as the proxy spooled it) -> one row for the namespace table."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from curation.capture import prompt, stream, tags


@dataclass(frozen=True)
class Capture:
    """What the proxy spools for a call: metadata and the raw bytes, unparsed."""

    namespace: str
    started_at: float
    latency_ms: float
    streamed: bool
    content_encoding: str | None
    request_id: str | None
    tags_header: str | None
    request: bytes
    response: bytes
    rewritten: bool = False

    def meta(self) -> dict[str, Any]:
        return {
            "rw": self.rewritten,
            "ns": self.namespace,
            "t": self.started_at,
            "lat": self.latency_ms,
            "st": self.streamed,
            "enc": self.content_encoding,
            "rid": self.request_id,
            "tags": self.tags_header,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], request: bytes, response: bytes) -> Capture:
        return cls(
            namespace=meta["ns"],
            started_at=meta["t"],
            latency_ms=meta["lat"],
            streamed=meta["st"],
            content_encoding=meta.get("enc"),
            request_id=meta.get("rid"),
            tags_header=meta.get("tags"),
            request=request,
            response=response,
            rewritten=bool(meta.get("rw", False)),
        )


@dataclass(frozen=True)
class Row:
    namespace: str
    user_prompt: str
    response: str  # JSON text, stored verbatim in the json column
    request: str  # JSON text for the jsonb column
    system_prompt: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    streamed: bool
    upstream_request_id: str | None
    seen_at: datetime
    tags: str  # JSON object text
    rewritten: bool = False


class Unrecordable(ValueError):
    """A capture that cannot become a row (reason in the message)."""


def decode_body(body: bytes, encoding: str | None) -> bytes:
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if enc == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise Unrecordable(f"unsupported content-encoding {encoding!r}")


def _json_text(value: Any) -> str:
    text = orjson.dumps(value).decode()
    # jsonb refuses \u0000; it can only come from a string value
    return text.replace("\\u0000", "\\ufffd")


def _raw_json_text(raw: bytes, parsed: Any) -> str:
    """The client's own JSON text when jsonb can take it (saves a re-encode)."""
    if b"\\u0000" in raw:
        return _json_text(parsed)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _json_text(parsed)


def build(capture: Capture) -> Row:
    try:
        request = orjson.loads(capture.request)
    except orjson.JSONDecodeError as exc:
        raise Unrecordable(f"request is not JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise Unrecordable("request has no messages list")
    body = decode_body(capture.response, capture.content_encoding)
    try:
        if capture.streamed:
            response = stream.reassemble(body)
            if response is None:
                raise Unrecordable("stream ended without [DONE] or carried an error")
            response_text = _json_text(response)
        else:
            response = orjson.loads(body)
            response_text = body.decode("utf-8").replace("\\u0000", "\\ufffd")
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unrecordable(f"response is not JSON: {exc}") from exc
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise Unrecordable("response is not a chat.completion")
    asked = prompt.extract(request)
    usage = response.get("usage") or {}
    return Row(
        namespace=capture.namespace,
        user_prompt=asked.user_prompt,
        response=response_text,
        request=_raw_json_text(capture.request, request),
        system_prompt=asked.system_prompt,
        model=response.get("model") or request.get("model"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        latency_ms=capture.latency_ms,
        streamed=capture.streamed,
        upstream_request_id=capture.request_id,
        seen_at=datetime.fromtimestamp(capture.started_at, UTC),
        tags=_json_text(tags.from_request(request, capture.tags_header)),
        rewritten=capture.rewritten,
    )

"""One captured call (as the proxy spooled it) -> one row for the namespace table."""

from __future__ import annotations

import functools
import logging
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from curation import names
from curation.capture import flags as auto_flags
from curation.capture import prompt, responses, stream, tags
from curation.capture.shape import Unrecordable, int32, obj, text

MAX_DECODED = 256 << 20  # a decompressed response over this is a bomb, not a completion
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
log = logging.getLogger("curation.writer")

__all__ = ["Capture", "Row", "Unrecordable", "build", "decode_body"]


@dataclass(frozen=True, kw_only=True)
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
    fallback_from: str | None = None  # the student that failed; the teacher answered
    api: str = responses.CHAT_API  # which API carried it: chat.completions or responses
    call_id: str | None = None  # the X-Curation-Id the client got; feedback names it

    def meta(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "cid": self.call_id,
            "rw": self.rewritten,
            "fb": self.fallback_from,
            "ns": self.namespace,
            "t": self.started_at,
            "lat": self.latency_ms,
            "st": self.streamed,
            "enc": self.content_encoding,
            "rid": self.request_id,
            "tags": self.tags_header,
        }

    @classmethod
    def from_meta(cls, meta: Any, request: bytes, response: bytes) -> Capture:
        """The capture a spool frame holds; Unrecordable if its metadata is not the proxy's."""
        m = obj(meta)
        namespace, started_at, latency_ms = m.get("ns"), _number(m.get("t")), _number(m.get("lat"))
        if not isinstance(namespace, str) or len(namespace) > 64 or not _valid(namespace):
            raise Unrecordable("spool frame has no valid namespace")
        if started_at is None or latency_ms is None:
            raise Unrecordable("spool frame has no valid time or latency")
        return cls(
            namespace=namespace,
            started_at=started_at,
            latency_ms=latency_ms,
            streamed=m.get("st") is True,
            content_encoding=text(m.get("enc")),
            request_id=text(m.get("rid")),
            tags_header=text(m.get("tags")),
            request=request,
            response=response,
            rewritten=m.get("rw") is True,
            fallback_from=text(m.get("fb")),
            api=responses.API if m.get("api") == responses.API else responses.CHAT_API,
            call_id=_call_id(m.get("cid")),
        )


@functools.lru_cache(maxsize=256)  # a proxy serves a few namespaces, over and over
def _valid(namespace: str) -> bool:
    return names.is_valid(namespace)


def _call_id(value: Any) -> str | None:
    """A call id as the proxy writes it (a UUID), else None: the row is kept without one."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    if _CANONICAL_UUID.fullmatch(value):
        return value  # the proxy's own form: what str(uuid.UUID(value)) would give
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    """A plausible timestamp or duration (0 to the year 9999, in seconds or ms), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2.5e11:
        return float(value)
    return None


@dataclass(frozen=True, kw_only=True)
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
    fallback_from: str | None = None
    api: str = responses.CHAT_API
    response_id: str | None = None  # responses: the Response's id, which later turns name
    previous_response_id: str | None = None  # responses: the earlier turn this one continues
    call_id: str | None = None  # recorded_call maps it to this row (or the row it repeats)
    flags: list[str] | None = None  # capture/flags.py; None: not computed (the backfill does)


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """The response body without its content-encoding, at most ``MAX_DECODED`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS)
    if enc == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS)
        except Unrecordable:
            return _inflate(body, -zlib.MAX_WBITS)
    raise Unrecordable(f"unsupported content-encoding {(encoding or '')[:40]!r}")


def _inflate(body: bytes, wbits: int) -> bytes:
    """Decompress one zlib/gzip/raw deflate stream, refusing a decompression bomb."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, MAX_DECODED + 1)
    except zlib.error as exc:
        raise Unrecordable(f"response body does not decompress: {exc}") from exc
    if len(out) > MAX_DECODED:
        raise Unrecordable(f"response body decompresses to over {MAX_DECODED} bytes")
    if not inflater.eof:
        raise Unrecordable("response body is a truncated compressed stream")
    return out


def _json_text(value: Any) -> str:
    encoded = orjson.dumps(value).decode()
    # jsonb refuses \u0000; it can only come from a string value
    return encoded.replace("\\u0000", "\\ufffd")


def _raw_json_text(raw: bytes, parsed: Any) -> str:
    """The client's own JSON text when jsonb can take it (saves a re-encode)."""
    if b"\\u0000" in raw:
        return _json_text(parsed)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _json_text(parsed)


def build(capture: Capture) -> Row:
    """The row of ``capture``, whatever its bytes hold, or Unrecordable (the reason why)."""
    if capture.api == responses.API:
        return _responses_row(capture)
    request = _request(capture.request)
    response, response_text = _response(
        decode_body(capture.response, capture.content_encoding), capture.streamed
    )
    usage = obj(response.get("usage"))
    tokens = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    return _row(capture, request, prompt.extract(request), response, response_text, tokens)


def _responses_row(capture: Capture) -> Row:
    """A Responses API call: the same row, read with the Responses rules."""
    request = responses.check_request(_json(capture.request, "request"))
    body = decode_body(capture.response, capture.content_encoding)
    if capture.streamed:
        response = responses.reassemble(body)
        if response is None:
            raise Unrecordable("stream did not complete (no response.completed, or it failed)")
        response_text = _json_text(responses.check_response(response))
    else:
        response = responses.check_response(_json(body, "response"))
        response_text = body.decode("utf-8").replace("\\u0000", "\\ufffd")
    return _row(
        capture,
        request,
        responses.extract(request),
        response,
        response_text,
        responses.tokens(response),
        api=responses.API,
        response_id=_clean(responses.response_id(response)),
        previous_response_id=_clean(responses.previous_response_id(request)),
    )


def _row(
    capture: Capture,
    request: dict[str, Any],
    asked: prompt.Prompt,
    response: dict[str, Any],
    response_text: str,
    tokens: tuple[Any, Any],
    **by_api: Any,
) -> Row:
    """The columns every API fills alike; ``by_api`` the ones only some have."""
    model = text(response.get("model")) or text(request.get("model"))
    return Row(
        namespace=capture.namespace,
        user_prompt=asked.user_prompt,
        response=response_text,
        request=_raw_json_text(capture.request, request),
        system_prompt=asked.system_prompt,
        model=prompt.clean(model) if model is not None else None,
        prompt_tokens=int32(tokens[0]),
        completion_tokens=int32(tokens[1]),
        latency_ms=capture.latency_ms,
        streamed=capture.streamed,
        upstream_request_id=capture.request_id,
        seen_at=datetime.fromtimestamp(capture.started_at, UTC),
        tags=_json_text(tags.from_request(request, capture.tags_header)),
        rewritten=capture.rewritten,
        fallback_from=capture.fallback_from,
        call_id=capture.call_id,
        flags=_flags(request, response, capture.rewritten),
        **by_api,
    )


def _flags(request: Any, response: Any, rewritten: bool) -> list[str] | None:
    """The row's flags; a bug in a check costs the flags, never the row: it is recorded
    flagged ``check_failed`` (as the backfill marks one), so export holds it back until a
    curator has looked, instead of exporting it as if every check had passed."""
    try:
        return auto_flags.for_row(request, response, rewritten=rewritten)
    except Exception:
        log.exception("flagging a capture failed; its row is recorded flagged check_failed")
        return [auto_flags.CHECK_FAILED]


def _json(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unrecordable(f"{what} is not JSON: {exc}") from exc


def _clean(value: str | None) -> str | None:
    return prompt.clean(value) if value is not None else None


def _request(raw: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unrecordable(f"request is not JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise Unrecordable("request has no messages list")
    return request


def _response(body: bytes, streamed: bool) -> tuple[dict[str, Any], str]:
    """The response object and its JSON text (the upstream's own text when not streamed)."""
    if streamed:
        response = stream.reassemble(body)
        if response is None:
            raise Unrecordable("stream ended before every choice finished, or carried an error")
        response_text = _json_text(response)
    else:
        try:
            response = orjson.loads(body)
            response_text = body.decode("utf-8").replace("\\u0000", "\\ufffd")
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Unrecordable(f"response is not JSON: {exc}") from exc
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise Unrecordable("response is not a chat.completion")
    return response, response_text

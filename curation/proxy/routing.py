"""Which namespace a call belongs to and where it goes upstream. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDict

from curation import names

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
# the path a POST is recorded from -> the API it speaks (capture/row.py reads either)
RECORDED = {CHAT_PATH: "chat.completions", RESPONSES_PATH: "responses"}
# OpenAI's API families: an unrecorded call is counted under its family's path, and
# under "other" beyond these, so no client can make a metric label per path it sends
FAMILIES = frozenset(
    {
        "assistants",
        "audio",
        "batches",
        "chat",
        "completions",
        "containers",
        "conversations",
        "embeddings",
        "evals",
        "files",
        "fine_tuning",
        "images",
        "models",
        "moderations",
        "organization",
        "realtime",
        "responses",
        "threads",
        "uploads",
        "vector_stores",
        "videos",
    }
)
# headers that describe one hop, not the message; never forwarded either way
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
CURATION_HEADERS = frozenset({"x-curation-namespace", "x-curation-tags", "x-curation-log"})
DECODABLE = ("gzip", "deflate", "identity")
# request bodies aiohttp's server decompresses: they go upstream decoded, without the label
DECODED_REQUEST_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


@dataclass(frozen=True)
class Route:
    upstream_path: str
    namespace: str | None
    record: bool
    api: str = ""  # the API a recorded call speaks (routing.RECORDED); "" when not recorded


class RouteError(ValueError):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def route(method: str, path: str, header_namespace: str | None, default_namespace: str) -> Route:
    namespace: str | None = None
    if path.startswith("/ns/"):
        _, _, name, *rest = path.split("/", 3)
        namespace = name
        path = "/" + (rest[0] if rest else "")
    elif header_namespace:
        namespace = header_namespace.strip()
    elif default_namespace:
        namespace = default_namespace
    if not path.startswith("/v1/"):
        raise RouteError(
            404,
            f"unknown path {path!r}: this proxy serves /v1/* and /ns/<namespace>/v1/*",
            "not_found",
        )
    if namespace is not None and not names.is_valid(namespace):
        raise RouteError(
            400,
            f"invalid curation namespace {namespace[:60]!r}: use ^[a-z][a-z0-9_]{{0,39}}$",
            "invalid_namespace",
        )
    api = RECORDED.get(path.rstrip("/")) if method == "POST" else None
    return Route(upstream_path=path, namespace=namespace, record=api is not None, api=api or "")


def family(path: str) -> str:
    """The bounded label an unrecorded call is counted under: ``/v1/<family>`` (``/v1/chat``
    for ``/v1/chat/...``), or ``other``."""
    parts = path.split("/", 3)
    name = parts[2] if len(parts) > 2 and parts[1] == "v1" else ""
    return f"/v1/{name}" if name in FAMILIES else "other"


def check_path(raw_path: str) -> None:
    """Refuse a path with dot segments (``..``, ``%2e%2e``, ``.``), empty ones (``//``) or
    an encoded slash:
    the upstream would resolve them to a path other than the one routed here
    (``/ns/ok/v1/../../v1/chat/completions`` is an unrecorded chat completion)."""
    path = raw_path.partition("?")[0]
    segments = path.split("/")
    for i, segment in enumerate(segments):
        decoded = unquote(segment)
        inner_empty = not segment and 0 < i < len(segments) - 1  # ``//``; a trailing ``/`` is fine
        if inner_empty or decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise RouteError(
                400,
                f"path segment {segment[:40]!r} is not allowed: "
                "no empty, '.' or '..' segments and no encoded slashes",
                "invalid_path",
            )


def upstream_headers(headers: Mapping[str, str], upstream_key: str | None) -> CIMultiDict[str]:
    """The client's headers as they go upstream: hop-by-hop and X-Curation-* out,
    the Content-Encoding of a body the proxy decoded out (it goes upstream decoded),
    encodings narrowed to what the recorder decodes, and in proxy-keys mode the
    proxy's own upstream key in place of the client's."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = key.lower()
        if low in HOP_BY_HOP or low in CURATION_HEADERS:
            continue
        if low == "content-encoding" and value.lower() in DECODED_REQUEST_ENCODINGS:
            continue  # the proxy read the body decoded and forwards it so
        out.add(key, accept_encoding(value) if low == "accept-encoding" else value)
    if "accept-encoding" not in out:
        out["Accept-Encoding"] = "identity"
    if upstream_key is not None:
        out["Authorization"] = f"Bearer {upstream_key}"
    return out


def client_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The upstream's response headers as the client gets them: all but hop-by-hop."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def accept_encoding(value: str | None) -> str:
    """Keep only encodings the recorder can decode (the client still gets them raw)."""
    if not value:
        return "identity"
    kept = [p.strip() for p in value.split(",") if p.split(";")[0].strip().lower() in DECODABLE]
    return ", ".join(kept) or "identity"


def error_body(
    message: str, code: str, kind: str = "invalid_request_error", param: str | None = None
) -> dict[str, object]:
    """OpenAI's error shape, so SDKs raise their usual exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}

"""Tags stored with a row: the X-Curation-Tags header, request metadata, user."""

from __future__ import annotations

from typing import Any

MAX_TAGS = 64
MAX_LEN = 256


def parse_header(value: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` (a bare ``k`` means ``k=true``); junk is dropped, not fatal."""
    tags: dict[str, str] = {}
    for item in (value or "").split(","):
        key, _, val = item.partition("=")
        key = key.strip()
        if key and len(tags) < MAX_TAGS:
            tags[key[:MAX_LEN]] = (val.strip() or "true")[:MAX_LEN] if _ else "true"
    return tags


def from_request(request: dict[str, Any], header: str | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    metadata = request.get("metadata")
    if isinstance(metadata, dict):
        tags.update({str(k)[:MAX_LEN]: str(v)[:MAX_LEN] for k, v in metadata.items()})
    if isinstance(request.get("user"), str):
        tags["user"] = request["user"][:MAX_LEN]
    tags.update(parse_header(header))
    return dict(list(tags.items())[:MAX_TAGS])

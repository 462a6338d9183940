"""Tags stored with a row: the X-Curation-Tags header, request metadata, user.

Tags are bounded, since a client can send any metadata on every call: one
capture brings at most MAX_TAGS keys, each cut to MAX_KEY_LEN characters and
its value to MAX_VALUE_LEN, and a row keeps at most MAX_TAGS keys over its
repeats (the merge in ``curation/db/sql/capture.sql``). 64 keys is far above
what a team tags a call with (a few: team, env, feature) and keeps a row's tags
under ~20 kB of text (64 x (64 + 256) characters).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAX_TAGS = 64
MAX_KEY_LEN = 64
MAX_VALUE_LEN = 256


def parse_header(value: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` (a bare ``k`` means ``k=true``); junk is dropped, not fatal."""
    tags: dict[str, str] = {}
    for item in (value or "").split(","):
        key, eq, val = item.partition("=")
        _put(tags, key.strip(), (val.strip() or "true") if eq else "true", replace=True)
    return tags


def from_request(request: dict[str, Any], header: str | None) -> dict[str, str]:
    """The capture's tags: the operator's header first, then the request's user, then its
    metadata, each key taken from the first of them that names it."""
    tags = parse_header(header)
    for key, val in _request_tags(request):
        _put(tags, key, val, replace=False)
    return tags


def _request_tags(request: dict[str, Any]) -> Iterator[tuple[str, str]]:
    user = request.get("user")
    if isinstance(user, str):
        yield "user", user
    metadata = request.get("metadata")
    if isinstance(metadata, dict):
        for key, val in metadata.items():
            yield str(key), val if isinstance(val, str) else str(val)


def _put(tags: dict[str, str], key: str, val: str, *, replace: bool) -> None:
    key = key[:MAX_KEY_LEN]
    if not key or (key not in tags and len(tags) >= MAX_TAGS):
        return
    if replace or key not in tags:
        tags[key] = val[:MAX_VALUE_LEN]

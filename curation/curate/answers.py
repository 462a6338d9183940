"""The answer a curator sees and edits. Pure."""

from __future__ import annotations

import json
from typing import Any


def message(row: dict[str, Any]) -> dict[str, Any]:
    """The assistant message in force: the correction if any, else the recorded one."""
    if row.get("corrected_response"):
        return dict(row["corrected_response"])
    choices = (row.get("response") or {}).get("choices") or [{}]
    return dict(choices[0].get("message") or {})


def text(msg: dict[str, Any]) -> str:
    if msg.get("content") is not None:
        return str(msg["content"])
    if msg.get("tool_calls"):
        return json.dumps(msg["tool_calls"], indent=2, ensure_ascii=False)
    return ""


def parse_json(text_: str) -> Any | None:
    try:
        return json.loads(text_)
    except ValueError:
        return None


def pretty(text_: str) -> str:
    """JSON answers indented; anything else as it is."""
    parsed = parse_json(text_)
    if parsed is None or not isinstance(parsed, (dict, list)):
        return text_
    return json.dumps(parsed, indent=2, ensure_ascii=False)


def edited_message(original: dict[str, Any], new_text: str) -> dict[str, Any]:
    """The correction for ``new_text``: tool calls stay tool calls (a JSON list)."""
    if original.get("tool_calls") and original.get("content") is None:
        return {"role": "assistant", "content": None, "tool_calls": json.loads(new_text)}
    return {"role": "assistant", "content": new_text}


def json_error(original_text: str, new_text: str) -> str | None:
    """When the answer was JSON, the edit must be JSON too; the parse error if not."""
    if parse_json(original_text) is None:
        return None
    try:
        json.loads(new_text)
    except ValueError as exc:
        return str(exc)
    return None

"""What a call asked: the user-visible prompt and the production system prompt.

``user_prompt`` is the dedup key. A single-turn call is keyed by its user
message; a multi-turn call by a rendering of the whole non-system
conversation, so two conversations that end alike never collide. Any JSON
is read (see ``shape``): an odd message renders as best it can, never fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from curation.capture.shape import arr, obj, text

SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class Prompt:
    user_prompt: str
    system_prompt: str | None


def content_text(content: Any) -> str:
    """Text of a message's content: a string, or the parts of a content array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part_text(part) for part in content)
    return json.dumps(content, ensure_ascii=False)


def _part_text(part: Any) -> str:
    if not isinstance(part, dict):
        return str(part)
    if part.get("type") in ("text", "input_text") or "text" in part:
        return str(part.get("text", ""))
    return f"[{part.get('type', 'part')}]"


def role(message: dict[str, Any]) -> str | None:
    return text(message.get("role"))


def _render(message: dict[str, Any]) -> str:
    name = role(message) or "?"
    rendered = content_text(message.get("content"))
    for call in arr(message.get("tool_calls")):
        fn = obj(obj(call).get("function"))
        rendered += f"\n[tool call {fn.get('name')}({fn.get('arguments', '')})]"
    if name == "tool":
        name = f"tool {message.get('tool_call_id', '')}".strip()
    return f"{name}: {rendered}"


def extract(request: dict[str, Any]) -> Prompt:
    messages = [m for m in arr(request.get("messages")) if isinstance(m, dict)]
    system = [content_text(m.get("content")) for m in messages if role(m) in SYSTEM_ROLES]
    rest = [m for m in messages if role(m) not in SYSTEM_ROLES]
    if len(rest) == 1 and role(rest[0]) == "user":
        user_prompt = content_text(rest[0].get("content"))
    else:
        user_prompt = "\n\n".join(_render(m) for m in rest)
    return Prompt(
        user_prompt=clean(user_prompt), system_prompt=clean("\n\n".join(system)) if system else None
    )


def clean(value: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")

"""What a call asked: the user-visible prompt and the production system prompt.

``user_prompt`` is the dedup key. A single-turn call is keyed by its user
message; a multi-turn call by a rendering of the whole non-system
conversation, so two conversations that end alike never collide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
        pieces = []
        for part in content:
            if not isinstance(part, dict):
                pieces.append(str(part))
            elif part.get("type") in ("text", "input_text") or "text" in part:
                pieces.append(str(part.get("text", "")))
            else:
                pieces.append(f"[{part.get('type', 'part')}]")
        return "\n".join(pieces)
    return json.dumps(content, ensure_ascii=False)


def _render(message: dict[str, Any]) -> str:
    role = str(message.get("role", "?"))
    text = content_text(message.get("content"))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        text += f"\n[tool call {fn.get('name')}({fn.get('arguments', '')})]"
    if role == "tool":
        role = f"tool {message.get('tool_call_id', '')}".strip()
    return f"{role}: {text}"


def extract(request: dict[str, Any]) -> Prompt:
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    system = [content_text(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES]
    rest = [m for m in messages if m.get("role") not in SYSTEM_ROLES]
    if len(rest) == 1 and rest[0].get("role") == "user":
        user_prompt = content_text(rest[0].get("content"))
    else:
        user_prompt = "\n\n".join(_render(m) for m in rest)
    return Prompt(
        user_prompt=clean(user_prompt), system_prompt=clean("\n\n".join(system)) if system else None
    )


def clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return text.replace("\x00", "\ufffd")

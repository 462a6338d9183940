"""What a call asked: the user-visible prompt and the production system prompt.

``user_prompt`` is the dedup key. A single-turn call is keyed by its user
message; a multi-turn call by a rendering of the whole non-system
conversation, so two conversations that end alike never collide. The
rendering leaves out what the provider made up (tool call ids are random per
run): a tool result is named by its call's function instead, so two identical
agent runs share one key. The ids stay in the recorded request. Any JSON is
read (see ``shape``): an odd message renders as best it can, never fails.
"""

from __future__ import annotations

import json
from collections import Counter
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


def _render(message: dict[str, Any], calls: dict[str, str]) -> str:
    """One message; learns the assistant's call ids into ``calls`` (id -> function label)."""
    name = role(message) or "?"
    rendered = content_text(message.get("content"))
    for call in arr(message.get("tool_calls")):
        fn = obj(obj(call).get("function"))
        rendered += f"\n[tool call {fn.get('name')}({fn.get('arguments', '')})]"
    calls.update(_call_labels(message))
    if name == "tool":
        label = calls.get(text(message.get("tool_call_id")) or "") or text(message.get("name"))
        name = f"tool {label}" if label else "tool"
    return f"{name}: {rendered}"


def _call_labels(message: dict[str, Any]) -> dict[str, str]:
    """Each tool call id of a message -> its function's name; ``name#2`` for the second call
    of the same function in one turn, so parallel results still pair with their calls."""
    calls = [obj(c) for c in arr(message.get("tool_calls"))]
    names = [obj(c.get("function")).get("name") for c in calls]
    total = Counter(str(n) for n in names if n is not None)
    seen: Counter[str] = Counter()
    labels: dict[str, str] = {}
    for call, fn_name in zip(calls, names, strict=True):
        if fn_name is None:
            continue
        label = str(fn_name)
        seen[label] += 1
        call_id = text(call.get("id"))
        if call_id:
            labels[call_id] = label if total[label] == 1 else f"{label}#{seen[label]}"
    return labels


def extract(request: dict[str, Any]) -> Prompt:
    system: list[str] = []
    rest: list[dict[str, Any]] = []
    for m in arr(request.get("messages")):
        if isinstance(m, dict):
            name = role(m)
            if name is not None and name in SYSTEM_ROLES:
                system.append(content_text(m.get("content")))
            else:
                rest.append(m)
    if len(rest) == 1 and role(rest[0]) == "user":
        user_prompt = content_text(rest[0].get("content"))
    else:
        calls: dict[str, str] = {}
        user_prompt = "\n\n".join(_render(m, calls) for m in rest)
    return Prompt(
        user_prompt=clean(user_prompt), system_prompt=clean("\n\n".join(system)) if system else None
    )


def clean(value: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")

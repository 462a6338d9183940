"""A recorded row as the row page shows it: the conversation as chat messages, the
answer pretty-printed when it is JSON, the request's parameters. Pure: any JSON in,
plain values out (the template escapes them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from curation.capture import flags, prompt, responses
from curation.capture.shape import arr, obj, text
from curation.curate import answers

CONVERSATION_KEYS = frozenset({"messages", "input", "instructions", "tools"})


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # pretty-printed when it is JSON


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant, tool, ...
    text: str
    is_json: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    label: str | None = None  # a tool result: the function it answers


def conversation(request: Any) -> list[Message]:
    """The request's messages (a Responses request's instructions and input read as chat)."""
    given = obj(request)
    if "messages" in given:
        raw = [m for m in arr(given.get("messages")) if isinstance(m, dict)]
    else:
        raw = responses.conversation(given).messages
    calls: dict[str, str] = {}
    out = []
    for m in raw:
        for call in arr(m.get("tool_calls")):
            call_id, name = (
                text(obj(call).get("id")),
                text(obj(obj(call).get("function")).get("name")),
            )
            if call_id and name:
                calls[call_id] = name
        out.append(message(m, calls))
    return out


def message(m: dict[str, Any], calls: dict[str, str] | None = None) -> Message:
    """One chat message; ``calls`` (tool call id -> function) names a tool result."""
    body = prompt.content_text(m.get("content"))
    is_json = answers.parse_json(body) is not None and body.strip()[:1] in ("{", "[")
    label = None
    if prompt.role(m) == "tool":
        label = (calls or {}).get(text(m.get("tool_call_id")) or "") or text(m.get("name"))
    return Message(
        role=prompt.role(m) or "?",
        text=answers.pretty(body) if is_json else body,
        is_json=is_json,
        tool_calls=tuple(_tool_call(c) for c in arr(m.get("tool_calls"))),
        label=label,
    )


def _tool_call(call: Any) -> ToolCall:
    fn = obj(obj(call).get("function"))
    args = fn.get("arguments")
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(name=text(fn.get("name")) or "?", arguments=answers.pretty(shown))


def answer(row: dict[str, Any]) -> Message:
    """The recorded answer (not the correction: the page shows that beside it)."""
    return message({"role": "assistant", **answers.recorded(row.get("response"))})


def parameters(request: Any) -> dict[str, str]:
    """The request's settings (model, temperature, response_format, ...), each as JSON."""
    return {
        k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
        for k, v in sorted(obj(request).items())
        if k not in CONVERSATION_KEYS
    }


def tools(request: Any) -> list[str]:
    """The tools the request offered, each pretty-printed."""
    return [json.dumps(t, indent=2, ensure_ascii=False) for t in arr(obj(request).get("tools"))]


def editor_text(row: dict[str, Any]) -> tuple[str, bool]:
    """What the correction editor starts with (the answer in force, JSON indented), and
    whether it must stay JSON (the page and the server both refuse anything else)."""
    original = answers.text(answers.message(row))
    return answers.pretty(original), answers.parse_json(original) is not None


# What each automatic flag (capture/flags.py) means, in a curator's words: the row page
# lists them above the keys, because including the row accepts them.
FLAG_MEANINGS = {
    flags.TRUNCATED: "the answer was cut off at the token limit (finish_reason length)",
    flags.CONTENT_FILTER: "the provider's content filter stopped or withheld the answer",
    flags.EMPTY: "the answer has no text, no tool call and no refusal",
    flags.REFUSAL: "the model refused to help (a refusal field, or a short 'I can't help with')",
    flags.INVALID_JSON: "the request asked for JSON and the answer is not JSON or breaks the schema",
    flags.TOOL_ARGS: "a tool call's arguments are not JSON, break its schema, or name no tool "
    "the request offered",
    flags.MODEL_MISMATCH: "another model answered than the one the request asked for",
    flags.CHECK_FAILED: "checking this row failed (a bug, in the server's log): look at it "
    "yourself before including it",
}


def flag_list(reasons: Any) -> list[tuple[str, str]]:
    """A row's flags with what each means; an unknown reason still shows, as itself."""
    given = [r for r in arr(reasons) if isinstance(r, str)]
    return [(r, FLAG_MEANINGS.get(r, "a flag this version does not describe")) for r in given]

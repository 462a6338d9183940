"""The answer a curator sees and edits. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from curation.capture import responses


def message(row: dict[str, Any]) -> dict[str, Any]:
    """The assistant message in force: the correction if any, else the recorded one."""
    if row.get("corrected_response"):
        return dict(row["corrected_response"])
    return recorded(row.get("response"))


def recorded(response: Any) -> dict[str, Any]:
    """The recorded assistant message: a chat completion's first choice, or a Responses
    reply's output read as one (its text, and function calls as ``tool_calls``)."""
    if responses.is_response(response):
        return responses.answer(response).message
    choices = (response if isinstance(response, dict) else {}).get("choices") or [{}]
    first = choices[0] if isinstance(choices, list) and isinstance(choices[0], dict) else {}
    return dict(first.get("message") or {})


def text(msg: dict[str, Any]) -> str:
    if msg.get("content") is not None:
        return str(msg["content"])
    if msg.get("tool_calls"):
        return json.dumps(msg["tool_calls"], indent=2, ensure_ascii=False)
    return ""


def parse_json(text_: str) -> Any | None:
    try:
        return json.loads(text_)
    except (ValueError, RecursionError):  # recorded answers are untrusted: any text at all
        return None


def pretty(text_: str) -> str:
    """JSON answers indented; anything else as it is."""
    parsed = parse_json(text_)
    if parsed is None or not isinstance(parsed, (dict, list)):
        return text_
    return json.dumps(parsed, indent=2, ensure_ascii=False)


def edited_message(original: dict[str, Any], new_text: str) -> dict[str, Any]:
    """The correction for ``new_text``: tool calls stay tool calls (a JSON list), and a
    JSON answer keeps the serialisation of ``original``'s content (``restyle``)."""
    if original.get("tool_calls") and original.get("content") is None:
        return {"role": "assistant", "content": None, "tool_calls": json.loads(new_text)}
    content = original.get("content")
    return {
        "role": "assistant",
        "content": restyle(content, new_text) if isinstance(content, str) else new_text,
    }


def correction(row: dict[str, Any], new_text: str) -> dict[str, Any]:
    """What to store when a curator saves ``new_text`` for ``row``: its shape from the
    message in force (tool calls stay tool calls), a JSON text in the style of the
    *recorded* answer, so an earlier correction in another style is not copied."""
    stored = edited_message(message(row), new_text)
    original = recorded(row.get("response")).get("content")
    if isinstance(stored.get("content"), str) and isinstance(original, str):
        stored["content"] = restyle(original, stored["content"])
    return stored


def unchanged(row: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether storing ``stored`` would change nothing (a save of the same answer).
    A correction written in another style than the original is a change: saving it
    again is how a curator fixes what ``curation doctor`` reports."""
    if row.get("corrected_response"):
        return dict(row["corrected_response"]) == stored
    first = recorded(row.get("response"))
    return first.get("content") == stored.get("content") and not stored.get("tool_calls")


@dataclass(frozen=True)
class Style:
    """How a JSON text is written: what ``json.dumps`` needs to write another alike."""

    item_separator: str = ","
    key_separator: str = ":"
    indent: str | None = None  # the whitespace of one level; None: all on one line
    ensure_ascii: bool = False


def restyle(original: str, new_text: str) -> str:
    """``new_text`` as it should be stored beside the recorded ``original``.

    A model learns the format of its targets: if the recorded answers are
    compact JSON, a correction saved with spaces (or indented, as the editor
    shows it) teaches a second format and fails an exact comparison. So a JSON
    correction of a JSON answer is written in the original's style, its keys
    in the curator's order; anything else is kept exactly as written.
    """
    style = style_of(original)
    parsed = _parsed(new_text) if style is not None else None
    if style is None or parsed is None:
        return new_text
    return dump(parsed[0], style)


def dump(value: Any, style: Style) -> str:
    return json.dumps(
        value,
        indent=style.indent,
        separators=(style.item_separator, style.key_separator),
        ensure_ascii=style.ensure_ascii,
    )


def same_style(original: str, corrected: str) -> bool:
    """False only when both are JSON and ``corrected`` is not written as ``original`` is."""
    return restyle(original, corrected) == corrected


def style_of(text_: str) -> Style | None:
    """The style of a JSON text; None if it is not JSON.

    Read from the whitespace outside strings around the first ``,`` and ``:``
    inside a container, the indent after its first line break, and whether
    characters beyond ASCII are escaped (``\\u00e9``) or written as they are.
    """
    if _parsed(text_) is None:
        return None
    item = key = indent = None
    escaped = raw = in_string = False
    depth = i = 0
    while i < len(text_):
        ch = text_[i]
        if in_string:
            if ch == "\\":
                escaped = escaped or _escapes_non_ascii(text_, i)
                i += 1
            elif ch == '"':
                in_string = False
            elif ord(ch) > 0x7F:
                raw = True
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and item is None:
            item = "," + _blank_after(text_, i + 1)
        elif ch == ":" and key is None:
            key = _blank_before(text_, i) + ":" + _blank_after(text_, i + 1)
        elif ch == "\n" and depth > 0 and indent is None:
            indent = _blank_after(text_, i + 1)
        i += 1
    ensure_ascii = escaped and not raw
    if indent is not None:
        return Style(",", (key or ": ").replace("\n", ""), indent, ensure_ascii)
    spaced = " " in (item or "") + (key or "")
    default_item, default_key = (", ", ": ") if spaced else (",", ":")
    return Style(item or default_item, key or default_key, None, ensure_ascii)


def _parsed(text_: str) -> tuple[Any] | None:
    """``(value,)`` if ``text_`` is JSON (``null`` included), else None."""
    try:
        return (json.loads(text_),)
    except (ValueError, RecursionError):
        return None


def _blank_after(text_: str, start: int) -> str:
    end = start
    while end < len(text_) and text_[end] in " \t\r\n":
        end += 1
    return text_[start:end]


def _blank_before(text_: str, end: int) -> str:
    start = end
    while start > 0 and text_[start - 1] in " \t\r\n":
        start -= 1
    return text_[start:end]


def _escapes_non_ascii(text_: str, backslash: int) -> bool:
    """Whether the escape at ``backslash`` is ``\\uXXXX`` for a character beyond ASCII."""
    digits = text_[backslash + 2 : backslash + 6]
    if text_[backslash + 1 : backslash + 2] != "u" or len(digits) != 4:
        return False
    try:
        return int(digits, 16) > 0x7F
    except ValueError:
        return False


def json_error(original_text: str, new_text: str) -> str | None:
    """When the answer was JSON, the edit must be JSON too; the parse error if not."""
    if parse_json(original_text) is None:
        return None
    try:
        json.loads(new_text)
    except ValueError as exc:
        return str(exc)
    return None

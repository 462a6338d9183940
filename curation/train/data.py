"""Exported training files -> the rows TRL trains on. Pure.

The export writes OpenAI's shapes: chat ``{"messages", "tools"}`` lines for
SFT and ``{"input": {"messages", "tools"}, "preferred_output",
"non_preferred_output"}`` lines for DPO. TRL wants conversational
``{"messages"}`` and ``{"prompt", "chosen", "rejected"}`` rows, with
``tools`` handed to the chat template.

Tool-call ``arguments`` are a JSON string in OpenAI's format. Chat templates
differ: some print a string as is (Qwen3), others apply ``tojson`` to
whatever they get and so double-encode a string (Qwen2.5, Llama 3.1), which
teaches the model to emit escaped JSON. ``ARGUMENT_FORMS`` names the two
forms; the trainer detects which one the template expects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curation.errors import InvalidInput

ARGUMENT_FORMS = ("string", "dict")  # what tool-call arguments are handed to the template as
METHODS = ("supervised", "dpo")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL file; a bad line is an InvalidInput naming it."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise InvalidInput(f"{path}:{number} is not JSON: {exc}") from exc
                if not isinstance(item, dict):
                    raise InvalidInput(f"{path}:{number} is not a JSON object")
                yield item
    except OSError as exc:
        raise InvalidInput(f"cannot read training file {path}: {exc.strerror}") from exc


def rows(path: Path, method: str, arguments: str) -> list[dict[str, Any]]:
    """Every line of an exported file as a TRL row."""
    convert = sft_row if method == "supervised" else dpo_row
    out = []
    for number, item in enumerate(read_jsonl(path), 1):
        try:
            out.append(convert(item, arguments))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(
                f"{path}:{number} is not a {method} example as `curation export` writes it: {exc}"
            ) from exc
    if not out:
        raise InvalidInput(f"{path} holds no examples: export the namespace again")
    return out


def sft_row(item: dict[str, Any], arguments: str = "string") -> dict[str, Any]:
    """``{"messages", "tools"}`` -> TRL's conversational language-modeling row."""
    messages = item["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    return {
        "messages": [message(m, arguments) for m in messages],
        "tools": tools_json(item.get("tools")),
    }


def dpo_row(item: dict[str, Any], arguments: str = "string") -> dict[str, Any]:
    """OpenAI's preference shape -> TRL's conversational prompt/chosen/rejected row."""
    given = item["input"]
    if not isinstance(given, dict):
        raise ValueError("input must be an object")
    return {
        "prompt": [message(m, arguments) for m in given["messages"]],
        "chosen": [message(m, arguments) for m in item["preferred_output"]],
        "rejected": [message(m, arguments) for m in item["non_preferred_output"]],
        "tools": tools_json(given.get("tools")),
    }


def tools_json(tools: Any) -> str | None:
    """Tools as one JSON string: TRL decodes it per row, and Arrow cannot merge
    the differently shaped JSON schemas of different rows into one type."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ValueError("tools must be a list")
    return json.dumps(tools, ensure_ascii=False)


def message(m: Any, arguments: str = "string") -> dict[str, Any]:
    """One chat message in the form chat templates read.

    Text parts are joined into one string (most templates print ``content``
    as is); an assistant turn without content gets ``""`` (some templates
    concatenate it); tool-call arguments take the form ``arguments`` names.
    """
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise ValueError("a message must be an object with a role")
    out = {k: v for k, v in m.items() if v is not None}
    out["content"] = text(out.get("content"))
    if out.get("tool_calls"):
        out["tool_calls"] = [tool_call(c, arguments) for c in out["tool_calls"]]
    return out


def text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise ValueError(f"content must be a string or a list of parts, not {type(content).__name__}")


def tool_call(call: Any, arguments: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ValueError("a tool call must be an object with a function")
    function = dict(call["function"])
    function["arguments"] = argument_form(function.get("arguments"), arguments)
    return {**call, "function": function}


def argument_form(value: Any, form: str) -> Any:
    """Arguments as a string or a dict. A string that is not a JSON object stays
    a string: it is what the teacher emitted, and the model should learn it."""
    if form == "dict" and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    if form == "string" and isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def probe_messages(arguments: Any) -> list[dict[str, Any]]:
    """A conversation whose rendering shows how a template prints ``arguments``."""
    return [
        {"role": "user", "content": "probe"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_probe",
                    "type": "function",
                    "function": {"name": "probe", "arguments": arguments},
                }
            ],
        },
    ]


PROBE_ARGUMENTS = {"curation_probe": 1}
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe",
            "parameters": {"type": "object", "properties": {"curation_probe": {"type": "integer"}}},
        },
    }
]


def detect_argument_form(rendered: str | None) -> str:
    """Which form a template expects, from the probe rendered with a JSON string
    (None: the template raised on it). A template that escapes the quotes of the
    string double-encodes it, so it wants a dict; otherwise the string is kept,
    byte for byte what the teacher emitted."""
    if rendered is None or '\\"curation_probe\\"' in rendered:
        return "dict"
    return "string"

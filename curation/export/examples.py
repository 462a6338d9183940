"""A curated row -> one training example (or preference pair). Pure.

The production system/developer prompt is dropped and the namespace's short
training prompt put in its place: the fine-tuned model will be called with
the short one, so that is what it must learn from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from curation.capture.prompt import SYSTEM_ROLES, role
from curation.capture.shape import arr, obj
from curation.export import responses

ASSISTANT_KEYS = ("content", "tool_calls", "refusal", "function_call")


@dataclass(frozen=True)
class SourceRow:
    id: int
    version: int
    user_prompt: str
    request: dict[str, Any]
    response: dict[str, Any]
    corrected_response: dict[str, Any] | None


class Skip(ValueError):
    """A row that cannot become an example; the message says why.

    A recorded request or response is production traffic of any shape (and a
    curator may edit it), so building an example reads it only through the
    total accessors of ``capture.shape``: a wrong type is a Skip, never a crash.
    """


def recorded_answer(response: dict[str, Any]) -> dict[str, Any]:
    choices = arr(obj(response).get("choices"))
    if not choices or not isinstance(choices[0], dict):
        raise Skip("the recorded response has no choices")
    return _assistant(choices[0].get("message") or {})


def _assistant(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise Skip("the answer is not a message object")
    out: dict[str, Any] = {"role": "assistant"}
    if message.get("content") is not None:
        out["content"] = message["content"]
    if message.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c) for c in _list(message["tool_calls"], "tool_calls")]
    if "content" not in out and "tool_calls" not in out:
        refusal = message.get("refusal")
        raise Skip(
            "the answer is a refusal" if refusal else "the answer has no content and no tool calls"
        )
    return out


def _tool_call(call: Any) -> dict[str, Any]:
    function = obj(call).get("function")
    if not isinstance(function, dict):
        raise Skip("a recorded tool call has no function object")
    return {
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name"), "arguments": function.get("arguments", "")},
    }


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Skip(f"the recorded {what} is not a list")
    return value


def answer(row: SourceRow) -> dict[str, Any]:
    """The curator's correction if any, else the recorded answer."""
    if row.corrected_response is not None:
        fixed = row.corrected_response
        if isinstance(fixed, str):
            return {"role": "assistant", "content": fixed}
        if isinstance(fixed, dict) and "choices" in fixed:
            return recorded_answer(fixed)
        if isinstance(fixed, dict):
            return _assistant(fixed)
        raise Skip("corrected_response is neither a message nor text")
    return recorded_answer(row.response)


def conversation(request: dict[str, Any], system_prompt: str | None) -> list[dict[str, Any]]:
    messages = [
        {k: v for k, v in m.items() if v is not None}
        for m in map(_message, _list(obj(request).get("messages"), "messages"))
        if role(m) not in SYSTEM_ROLES
    ]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or role(message) is None:
        raise Skip("a recorded message has no role (a string)")
    return message


def as_chat(row: SourceRow) -> SourceRow:
    """A Responses API row as the chat row it amounts to (export/responses.py); others as is."""
    if not responses.is_row(row.response):
        return row
    try:
        request, response = responses.as_chat(row.request, row.response)
    except responses.NotChat as exc:
        raise Skip(str(exc)) from exc
    return replace(row, request=request, response=response)


def chat_example(row: SourceRow, system_prompt: str | None) -> dict[str, Any]:
    row = as_chat(row)
    example: dict[str, Any] = {"messages": [*conversation(row.request, system_prompt), answer(row)]}
    if row.request.get("tools"):
        example["tools"] = row.request["tools"]
        if "parallel_tool_calls" in row.request:
            example["parallel_tool_calls"] = row.request["parallel_tool_calls"]
    return example


def preference_pair(row: SourceRow, system_prompt: str | None) -> dict[str, Any]:
    """OpenAI's DPO format: the correction preferred over the original answer."""
    row = as_chat(row)
    if row.corrected_response is None:
        raise Skip("no correction, so no preference pair")
    preferred, original = answer(row), recorded_answer(row.response)
    if preferred == original:
        raise Skip("the correction equals the original answer")
    pair: dict[str, Any] = {
        "input": {"messages": conversation(row.request, system_prompt)},
        "preferred_output": [preferred],
        "non_preferred_output": [original],
    }
    if row.request.get("tools"):
        pair["input"]["tools"] = row.request["tools"]
    return pair


_PLAIN_TURNS = frozenset({"user", "assistant"})


def plain_chat(
    request: Any, response: Any, corrected: Any, system_prompt: str | None
) -> list[dict[str, Any]] | None:
    """The messages ``chat_example`` builds for a row of plain text turns (the common
    case), built without its general path; None for any other shape, which
    ``chat_example`` then builds. Plain: every kept turn is exactly {role: user or
    assistant, content: non-empty text}, no tools, the answer (recorded, or a
    correction as text) non-empty text without tool calls. Such an example passes
    every check of ``validate.check_chat``. The turns are the request's own dicts,
    so their keys keep their order (tests/test_export_golden.py compares bytes)."""
    if type(request) is not dict or type(response) is not dict or request.get("tools"):
        return None
    if response.get("object") == "response" or "output" in response:
        return None  # a Responses row (or close to one): as_chat rebuilds its request
    turns = request.get("messages")
    if type(turns) is not list:
        return None
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for m in turns:
        if type(m) is not dict:
            return None
        r = m.get("role")
        if type(r) is not str:
            return None
        if r in SYSTEM_ROLES:
            continue
        content = m.get("content")
        if r not in _PLAIN_TURNS or len(m) != 2 or type(content) is not str or not content:
            return None
        messages.append(m)
    answer = corrected if corrected is not None else _plain_answer(response)
    if type(answer) is not str or not answer:
        return None
    messages.append({"role": "assistant", "content": answer})
    return messages


def _plain_answer(response: dict[str, Any]) -> str | None:
    """The recorded answer's text when ``recorded_answer`` would give just that."""
    choices = response.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict:
        return None
    message = choices[0].get("message")
    if type(message) is not dict or message.get("tool_calls"):
        return None
    content = message.get("content")
    return content if type(content) is str else None

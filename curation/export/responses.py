"""A recorded Responses API row read as the chat row it amounts to. Pure.

Training files, preference pairs, eval and relabel all speak chat, so a
Responses row becomes a chat request and a chat.completion, and the chat
rules do the rest (the short training prompt in place of the production
one, the curator's correction over the recorded answer, tools beside the
messages):

- ``instructions`` and system/developer input items: the production system
  prompt, which the short-prompt rule drops;
- input items: messages; ``function_call`` / ``function_call_output`` items:
  the assistant's ``tool_calls`` and ``tool`` messages;
- the output: the assistant message (its text, and function calls as
  ``tool_calls``); reasoning items are left out;
- ``tools``: function tools in the chat shape; hosted tools have none;
- ``temperature``, ``top_p``, ``max_output_tokens``, ``text.format`` and
  ``tool_choice``: their chat equivalents, for eval and relabel calls.

Turns OpenAI kept for the call arrive rebuilt by the database
(``curation_responses_request``): a request that still names its
``previous_response_id`` has an earlier turn that was not recorded. Such a
row, one whose turns live elsewhere (``conversation``, a stored ``prompt``,
an ``item_reference``), or one holding items no chat message can (hosted
tool calls) raises ``NotChat`` with the reason, and export skips it.
"""

from __future__ import annotations

from typing import Any

from curation.capture import responses as capture
from curation.capture.shape import obj, text

# request fields with the same meaning in chat completions
SHARED = ("temperature", "top_p", "parallel_tool_calls", "seed", "metadata", "user", "store")


class NotChat(ValueError):
    """A Responses row with no faithful chat form; the message says why."""


def is_row(response: Any) -> bool:
    """Whether a recorded response is a Responses API reply."""
    return capture.is_response(response)


def as_chat(
    request: dict[str, Any], response: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat request and chat.completion a Responses row amounts to."""
    return chat_request(request), chat_completion(response)


def chat_request(request: dict[str, Any]) -> dict[str, Any]:
    previous = request.get("previous_response_id")
    if previous is not None:
        raise NotChat(
            f"its earlier turns (previous_response_id {text(previous) or '?'}) were not "
            "recorded in this namespace, so its conversation is incomplete"
        )
    conv = capture.conversation(request)
    if conv.gaps:
        raise NotChat(f"its conversation {conv.gaps[0]}")
    out: dict[str, Any] = {k: request[k] for k in SHARED if k in request}
    out["messages"] = conv.messages
    tools = capture.chat_tools(request.get("tools"))
    if tools:
        out["tools"] = tools
    else:
        out.pop("parallel_tool_calls", None)
    if isinstance(request.get("max_output_tokens"), int):
        out["max_completion_tokens"] = request["max_output_tokens"]
    response_format = _response_format(obj(request.get("text")).get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    tool_choice = _tool_choice(request.get("tool_choice"))
    if tool_choice is not None and tools:
        out["tool_choice"] = tool_choice
    return out


def chat_completion(response: dict[str, Any]) -> dict[str, Any]:
    answer = capture.answer(response)
    if answer.gaps:
        raise NotChat(answer.gaps[0])
    message = dict(answer.message)
    if answer.refusal is not None:
        message["refusal"] = answer.refusal
    usage = obj(response.get("usage"))
    return {
        "id": response.get("id"),
        "object": "chat.completion",
        "model": response.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens"),
        },
    }


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``; plain text needs none."""
    f = obj(fmt)
    if f.get("type") == "json_object":
        return {"type": "json_object"}
    if f.get("type") == "json_schema":
        keys = ("name", "description", "schema", "strict")
        return {"type": "json_schema", "json_schema": {k: f[k] for k in keys if k in f}}
    return None


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    c = obj(choice)
    if c.get("type") == "function" and isinstance(c.get("name"), str):
        return {"type": "function", "function": {"name": c["name"]}}
    return None

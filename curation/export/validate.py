"""Check examples as OpenAI does before it accepts a training file. Pure.

Error names follow OpenAI's cookbook format checks (data_type,
missing_messages_list, message_missing_key, message_unrecognized_key,
unrecognized_role, missing_content, example_missing_assistant_message),
plus tool-call shapes, ``weight``, the last message being the answer and
the length (``too_long``, counted by ``tokens.count`` for the model).
"""

from __future__ import annotations

from typing import Any

MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id", "refusal"}
)
ROLES = frozenset({"system", "user", "assistant", "function", "tool", "developer"})


class Invalid(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def check_length(tokens: int, limit: int | None, model: str) -> None:
    """An example (or either side of a pair) must fit the model's per-example limit."""
    if limit is not None and tokens > limit:
        raise Invalid("too_long", f"{tokens} tokens, over {model}'s limit of {limit}")


def check_chat(example: Any) -> None:
    if not isinstance(example, dict):
        raise Invalid("data_type", "an example must be a JSON object")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("missing_messages_list", "no messages list")
    for i, message in enumerate(messages):
        _check_message(i, message)
    if not any(m.get("role") == "assistant" for m in messages):
        raise Invalid("example_missing_assistant_message", "no assistant message")
    if messages[-1].get("role") != "assistant":
        raise Invalid(
            "last_message_not_assistant", "the last message must be the assistant's answer"
        )
    tools = example.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(_is_tool(t) for t in tools)):
        raise Invalid(
            "invalid_tools", "tools must be a list of {type: function, function: {name, ...}}"
        )


def _check_message(i: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise Invalid("data_type", f"message {i} is not an object")
    if "role" not in message or not any(
        k in message for k in ("content", "tool_calls", "function_call")
    ):
        raise Invalid("message_missing_key", f"message {i} needs a role and content")
    if not message.keys() <= MESSAGE_KEYS:
        extra = sorted(set(message) - MESSAGE_KEYS)
        raise Invalid("message_unrecognized_key", f"message {i} has {', '.join(extra)}")
    role = message["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise Invalid("unrecognized_role", f"message {i} has role {role!r}")
    content = message.get("content")
    has_calls = bool(message.get("tool_calls") or message.get("function_call"))
    if (content is None or content == "" or content == []) and not has_calls:
        raise Invalid("missing_content", f"message {i} ({role}) has no content")
    if content is not None and not isinstance(content, (str, list)):
        raise Invalid("missing_content", f"message {i} content is neither text nor parts")
    if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
        raise Invalid(
            "invalid_weight", f"message {i}: weight is 0 or 1, on assistant messages only"
        )
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise Invalid("invalid_tool_call", f"message {i}: tool_calls is not a list")
    for call in calls:
        if not _is_tool_call(call):
            raise Invalid(
                "invalid_tool_call",
                f"message {i} has a tool call without id, type function, name and arguments",
            )
    if role == "tool" and not message.get("tool_call_id"):
        raise Invalid("message_missing_key", f"message {i} (tool) needs tool_call_id")


def _is_tool_call(call: Any) -> bool:
    fn = call.get("function") if isinstance(call, dict) else None
    return (
        isinstance(fn, dict)
        and bool(call.get("id"))
        and call.get("type") == "function"
        and isinstance(fn.get("name"), str)
        and bool(fn["name"])
        and isinstance(fn.get("arguments"), str)
    )


def _is_tool(tool: Any) -> bool:
    return (
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("function"), dict)
        and bool(tool["function"].get("name"))
    )


def check_preference(pair: Any) -> None:
    if not isinstance(pair, dict) or not isinstance(pair.get("input"), dict):
        raise Invalid("data_type", "a preference example needs an input object")
    messages = pair["input"].get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("missing_messages_list", "input has no messages")
    for i, message in enumerate(messages):
        _check_message(i, message)
    for key in ("preferred_output", "non_preferred_output"):
        out = pair.get(key)
        if not (
            isinstance(out, list)
            and len(out) == 1
            and isinstance(out[0], dict)
            and out[0].get("role") == "assistant"
        ):
            raise Invalid(
                "example_missing_assistant_message", f"{key} must be one assistant message"
            )
        _check_message(0, out[0])

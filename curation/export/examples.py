"""A curated row -> one training example (or preference pair). Pure.

The production system/developer prompt is dropped and the namespace's short
training prompt put in its place: the fine-tuned model will be called with
the short one, so that is what it must learn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.capture.prompt import SYSTEM_ROLES

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
    """A row that cannot become an example; the message says why."""


def recorded_answer(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise Skip("the recorded response has no choices")
    return _assistant(choices[0].get("message") or {})


def _assistant(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    if message.get("content") is not None:
        out["content"] = message["content"]
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": c.get("id"),
                "type": c.get("type", "function"),
                "function": {
                    "name": c["function"].get("name"),
                    "arguments": c["function"].get("arguments", ""),
                },
            }
            for c in message["tool_calls"]
            if isinstance(c, dict) and isinstance(c.get("function"), dict)
        ]
    if "content" not in out and "tool_calls" not in out:
        refusal = message.get("refusal")
        raise Skip(
            "the answer is a refusal" if refusal else "the answer has no content and no tool calls"
        )
    return out


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
        for m in request.get("messages") or []
        if isinstance(m, dict) and m.get("role") not in SYSTEM_ROLES
    ]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_example(row: SourceRow, system_prompt: str | None) -> dict[str, Any]:
    example: dict[str, Any] = {"messages": [*conversation(row.request, system_prompt), answer(row)]}
    if row.request.get("tools"):
        example["tools"] = row.request["tools"]
        if "parallel_tool_calls" in row.request:
            example["parallel_tool_calls"] = row.request["parallel_tool_calls"]
    return example


def preference_pair(row: SourceRow, system_prompt: str | None) -> dict[str, Any]:
    """OpenAI's DPO format: the correction preferred over the original answer."""
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

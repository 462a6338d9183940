"""What each model is asked, and what the curated answer is. Pure.

A fine-tuned model is called as it will be served: the namespace's short
prompt and the conversation. The baseline is called as production called
it: the recorded request, production prompt included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from curation.export import examples, responses

# request fields that describe this call's transport, not the task
DROPPED = frozenset(
    {"model", "messages", "stream", "stream_options", "n", "metadata", "user", "store", "seed"}
)


class Chat(Protocol):
    """One chat completion: (assistant message, usage, latency in ms); ``Provider`` is one."""

    def chat(self, **request: Any) -> tuple[dict[str, Any], dict[str, Any], float]: ...


@dataclass(frozen=True)
class Routed:
    """Students asked at the endpoint serving them, the baseline at the provider."""

    students: frozenset[str]
    student: Chat
    teacher: Chat | None = None

    def chat(self, **request: Any) -> tuple[dict[str, Any], dict[str, Any], float]:
        if self.teacher is None or request.get("model") in self.students:
            return self.student.chat(**request)
        return self.teacher.chat(**request)


def is_student(model: str, short: bool) -> bool:
    return short or model.startswith("ft:")


def chat_form(recorded: dict[str, Any], api: str) -> dict[str, Any]:
    """A recorded request as the chat request it amounts to: a Responses API call
    converted (``NotChat`` when it has no chat form), a chat call as it is."""
    return responses.chat_request(recorded) if api == "responses" else recorded


def request_for(
    model: str, recorded: dict[str, Any], short_prompt: str | None, student: bool
) -> dict[str, Any]:
    params = {k: v for k, v in recorded.items() if k not in DROPPED}
    if student:
        messages = examples.conversation(recorded, short_prompt)
    else:
        messages = list(recorded.get("messages") or [])
    return {**params, "model": model, "messages": messages}


def answer_text(message: dict[str, Any]) -> str:
    """What is compared: the content, else the tool calls (name and arguments) as JSON."""
    if message.get("content") is not None:
        return str(message["content"])
    calls = [
        {"name": c["function"]["name"], "arguments": _args(c["function"].get("arguments"))}
        for c in message.get("tool_calls") or []
        if isinstance(c, dict) and c.get("function")
    ]
    return json.dumps(calls, sort_keys=True) if calls else ""


def _args(raw: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def expected_text(source: examples.SourceRow) -> str:
    return answer_text(examples.answer(source))

"""Reassemble a streamed chat completion (SSE chunks) into one chat.completion.

Handles content and refusal deltas, tool_call deltas merged by index, the
legacy function_call, logprobs, finish_reason, several choices (n>1) and
the usage chunk sent with ``stream_options.include_usage``. A stream with
an error event is not a completion: ``None``; nor is one without ``[DONE]``
unless every choice carries its finish_reason (the proxy spools a stream only
at ``[DONE]`` or at a clean end of the upstream's body, and some
OpenAI-compatible engines, ``transformers serve`` among them, never send
``[DONE]``). A chunk
that breaks the shape a merge relies on (an event that is not an object, a
delta that is not one, an index that is not a small integer) raises
``Unrecordable``; odd optional fields are skipped.
"""

from __future__ import annotations

from typing import Any

import orjson

from curation.capture.shape import (
    Unrecordable,
    arr,
    expect_obj,
    expect_text,
    index,
    obj,
)

MAX_CHOICES = 1024
MAX_TOOL_CALLS = 4096
_TEXT_KEYS = ("content", "refusal", "reasoning_content")  # deltas appended to the message


def events(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON ``data:`` events of an SSE body, and whether ``[DONE]`` came."""
    out: list[dict[str, Any]] = []
    done = False
    for raw in body.replace(b"\r\n", b"\n").split(b"\n"):
        if not raw.startswith(b"data:"):
            continue
        data = raw[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        if data:
            out.append(_event(data))
    return out, done


def _event(data: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Unrecordable(f"stream event is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise Unrecordable("stream event is not a JSON object")
    return event


def reassemble(body: bytes) -> dict[str, Any] | None:
    chunks, done = events(body)
    if not chunks or any("error" in c for c in chunks):
        return None
    first = chunks[0]
    result: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
    }
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for key in ("system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                result[key] = chunk[key]
        if chunk.get("usage"):
            result["usage"] = chunk["usage"]
        delta_choices = chunk.get("choices")
        if delta_choices is not None and not isinstance(delta_choices, list):
            raise Unrecordable("stream chunk choices is not a JSON array")
        for delta_choice in delta_choices or []:
            _merge_choice(choices, expect_obj(delta_choice, "stream choice"))
    if not done and (not choices or any(c["finish_reason"] is None for c in choices.values())):
        return None
    result["choices"] = [_finish(choices[i]) for i in sorted(choices)]
    return result


def _merge_choice(choices: dict[int, dict[str, Any]], chunk: dict[str, Any]) -> None:
    # the common chunk (an int index, an object delta, a piece of text) is checked
    # inline; anything else goes through the shape helpers, which raise as they must
    at = chunk.get("index")
    if type(at) is not int or not 0 <= at < MAX_CHOICES:
        at = index(at, 0, MAX_CHOICES, "stream choice")
    choice = choices.get(at)
    if choice is None:
        choice = choices[at] = {
            "index": at,
            "message": {"role": "assistant"},
            "logprobs": None,
            "finish_reason": None,
        }
    delta = chunk.get("delta")
    if type(delta) is not dict:
        delta = expect_obj(delta, "stream delta")
    if delta:
        _merge_delta(choice["message"], delta)
    if chunk.get("logprobs"):
        lp = choice["logprobs"] or {}
        for key, values in obj(chunk["logprobs"]).items():
            lp[key] = (lp.get(key) or []) + arr(values)
        choice["logprobs"] = lp
    if chunk.get("finish_reason") is not None:
        choice["finish_reason"] = chunk["finish_reason"]


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    role = delta.get("role")
    if role is not None and expect_text(role, "stream delta role"):
        message["role"] = role
    for key in _TEXT_KEYS:
        piece = delta.get(key)
        if piece is not None:
            if type(piece) is not str:
                piece = expect_text(piece, f"stream delta {key}")
            message[key] = message.get(key, "") + piece
    if delta.get("function_call"):
        _append_function(
            message.setdefault("function_call", {"name": "", "arguments": ""}),
            expect_obj(delta["function_call"], "stream function_call"),
        )
    tool_calls = delta.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise Unrecordable("stream tool_calls is not a JSON array")
    for call in tool_calls or []:
        _merge_tool_call(message.setdefault("tool_calls", {}), expect_obj(call, "stream tool call"))


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    at = index(delta.get("index"), len(calls), MAX_TOOL_CALLS, "stream tool call")
    call = calls.setdefault(
        at, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    for key in ("id", "type"):
        value = expect_text(delta.get(key), f"stream tool call {key}")
        if value:
            call[key] = value
    if delta.get("function"):
        _append_function(call["function"], expect_obj(delta["function"], "stream tool function"))


def _append_function(into: dict[str, str], delta: dict[str, Any]) -> None:
    for key in ("name", "arguments"):
        into[key] += expect_text(delta.get(key), f"stream function {key}") or ""


def _finish(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice["message"]
    message.setdefault("content", None)
    message.setdefault("refusal", None)
    if "tool_calls" in message:
        message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
    return choice

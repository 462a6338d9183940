"""Reassemble a streamed chat completion (SSE chunks) into one chat.completion.

Handles content and refusal deltas, tool_call deltas merged by index, the
legacy function_call, logprobs, finish_reason, several choices (n>1) and
the usage chunk sent with ``stream_options.include_usage``. A stream with
no ``[DONE]`` or with an error event is not a completion: ``None``.
"""

from __future__ import annotations

from typing import Any

import orjson


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
            out.append(orjson.loads(data))
    return out, done


def reassemble(body: bytes) -> dict[str, Any] | None:
    chunks, done = events(body)
    if not done or not chunks or any("error" in c for c in chunks):
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
        for delta_choice in chunk.get("choices") or []:
            _merge_choice(choices, delta_choice)
    result["choices"] = [_finish(choices[i]) for i in sorted(choices)]
    return result


def _merge_choice(choices: dict[int, dict[str, Any]], chunk: dict[str, Any]) -> None:
    index = int(chunk.get("index", 0))
    choice = choices.setdefault(
        index,
        {"index": index, "message": {"role": "assistant"}, "logprobs": None, "finish_reason": None},
    )
    message = choice["message"]
    delta = chunk.get("delta") or {}
    if delta.get("role"):
        message["role"] = delta["role"]
    for key in ("content", "refusal", "reasoning_content"):
        if delta.get(key) is not None:
            message[key] = message.get(key, "") + delta[key]
    if delta.get("function_call"):
        fc = message.setdefault("function_call", {"name": "", "arguments": ""})
        fc["name"] += delta["function_call"].get("name") or ""
        fc["arguments"] += delta["function_call"].get("arguments") or ""
    for call in delta.get("tool_calls") or []:
        _merge_tool_call(message.setdefault("tool_calls", {}), call)
    if chunk.get("logprobs"):
        lp = choice["logprobs"] or {}
        for key, values in chunk["logprobs"].items():
            if isinstance(values, list):
                lp[key] = (lp.get(key) or []) + values
        choice["logprobs"] = lp
    if chunk.get("finish_reason") is not None:
        choice["finish_reason"] = chunk["finish_reason"]


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = int(delta.get("index", len(calls)))
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""


def _finish(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice["message"]
    message.setdefault("content", None)
    message.setdefault("refusal", None)
    if "tool_calls" in message:
        message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
    return choice

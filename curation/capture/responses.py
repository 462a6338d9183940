"""The Responses API (``POST /v1/responses``): what a call asked, and its answer. Pure.

A Responses request carries ``instructions`` and ``input``: a string, or a
list of items (messages, ``function_call`` / ``function_call_output`` pairs,
reasoning, hosted tool calls, references to earlier items). Recording reads
it as the chat rules read ``messages``: the items become chat messages
(``conversation``), and ``prompt.extract`` keys and renders those exactly as
it does a chat call with the same turns, so one conversation gets one
``user_prompt`` whichever API carried it, without the ids the provider made
up (``call_``, ``fc_``, ``msg_``).

Earlier turns kept by OpenAI (``previous_response_id``, ``conversation``, a
stored ``prompt`` template) are not in the request: the rendering says so
before the turns it has, so two conversations that continue alike never
collide. Export rebuilds them from the recorded rows, or skips the row.

A streamed reply is reassembled from its events; only a response that
completed is one (``response.failed``, ``response.incomplete``, an ``error``
event or a stream without ``response.completed``: ``None``). Everything here
is total: any JSON gives a value or ``Unrecordable``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from curation.capture import prompt, stream
from curation.capture.shape import Unrecordable, arr, expect_obj, expect_text, index, obj, text

API = "responses"
CHAT_API = "chat.completions"
MAX_ITEMS = 4096
MAX_PARTS = 1024
# items that are the model's working, not the conversation: never rendered, never exported
SILENT_ITEMS = frozenset({"reasoning"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text"})


@dataclass(frozen=True)
class Conversation:
    """A request's turns as chat messages (its system prompt first), and why they are not
    the whole conversation (``gaps``; empty when they are)."""

    messages: list[dict[str, Any]]
    gaps: list[str] = field(default_factory=list)


# -- the request -------------------------------------------------------------


def check_request(request: Any) -> dict[str, Any]:
    """``request`` as a Responses request object, else Unrecordable."""
    if not isinstance(request, dict):
        raise Unrecordable("request is not a JSON object")
    if not any(k in request for k in ("input", "previous_response_id", "prompt", "conversation")):
        raise Unrecordable("request has no input")
    return request


def conversation(request: dict[str, Any]) -> Conversation:
    """``instructions`` and ``input`` as chat messages: instructions as the system message,
    function calls as the assistant's ``tool_calls``, their outputs as ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    gaps = _earlier(request)
    instructions = request.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": _instructions_text(instructions)})
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            _add_item(messages, gaps, item)
    elif given is not None:
        gaps.append("the request's input is neither text nor a list of items")
    return Conversation(messages, gaps)


def _instructions_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a response echoes instructions as input items
        return "\n\n".join(prompt.content_text(obj(m).get("content")) for m in value)
    return json.dumps(value, ensure_ascii=False)


def _earlier(request: dict[str, Any]) -> list[str]:
    """Why turns the provider keeps are missing from this request."""
    gaps = []
    previous = request.get("previous_response_id")
    if previous is not None:
        gaps.append(f"continues response {_label(previous)}, whose turns are not in this request")
    if request.get("conversation") is not None:
        conv = request["conversation"]
        name = obj(conv).get("id") if isinstance(conv, dict) else conv
        gaps.append(f"continues conversation {_label(name)}, kept by the provider")
    if request.get("prompt") is not None:
        gaps.append(
            f"uses the stored prompt template {_label(obj(request['prompt']).get('id'))}, "
            "whose messages are not in this request"
        )
    return gaps


def _label(value: Any) -> str:
    return (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))[:200]


def _add_item(messages: list[dict[str, Any]], gaps: list[str], item: Any) -> None:
    if not isinstance(item, dict):
        gaps.append("an input item is not an object")
        messages.append({"role": "user", "content": prompt.content_text(item)})
        return
    kind = text(item.get("type"))
    if kind in (None, "message") and text(item.get("role")) is not None:
        messages.append(_message(item, gaps))
    elif kind == "function_call":
        _assistant_turn(messages)["tool_calls"].append(_tool_call(item))
    elif kind == "function_call_output":
        messages.append(
            {
                "role": "tool",
                "tool_call_id": text(item.get("call_id")) or "",
                "content": _output_text(item.get("output")),
            }
        )
    elif kind in SILENT_ITEMS:
        return
    elif kind == "item_reference":
        gaps.append("refers to an earlier item by its id, which is not in this request")
        messages.append({"role": "assistant", "content": "[an earlier item]"})
    else:
        gaps.append(f"holds a {_label(kind or 'typeless')} item, which has no chat form")
        messages.append({"role": "assistant", "content": _placeholder(kind, item)})


def _message(item: dict[str, Any], gaps: list[str]) -> dict[str, Any]:
    role = str(item["role"])
    content = item.get("content")
    if isinstance(content, list):
        parts = [_part(p, gaps) for p in content]
        plain = all(p["type"] == "text" for p in parts) and (len(parts) == 1 or role == "assistant")
        content = "".join(p["text"] for p in parts) if plain else parts
    elif content is not None and not isinstance(content, str):
        content = prompt.content_text(content)
    return {"role": role, "content": content}


def _part(part: Any, gaps: list[str]) -> dict[str, Any]:
    """A Responses content part as a chat content part (text or image_url)."""
    p = obj(part)
    kind = text(p.get("type"))
    if kind in TEXT_PARTS:
        return {"type": "text", "text": prompt.content_text(p.get("text"))}
    if kind == "refusal":
        return {"type": "text", "text": prompt.content_text(p.get("refusal"))}
    if kind == "input_image" and isinstance(p.get("image_url"), str):
        image: dict[str, Any] = {"url": p["image_url"]}
        if isinstance(p.get("detail"), str) and p["detail"] != "auto":
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    gaps.append(f"holds a {_label(kind or 'typeless')} content part, which has no chat form")
    return {"type": "text", "text": f"[{kind or 'part'}]"}


def _assistant_turn(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message a function call belongs to: the last one, if it is the last
    message (parallel calls, or text then calls), else a new one."""
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "assistant":
        last = {"role": "assistant", "content": None}
        messages.append(last)
    if not isinstance(last.get("tool_calls"), list):
        last["tool_calls"] = []
    return last


def _tool_call(item: dict[str, Any]) -> dict[str, Any]:
    arguments = item.get("arguments")
    return {
        "id": text(item.get("call_id")) or "",
        "type": "function",
        "function": {
            "name": text(item.get("name")) or "",
            "arguments": arguments if isinstance(arguments, str) else _json(arguments),
        },
    }


def _output_text(output: Any) -> str:
    """A function call's output: text, or the text of its content parts."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(
            prompt.content_text(obj(p).get("text")) if "text" in obj(p) else _json(p)
            for p in output
        )
    return _json(output)


def _placeholder(kind: str | None, item: dict[str, Any]) -> str:
    """A readable stand-in for an item with no chat form, without the provider's ids."""
    shown = {k: v for k, v in item.items() if k not in ("id", "call_id", "status", "type")}
    return f"[{kind or 'item'} {_json(shown)}]"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def extract(request: dict[str, Any]) -> prompt.Prompt:
    """The user prompt and production system prompt, by the chat rules; turns the provider
    keeps (``previous_response_id``, ...) are named before the turns the request has."""
    conv = conversation(request)
    asked = prompt.extract({"messages": conv.messages})
    earlier = _earlier(request)
    if not earlier:
        return asked
    head = "\n".join(f"[{g}]" for g in earlier)
    user_prompt = f"{head}\n\n{asked.user_prompt}" if asked.user_prompt else head
    return prompt.Prompt(prompt.clean(user_prompt), asked.system_prompt)


def previous_response_id(request: dict[str, Any]) -> str | None:
    return text(request.get("previous_response_id"))


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools in the chat shape (``{"type": "function", "function": {...}}``);
    hosted tools (web search, file search, ...) have none and are left out."""
    out = []
    for tool in arr(tools):
        t = obj(tool)
        if t.get("type") == "function":
            keys = ("name", "description", "parameters", "strict")
            out.append({"type": "function", "function": {k: t[k] for k in keys if k in t}})
    return out


# -- the response ------------------------------------------------------------


def check_response(response: Any) -> dict[str, Any]:
    """``response`` as a completed Response object, else Unrecordable (why)."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        raise Unrecordable("response is not a Response object")
    status = response.get("status", "completed")
    if status != "completed":
        raise Unrecordable(f"the response did not complete (status {_label(status)[:40]})")
    return response


@dataclass(frozen=True)
class Answer:
    """A Response's output as one chat assistant message, and what has no chat form."""

    message: dict[str, Any]
    gaps: list[str] = field(default_factory=list)
    refusal: str | None = None


def answer(response: Any) -> Answer:
    """The output items as the assistant's message: text (as the SDK's ``output_text``
    joins it) and function calls as ``tool_calls``."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    gaps: list[str] = []
    for item in arr(obj(response).get("output")):
        it = obj(item)
        kind = text(it.get("type"))
        if kind == "message":
            for part in arr(it.get("content")):
                p = obj(part)
                if p.get("type") == "output_text":
                    texts.append(prompt.content_text(p.get("text")))
                elif p.get("type") == "refusal":
                    refusals.append(prompt.content_text(p.get("refusal")))
        elif kind == "function_call":
            calls.append(_tool_call(it))
        elif kind not in SILENT_ITEMS:
            gaps.append(
                f"the answer holds a {_label(kind or 'typeless')} item, which has no chat form"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return Answer(message, gaps, "".join(refusals) if refusals else None)


def output_text(response: Any) -> str:
    """What a reader sees of a Response: its text, else its function calls as JSON."""
    message = answer(response).message
    if message["content"] is not None:
        return str(message["content"])
    return _json(message["tool_calls"]) if message.get("tool_calls") else ""


def is_response(response: Any) -> bool:
    """A recorded Responses reply (as opposed to a chat.completion)."""
    return isinstance(response, dict) and (
        response.get("object") == "response" or ("output" in response and "choices" not in response)
    )


def response_id(response: dict[str, Any]) -> str | None:
    return text(response.get("id"))


def tokens(response: dict[str, Any]) -> tuple[Any, Any]:
    usage = obj(response.get("usage"))
    return usage.get("input_tokens"), usage.get("output_tokens")


# -- the stream --------------------------------------------------------------

FAILED = frozenset({"response.failed", "response.incomplete", "error"})


def reassemble(body: bytes) -> dict[str, Any] | None:
    """The Response a stream delivered, or None when it did not complete.

    The final ``response.completed`` event carries the whole Response, which is what is
    stored; the output is also rebuilt from the item and delta events, and stands in for
    the final event's when that has none (some compatible servers send it bare)."""
    events, _ = stream.events(body)
    output: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for event in events:
        kind = text(event.get("type"))
        if kind in FAILED:
            return None
        if kind == "response.completed":
            final = expect_obj(event.get("response"), "response.completed response")
        else:
            _apply(output, kind, event)
    if final is None or final.get("status", "completed") != "completed":
        return None
    result = dict(final)
    if output and not arr(final.get("output")):
        result["output"] = [output[i] for i in sorted(output)]
    return result


def _apply(output: dict[int, dict[str, Any]], kind: str | None, event: dict[str, Any]) -> None:
    if kind in ("response.output_item.added", "response.output_item.done"):
        at = index(event.get("output_index"), len(output), MAX_ITEMS, "stream output item")
        output[at] = dict(expect_obj(event.get("item"), "stream output item"))
    elif kind == "response.content_part.added":
        part = expect_obj(event.get("part"), "stream content part")
        _part_at(_item_at(output, event), event).update(part)
    elif kind in ("response.output_text.delta", "response.refusal.delta"):
        key = "text" if kind == "response.output_text.delta" else "refusal"
        part = _part_at(_item_at(output, event), event, key)
        delta = expect_text(event.get("delta"), f"stream {key} delta") or ""
        part[key] = (text(part.get(key)) or "") + delta
    elif kind == "response.function_call_arguments.delta":
        item = _item_at(output, event)
        delta = expect_text(event.get("delta"), "stream arguments delta") or ""
        item["arguments"] = (text(item.get("arguments")) or "") + delta


def _item_at(output: dict[int, dict[str, Any]], event: dict[str, Any]) -> dict[str, Any]:
    at = index(event.get("output_index"), 0, MAX_ITEMS, "stream output item")
    return output.setdefault(at, {"type": "message", "role": "assistant", "content": []})


def _part_at(item: dict[str, Any], event: dict[str, Any], key: str = "text") -> dict[str, Any]:
    at = index(event.get("content_index"), 0, MAX_PARTS, "stream content part")
    content = item.get("content")
    if not isinstance(content, list):
        content = item["content"] = []
    while len(content) <= at:
        content.append(
            {"type": "output_text", "text": "", "annotations": []}
            if key == "text"
            else {"type": "refusal", "refusal": ""}
        )
    if not isinstance(content[at], dict):
        content[at] = {}
    part: dict[str, Any] = content[at]
    return part

"""The fake's Responses API: POST /v1/responses (plain and streamed), GET /v1/responses/{id}.

Shapes follow OpenAI's API reference: the Response object (``object:
"response"``, ``status``, ``output`` items of type ``message`` with
``output_text`` parts and ``function_call``, ``usage`` with input/output
tokens) and the streaming events (``response.created``,
``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` /
``.done``, ``response.function_call_arguments.delta`` / ``.done``,
``response.content_part.done``, ``response.output_item.done``, then
``response.completed``, or ``response.failed`` / ``response.incomplete``),
each as ``event: <type>`` and ``data: <json>`` with a ``sequence_number``;
no ``[DONE]``. Responses are kept by id, so ``previous_response_id`` works
(an unknown one is a 400, as upstream).

Extra steering headers (beside those of ``__init__``):

    X-Fake-Incomplete: 1        end with status incomplete (max_output_tokens)
    X-Fake-Fail: 1              streams: response.failed after response.in_progress
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.fake_openai.chat import Seen, _answering_model, _pieces, next_id


class ResponsesAPI:
    """POST /v1/responses and GET /v1/responses/{id} (mixed into FakeOpenAI)."""

    delay: float
    api_key_prefix: str
    keep_seen: bool
    seen: list[Any]
    answers: dict[str, Any]
    raw: dict[str, tuple[str, bytes]]
    stored: dict[str, dict[str, Any]]

    headers: Any
    error: Any

    def response_output(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The output items: deterministic from the input. With function tools, a call of
        the first with the user's words as its first parameter (unless the input ends with
        a function's output, which gets a text answer)."""
        items = _items(body.get("input"))
        last = items[-1] if items else {}
        custom = self.answers.get(model)
        if last.get("type") == "function_call_output":
            return [_message(f"The tool said: {_text(last.get('output'))}")]
        said = next(
            (_text(i.get("content")) for i in reversed(items) if i.get("role") == "user"), ""
        )
        if custom is not None:
            return [_message(custom(body))]
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        if tools and body.get("tool_choice") != "none":
            n = next_id()
            schema = tools[0].get("parameters") or {}
            key = next(iter(schema.get("required") or schema.get("properties") or ["query"]))
            return [
                {
                    "id": f"fc_{n:08d}",
                    "type": "function_call",
                    "status": "completed",
                    "arguments": json.dumps({key: said}),
                    "call_id": f"call_{n:08d}",
                    "name": tools[0]["name"],
                }
            ]
        fmt = ((body.get("text") or {}).get("format") or {}).get("type")
        if fmt in ("json_object", "json_schema"):
            return [_message(json.dumps({"answer": said, "length": len(said)}))]
        return [_message(f"Answer to: {said}")]

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.keep_seen:
            self.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        request_id = f"req_{next_id():08d}"
        delay = float(request.headers.get("X-Fake-Delay", self.delay))
        if delay:
            await asyncio.sleep(delay)
        refused = self._refusal(request, raw, request_id)
        if refused is not None:
            return refused
        body = json.loads(raw)
        model = str(body["model"])
        final = self._response(body, model, self.response_output(model, body))
        if request.headers.get("X-Fake-Incomplete"):
            final["status"] = "incomplete"
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        if body.get("store", True) and final["status"] == "completed":
            self.stored[final["id"]] = {"request": body, "response": final}
        if body.get("stream"):
            return await self._stream_response(request, final, request_id)
        return web.json_response(final, headers=self.headers(request_id))

    def _refusal(self, request: web.Request, raw: bytes, request_id: str) -> web.Response | None:
        """The error answer a call gets instead of a response, if any."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer " + self.api_key_prefix):
            return self.error(
                401,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
                request_id,
            )
        canned = self.raw.get(request.headers.get("X-Fake-Raw", ""))
        if canned is not None:
            return web.Response(
                body=canned[1], content_type=canned[0], headers=self.headers(request_id)
            )
        forced = request.headers.get("X-Fake-Status")
        if forced:
            return self.error(
                int(forced), f"Fake error {forced}.", "server_error", None, request_id
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
                request_id,
            )
        if not isinstance(body, dict) or not body.get("model"):
            return self.error(
                400,
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                "missing_required_parameter",
                request_id,
            )
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return self.error(
                400,
                f"Previous response with id '{previous}' not found.",
                "invalid_request_error",
                "previous_response_not_found",
                request_id,
            )
        return None

    def _response(
        self, body: dict[str, Any], model: str, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        input_tokens = sum(
            len(_text(i.get("content") or i.get("output")).split()) + 4
            for i in _items(body.get("input"))
        )
        output_tokens = sum(len(json.dumps(o)) // 16 + 1 for o in output)
        return {
            "id": f"resp_{next_id():08d}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": _answering_model(model),
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    async def _stream_response(
        self, request: web.Request, final: dict[str, Any], request_id: str
    ) -> web.StreamResponse:
        cut = int(request.headers.get("X-Fake-Cut", "-1"))
        pause = float(request.headers.get("X-Fake-Chunk-Delay", "0"))
        response = web.StreamResponse(
            headers={**self.headers(request_id), "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        for sent, event in enumerate(_events(final, bool(request.headers.get("X-Fake-Fail")))):
            if sent == cut:
                assert request.transport is not None
                request.transport.close()
                return response
            event["sequence_number"] = sent
            data = json.dumps(event)
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
            if pause:
                await asyncio.sleep(pause)
        await response.write_eof()
        return response

    async def get_response(self, request: web.Request) -> web.Response:
        if self.keep_seen:
            self.seen.append(Seen(request.method, request.path, dict(request.headers), b""))
        found = self.stored.get(request.match_info["response_id"])
        request_id = f"req_{next_id():08d}"
        if found is None:
            return self.error(404, "Response not found.", "invalid_request_error", None, request_id)
        return web.json_response(found["response"], headers=self.headers(request_id))


def _events(final: dict[str, Any], fail: bool) -> list[dict[str, Any]]:
    """The events of a streamed response, as the API reference lists them."""
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
    ]
    if fail:
        failed = {
            **start,
            "status": "failed",
            "error": {"code": "server_error", "message": "The model failed."},
        }
        return [*events, {"type": "response.failed", "response": failed}]
    for i, item in enumerate(final["output"]):
        events += _item_events(i, item)
    if final["status"] == "incomplete":
        return [*events, {"type": "response.incomplete", "response": final}]
    return [*events, {"type": "response.completed", "response": final}]


def _item_events(i: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    at = {"item_id": item["id"], "output_index": i}
    if item["type"] == "function_call":
        events: list[dict[str, Any]] = [
            {
                "type": "response.output_item.added",
                "output_index": i,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }
        ]
        events += [
            {"type": "response.function_call_arguments.delta", **at, "delta": piece}
            for piece in _pieces(item["arguments"])
        ]
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **at,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        )
        return [*events, {"type": "response.output_item.done", "output_index": i, "item": item}]
    part = item["content"][0]
    empty = {**part, "text": ""}
    events = [
        {
            "type": "response.output_item.added",
            "output_index": i,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **at, "content_index": 0, "part": empty},
    ]
    events += [
        {
            "type": "response.output_text.delta",
            **at,
            "content_index": 0,
            "delta": piece,
            "logprobs": [],
        }
        for piece in _pieces(part["text"])
    ]
    events += [
        {
            "type": "response.output_text.done",
            **at,
            "content_index": 0,
            "text": part["text"],
            "logprobs": [],
        },
        {"type": "response.content_part.done", **at, "content_index": 0, "part": part},
        {"type": "response.output_item.done", "output_index": i, "item": item},
    ]
    return events


def _message(text: str) -> dict[str, Any]:
    return {
        "id": f"msg_{next_id():08d}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _items(given: Any) -> list[dict[str, Any]]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    return [i for i in given or [] if isinstance(i, dict)]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content)

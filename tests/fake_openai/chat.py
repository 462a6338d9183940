"""The fake's chat completions: plain and streamed, tools, n, JSON mode, errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def next_id() -> int:
    return next(_ids)


class ChatAPI:
    """POST /v1/chat/completions and GET /v1/models (mixed into FakeOpenAI)."""

    delay: float
    api_key_prefix: str
    keep_seen: bool
    seen: list[Any]
    answers: dict[str, Any]
    raw: dict[str, tuple[str, bytes]]

    def answer(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        """The assistant message this fake gives: deterministic from the input."""
        messages = request.get("messages") or []
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text = (
            last_user.get("content")
            if isinstance(last_user.get("content"), str)
            else json.dumps(last_user.get("content"))
        )
        custom = self.answers.get(model)
        if custom is not None:
            return {"role": "assistant", "content": custom(request)}
        tools = request.get("tools") or []
        if tools and request.get("tool_choice") != "none":
            name = tools[0]["function"]["name"]
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{next_id()}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"query": text})},
                    }
                ],
            }
        if (request.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            return {
                "role": "assistant",
                "content": json.dumps({"answer": text, "length": len(text or "")}),
            }
        return {"role": "assistant", "content": f"Answer to: {text}"}

    # -- HTTP ------------------------------------------------------------

    def headers(self, request_id: str) -> dict[str, str]:
        return {
            "x-request-id": request_id,
            "openai-version": "2020-10-01",
            "openai-organization": "org-fake",
            "openai-processing-ms": "12",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "30000000",
            "x-ratelimit-remaining-tokens": "29999000",
        }

    def error(
        self, status: int, message: str, kind: str, code: str | None, request_id: str
    ) -> web.Response:
        headers = self.headers(request_id)
        if status == 429:
            headers["retry-after"] = "0"
            headers["x-ratelimit-remaining-requests"] = "0"
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.keep_seen:
            self.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        request_id = f"req_{next_id():08d}"
        delay = float(request.headers.get("X-Fake-Delay", self.delay))
        if delay:
            await asyncio.sleep(delay)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer " + self.api_key_prefix):
            return self.error(
                401,
                "Incorrect API key provided: sk-***. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
                request_id,
            )
        canned = self.raw.get(request.headers.get("X-Fake-Raw", ""))
        if canned is not None:
            return web.Response(
                body=canned[1], content_type=canned[0], headers=self.headers(request_id)
            )
        forced = request.headers.get("X-Fake-Status") or ("429" if self._failing("chat") else None)
        if forced:
            status = int(forced)
            kinds = {
                400: ("invalid_request_error", None),
                401: ("invalid_request_error", "invalid_api_key"),
                429: ("requests", "rate_limit_exceeded"),
                500: ("server_error", None),
                503: ("server_error", None),
            }
            kind, code = kinds.get(status, ("api_error", None))
            return self.error(status, f"Fake error {status}.", kind, code, request_id)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
                "invalid_request_error",
                None,
                request_id,
            )
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("messages"), list)
            or not body.get("model")
        ):
            return self.error(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                request_id,
            )
        model = str(body["model"])
        n = int(body.get("n") or 1)
        messages = [self.answer(model, body) for _ in range(n)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"])
        completion_tokens = sum(
            len(str(m.get("content") or m.get("tool_calls"))) // 4 + 1 for m in messages
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": f"chatcmpl-{request_id[4:]}",
            "created": int(time.time()),
            "model": _answering_model(model),
            "system_fingerprint": "fp_fake",
        }
        finish = "tool_calls" if messages[0].get("tool_calls") else "stop"
        if body.get("stream"):
            return await self._stream(request, body, base, messages, finish, usage, request_id)
        completion = {
            **base,
            "object": "chat.completion",
            "service_tier": "default",
            "choices": [
                {
                    "index": i,
                    "message": {**m, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i, m in enumerate(messages)
            ],
            "usage": usage,
        }
        return web.json_response(completion, headers=self.headers(request_id))

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        base: dict[str, Any],
        messages: list[dict[str, Any]],
        finish: str,
        usage: dict[str, Any],
        request_id: str,
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cut = int(request.headers.get("X-Fake-Cut", "-1"))
        pause = float(request.headers.get("X-Fake-Chunk-Delay", "0"))
        response = web.StreamResponse(
            headers={**self.headers(request_id), "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        chunks = []
        extra = {"usage": None} if include_usage else {}
        for i, message in enumerate(messages):
            chunks.append(
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
            content = message.get("content")
            if content:
                for piece in _pieces(content):
                    chunks.append(
                        {
                            "index": i,
                            "delta": {"content": piece},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
            for t, call in enumerate(message.get("tool_calls") or []):
                fn = call["function"]
                chunks.append(
                    {
                        "index": i,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": t,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": fn["name"], "arguments": ""},
                                }
                            ]
                        },
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
                for piece in _pieces(fn["arguments"]):
                    chunks.append(
                        {
                            "index": i,
                            "delta": {
                                "tool_calls": [{"index": t, "function": {"arguments": piece}}]
                            },
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
            chunks.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish})
        for sent, choice in enumerate(chunks):
            if sent == cut:
                assert request.transport is not None
                request.transport.close()
                return response
            event = {
                **base,
                "object": "chat.completion.chunk",
                "service_tier": "default",
                "choices": [choice],
                **extra,
            }
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            if pause:
                await asyncio.sleep(pause)
        if include_usage:
            event = {
                **base,
                "object": "chat.completion.chunk",
                "service_tier": "default",
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        if self.keep_seen:
            self.seen.append(Seen(request.method, request.path, dict(request.headers), b""))
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
            for m in ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14")
        ]
        return web.json_response(
            {"object": "list", "data": data}, headers=self.headers(f"req_{next_id():08d}")
        )

    # -- files and fine-tuning jobs -------------------------------------


def _answering_model(requested: str) -> str:
    return "gpt-4o-mini-2024-07-18" if requested == "gpt-4o-mini" else requested


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]

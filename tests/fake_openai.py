"""A fake of OpenAI's HTTP API for tests and benchmarks, on a real socket.

Shapes follow OpenAI's API reference: chat.completion and
chat.completion.chunk objects (stream_options.include_usage, tool calls, n,
JSON mode), the error object with its headers, x-request-id, openai-* and
x-ratelimit-* headers. Tests steer a call with request headers, which the
proxy forwards like any other:

    X-Fake-Status: 429          answer with this error status
    X-Fake-Delay: 0.5           wait this long before the response head
    X-Fake-Cut: 2               streams: stop (drop the connection) after N chunks
    X-Fake-Chunk-Delay: 0.05    streams: pause between chunks

Answers are deterministic: ``answer(model, messages)``.
Run alone: ``python -m tests.fake_openai --port 9000 [--delay 0.02]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOpenAI:
    delay: float = 0.0
    api_key_prefix: str = "sk-"
    seen: list[Seen] = field(default_factory=list)
    keep_seen: bool = True
    answers: dict[str, Any] = field(default_factory=dict)  # model -> callable(messages) -> str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    page_cap: int = 100  # lower it to make clients paginate
    fail: dict[str, int] = field(
        default_factory=dict
    )  # "create_job"/"upload": answer 500 this many times
    fine_tunable: tuple[str, ...] = (
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-2024-08-06",
        "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-2025-04-14",
        "gpt-4.1-nano-2025-04-14",
        "gpt-3.5-turbo-0125",
    )

    # -- content ---------------------------------------------------------

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
                        "id": f"call_{next(_ids)}",
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
        request_id = f"req_{next(_ids):08d}"
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
            {"object": "list", "data": data}, headers=self.headers(f"req_{next(_ids):08d}")
        )

    # -- files and fine-tuning jobs -------------------------------------

    def _failing(self, what: str) -> bool:
        if self.fail.get(what, 0) > 0:
            self.fail[what] -= 1
            return True
        return False

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("Authorization", "").startswith("Bearer " + self.api_key_prefix):
            return self.error(
                401,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
                "req_auth",
            )
        return None

    async def upload_file(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        form = await request.post()
        if self._failing("upload"):
            return self.error(
                500,
                "The server had an error processing your request.",
                "server_error",
                None,
                "req_up",
            )
        upload = form.get("file")
        if form.get("purpose") != "fine-tune" or not hasattr(upload, "file"):
            return self.error(
                400, "Invalid purpose or file.", "invalid_request_error", None, "req_up"
            )
        content = upload.file.read()  # type: ignore[union-attr]
        file_id = f"file-{next(_ids):08d}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": "fine-tune",
            "status": "processed",  # type: ignore[union-attr]
            "_content": content,
        }
        return web.json_response(self._public(self.files[file_id]))

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _event(self, job: dict[str, Any], message: str, level: str = "info") -> None:
        job["_events"].append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{next(_ids):08d}",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": {},
                "type": "message",
            }
        )

    async def create_job(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await request.json()
        if self._failing("create_job"):
            return self.error(
                500,
                "The server had an error processing your request.",
                "server_error",
                None,
                "req_job",
            )
        model = body.get("model")
        if model not in self.fine_tunable:
            return self.error(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                "invalid_request_error",
                "model_not_available",
                "req_job",
            )
        for key in ("training_file", "validation_file"):
            if body.get(key) is not None and body[key] not in self.files:
                return self.error(
                    400,
                    f"invalid {key}: {body[key]}",
                    "invalid_request_error",
                    "invalid_file",
                    "req_job",
                )
        if not body.get("training_file"):
            return self.error(
                400,
                "Missing required parameter: 'training_file'.",
                "invalid_request_error",
                "missing_required_parameter",
                "req_job",
            )
        job_id = f"ftjob-{next(_ids):08d}"
        method = body.get("method") or {
            "type": "supervised",
            "supervised": {"hyperparameters": body.get("hyperparameters") or {}},
        }
        hyper = (method.get(method["type"]) or {}).get("hyperparameters") or {}
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-fake",
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": {
                "n_epochs": hyper.get("n_epochs", "auto"),
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
            },
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": body.get("suffix"),
            "seed": body.get("seed", 42),
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": method,
            "_events": [],
        }
        self.jobs[job_id] = job
        self._event(job, f"Validating training file: {body['training_file']}")
        self._event(job, "Created fine-tuning job")
        return web.json_response(self._public(job))

    def _advance(self, job: dict[str, Any]) -> None:
        """One lifecycle step per look: validating_files -> queued -> running -> succeeded/failed."""
        status = job["status"]
        if status == "validating_files":
            problem = _check_training_file(self.files[job["training_file"]]["_content"])
            if problem:
                job.update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "invalid_training_file",
                        "message": problem,
                        "param": "training_file",
                    },
                )
                self._event(job, f"Training file validation failed: {problem}", "error")
                return
            job["status"] = "queued"
            self._event(job, "Files validated, moving job to queued state")
        elif status == "queued":
            job["status"] = "running"
            self._event(job, "Fine-tuning job started")
            self._event(job, "Step 1/10: training loss=1.52")
        elif status == "running":
            if "fail" in (job.get("user_provided_suffix") or ""):
                job.update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "server_error",
                        "message": "Training failed: the fake was told to fail.",
                        "param": None,
                    },
                )
                self._event(job, "Fine-tuning job failed", "error")
                return
            lines = self.files[job["training_file"]]["_content"].count(b"\n")
            epochs = job["hyperparameters"]["n_epochs"]
            job.update(
                status="succeeded",
                finished_at=int(time.time()),
                trained_tokens=lines * 50 * (epochs if isinstance(epochs, int) else 3),
                fine_tuned_model=f"ft:{job['model']}:org-fake:{job.get('user_provided_suffix') or ''}:{job['id'][-8:]}",
                result_files=[f"file-result-{job['id'][-8:]}"],
            )
            self._event(job, "Step 10/10: training loss=0.04")
            self._event(job, "The job has successfully completed")

    def _job(self, request: web.Request) -> dict[str, Any] | web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return self.error(
                404,
                "No such fine-tuning job.",
                "invalid_request_error",
                "fine_tune_not_found",
                "req_job",
            )
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            self._advance(job)
        return web.json_response(self._public(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        ordered = sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
        after = request.query.get("after")
        if after:
            ordered = [j for j in ordered if j["id"] < after]
        limit = min(int(request.query.get("limit", 20)), self.page_cap)
        page = ordered[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [self._public(j) for j in page],
                "has_more": len(ordered) > limit,
            }
        )

    async def job_events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        events = list(reversed(job["_events"]))[: int(request.query.get("limit", 20))]
        return web.json_response({"object": "list", "data": events, "has_more": False})

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return self.error(
                400, f"Job has already {job['status']}.", "invalid_request_error", None, "req_job"
            )
        job.update(status="cancelled", finished_at=int(time.time()))
        self._event(job, "Fine-tuning job cancelled")
        return web.json_response(self._public(job))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/files", self.upload_file)
        app.router.add_post("/v1/fine_tuning/jobs", self.create_job)
        app.router.add_get("/v1/fine_tuning/jobs", self.list_jobs)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}", self.get_job)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", self.job_events)
        app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", self.cancel_job)
        return app


def _check_training_file(content: bytes) -> str | None:
    """OpenAI's upfront checks, roughly: JSONL, at least 10 examples, an assistant answer in each."""
    lines = [line for line in content.splitlines() if line.strip()]
    if len(lines) < 10:
        return f"Training file has {len(lines)} example(s), but must have at least 10 examples"
    for n, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except ValueError:
            return f"Invalid file format. Line {n}: not valid JSON"
        messages = example.get("messages") or (example.get("input") or {}).get("messages")
        if not messages:
            return f"Invalid file format. Line {n}: missing messages"
        if "messages" in example and not any(m.get("role") == "assistant" for m in messages):
            return f"Invalid file format. Line {n}: no assistant message"
    return None


def _answering_model(requested: str) -> str:
    return "gpt-4o-mini-2024-07-18" if requested == "gpt-4o-mini" else requested


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class Running:
    """The fake served from a background thread: ``with Running() as fake: fake.url``."""

    def __init__(self, fake: FakeOpenAI | None = None) -> None:
        self.fake = fake or FakeOpenAI()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Running:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.fake.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    fake = FakeOpenAI(delay=args.delay, keep_seen=False)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

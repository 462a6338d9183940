"""The built-in OpenAI-compatible server for a LoRA student, and the adapter merge.

`curation student start` prefers real engines (vLLM on a GPU, `transformers
serve` on CPU); this server is the fallback when neither is installed: the
base model with the adapter folded in, behind ``POST /v1/chat/completions``
(plain and streamed), ``GET /v1/models`` and ``GET /health``, one generation
at a time through transformers' ``generate``. Tool calls come back as the
model's text; parse them with a real engine.

Like the local trainer, this module imports torch, transformers and peft
inside its functions only.

    python -m curation.jobs.student_server --base B --adapter DIR --name M --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

MARKER = "curation-merged.json"
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS = 4096


def load(base: str, adapter: Path) -> tuple[Any, Any]:
    """The base model with the adapter merged in, and the tokenizer the adapter was trained with."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    has_tokenizer = (adapter / "tokenizer_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter) if has_tokenizer else base)
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if gpu else torch.float32
    )
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if gpu:
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def merge_signature(base: str, adapter: Path) -> dict[str, Any]:
    """What a merged copy was made from: a changed adapter makes it stale."""
    weights = sorted(adapter.glob("adapter_model.*"))
    return {
        "base": base,
        "adapter": str(adapter.resolve()),
        "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
    }


def merged_copy(base: str, adapter: Path, out: Path) -> Path:
    """A plain model directory (base + adapter) at ``out``, made once per adapter."""
    signature = merge_signature(base, adapter)
    try:
        if json.loads((out / MARKER).read_text()) == signature:
            return out
    except (OSError, ValueError):
        pass
    model, tokenizer = load(base, adapter)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps(signature, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# -- the server ----------------------------------------------------------------


class BadRequest(ValueError):
    """A request this server cannot answer (400, OpenAI's error shape)."""


@dataclass(frozen=True)
class Ask:
    """A chat request, checked: what generate needs."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None
    max_tokens: int
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool


def parse(body: bytes, name: str) -> Ask:
    """The request, or BadRequest: total over whatever bytes arrive."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise BadRequest("the body is not a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a list of objects")
    if request.get("model") not in (None, name):
        raise BadRequest(f"this server serves {name!r}, not {request.get('model')!r}")
    if request.get("n") not in (None, 1):
        raise BadRequest("only n=1 is supported")
    tools = request.get("tools")
    options = request.get("stream_options")
    return Ask(
        messages=messages,
        tools=tools if isinstance(tools, list) and tools else None,
        max_tokens=_number(
            request.get("max_completion_tokens", request.get("max_tokens")),
            int,
            DEFAULT_MAX_TOKENS,
            1,
            MAX_TOKENS,
        ),
        temperature=_number(request.get("temperature"), float, 1.0, 0.0, 2.0),
        top_p=_number(request.get("top_p"), float, 1.0, 0.0, 1.0),
        stream=request.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def _number(value: Any, kind: type, default: float, low: float, high: float) -> Any:
    if value is None:
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{value!r} is not a number from {low:g} to {high:g}")
    return kind(value)


class Engine:
    """One model, one generation at a time (a lock: generate is not re-entrant)."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = asyncio.Lock()

    def _inputs(self, ask: Ask) -> Any:
        try:
            return self.tokenizer.apply_chat_template(
                ask.messages,
                tools=ask.tools,
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ).to(self.model.device)
        except Exception as exc:  # the template raises whatever jinja or the tokenizer raise
            raise BadRequest(f"the chat template refused the messages: {exc}") from exc

    def _options(self, ask: Ask) -> dict[str, Any]:
        sample = ask.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": ask.max_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=ask.temperature, top_p=ask.top_p)
        pad = self.tokenizer.pad_token_id
        options["pad_token_id"] = pad if pad is not None else self.tokenizer.eos_token_id
        return options

    def generate(self, ask: Ask) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens)."""
        import torch

        inputs = self._inputs(ask)
        prompt = int(inputs["input_ids"].shape[1])
        with torch.no_grad():
            out = self.model.generate(**inputs, **self._options(ask))
        new = out[0][prompt:]
        return self.tokenizer.decode(new, skip_special_tokens=True), prompt, int(new.shape[0])

    async def stream(self, ask: Ask) -> AsyncIterator[str | tuple[int, int]]:
        """The text as it is generated, then (prompt tokens, completion tokens)."""
        from transformers import TextIteratorStreamer

        inputs = self._inputs(ask)
        prompt = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["out"] = self.model.generate(
                    **inputs, **self._options(ask), streamer=streamer
                )
            except BaseException:
                streamer.end()  # the reader must not wait for text that will never come
                raise

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = iter(streamer)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            if piece:
                yield piece
        await asyncio.to_thread(worker.join)
        out = result.get("out")
        yield prompt, (int(out.shape[1]) - prompt if out is not None else 0)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


def _finish(completion_tokens: int, ask: Ask) -> str:
    return "length" if completion_tokens >= ask.max_tokens else "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class Server:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.engine.name, "object": "model", "created": 0, "owned_by": "curation"}
        return web.json_response({"object": "list", "data": [model]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            ask = parse(await request.read(), self.engine.name)
        except BadRequest as exc:
            return _error(400, str(exc))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self.engine.name,
        }
        async with self.engine.lock:
            try:
                if ask.stream:
                    return await self._stream(request, ask, base)
                text, prompt, completion = await asyncio.to_thread(self.engine.generate, ask)
            except BadRequest as exc:
                return _error(400, str(exc))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": _finish(completion, ask),
        }
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [choice],
                "usage": _usage(prompt, completion),
            }
        )

    async def _stream(
        self, request: web.Request, ask: Ask, base: dict[str, Any]
    ) -> web.StreamResponse:
        pieces = self.engine.stream(ask)
        first = await anext(pieces)  # template errors surface here, before the response head
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": ""})
        item: str | tuple[int, int] = first
        while isinstance(item, str):
            await send({"content": item})
            item = await anext(pieces)
        prompt, completion = item
        await send({}, _finish(completion, ask))
        if ask.include_usage:
            chunk = {**base, "object": "chat.completion.chunk", "choices": []}
            chunk["usage"] = _usage(prompt, completion)
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m curation.jobs.student_server")
    parser.add_argument("--base", required=True, help="Base model: hub id or directory.")
    parser.add_argument("--adapter", required=True, type=Path, help="The LoRA adapter directory.")
    parser.add_argument("--name", required=True, help="The model name clients call.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    model, tokenizer = load(args.base, args.adapter)
    server = Server(Engine(model, tokenizer, args.name))
    web.run_app(server.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

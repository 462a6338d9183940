"""A fake of OpenAI's HTTP API for tests and benchmarks, on a real socket.

Shapes follow OpenAI's API reference: chat.completion and
chat.completion.chunk objects (stream_options.include_usage, tool calls, n,
JSON mode), Response objects and their streaming events (responses.py), the error object with its headers, x-request-id, openai-* and
x-ratelimit-* headers. Tests steer a call with request headers, which the
proxy forwards like any other:

    X-Fake-Status: 429          answer with this error status
    X-Fake-Delay: 0.5           wait this long before the response head
    X-Fake-Cut: 2               streams: stop (drop the connection) after N chunks
    X-Fake-Chunk-Delay: 0.05    streams: pause between chunks
    X-Fake-Raw: name            answer 200 with ``fake.raw[name]``: (content type, body bytes)

Answers are deterministic: ``answer(model, messages)``.
Run alone: ``python -m tests.fake_openai --port 9000 [--delay 0.02]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.background import BackgroundApp
from tests.fake_openai.chat import ChatAPI, Seen
from tests.fake_openai.embeddings import EmbeddingsAPI
from tests.fake_openai.responses import ResponsesAPI
from tests.fake_openai.tuning import TuningAPI


@dataclass
class FakeOpenAI(ChatAPI, ResponsesAPI, TuningAPI, EmbeddingsAPI):
    delay: float = 0.0
    api_key_prefix: str = "sk-"
    seen: list[Seen] = field(default_factory=list)
    keep_seen: bool = True
    answers: dict[str, Any] = field(default_factory=dict)  # model -> callable(messages) -> str
    raw: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # X-Fake-Raw canned bodies
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # responses by id
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

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.create_response)
        app.router.add_get("/v1/responses/{response_id}", self.get_response)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/files", self.upload_file)
        app.router.add_post("/v1/fine_tuning/jobs", self.create_job)
        app.router.add_get("/v1/fine_tuning/jobs", self.list_jobs)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}", self.get_job)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", self.job_events)
        app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", self.cancel_job)
        return app


class Running:
    """The fake served from a background thread: ``with Running() as fake: fake.url``."""

    def __init__(self, fake: FakeOpenAI | None = None) -> None:
        self.fake = fake or FakeOpenAI()
        self.url = ""
        self._server = BackgroundApp(self.fake.app)

    def __enter__(self) -> Running:
        self.url = self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


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

__all__ = ["FakeOpenAI", "Running", "Seen", "main"]

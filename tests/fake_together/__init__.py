"""A fake of Together AI's files and fine-tuning HTTP API, on a real socket.

Written to Together's API reference (docs.together.ai/reference, the OpenAPI
spec in togethercomputer/openapi) and to what the ``together`` 3.x SDK sends:

    POST /v1/files                   SDK upload, step 1: form (purpose, file_name, file_type,
                                     checksum) -> 302, Location (where to PUT) and
                                     X-Together-File-Id; 409 {"file_id"} when the checksum is known
    PUT  /upload/{file_id}           step 2: the bytes (the "presigned" URL)
    POST /v1/files/{id}/preprocess   step 3: server-side validation -> FileResponse
    POST /v1/files/upload            the documented one-shot multipart upload
    GET  /v1/files/{id}
    GET  /v1/fine-tunes/models/limits?model_name=   FinetuneModelLimits (404: not tunable)
    POST /v1/fine-tunes/estimate-price
    POST /v1/fine-tunes              FinetuneResponseTruncated, status pending
    GET  /v1/fine-tunes              {"data": [...]}
    GET  /v1/fine-tunes/{id}         one lifecycle step per look: pending -> queued ->
                                     running -> uploading -> completed (or error when the
                                     suffix contains "fail")
    GET  /v1/fine-tunes/{id}/events  {"data": [FinetuneEvent...]}, oldest first, no ids
    POST /v1/fine-tunes/{id}/cancel  cancel_requested, then cancelled at the next look

Errors are Together's ``{"error": {"message", "type", "param", "code"}}``.
Run alone: ``python -m tests.fake_together --port 9100``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.background import BackgroundApp
from tests.fake_together.common import error
from tests.fake_together.files import FilesAPI
from tests.fake_together.fine_tunes import FineTunesAPI


@dataclass
class FakeTogether(FilesAPI, FineTunesAPI):
    api_key_prefix: str = "tg-"
    user: str = "fakeuser"
    url: str = ""
    tunable: tuple[str, ...] = (
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
        "Qwen/Qwen2.5-7B-Instruct",
    )
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, body)
    fail: dict[str, int] = field(default_factory=dict)  # "create": answer 500 this many times

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 << 20)
        app.router.add_post("/v1/files", self.start_upload)
        app.router.add_put("/upload/{file_id}", self.put_bytes)
        app.router.add_post("/v1/files/upload", self.upload_one_shot)
        app.router.add_post("/v1/files/{file_id}/preprocess", self.preprocess)
        app.router.add_get("/v1/files/{file_id}", self.get_file)
        app.router.add_get("/v1/fine-tunes/models/limits", self.model_limits)
        app.router.add_post("/v1/fine-tunes/estimate-price", self.estimate_price)
        app.router.add_post("/v1/fine-tunes", self.create_job)
        app.router.add_get("/v1/fine-tunes", self.list_jobs)
        app.router.add_get("/v1/fine-tunes/{job_id}", self.get_job)
        app.router.add_get("/v1/fine-tunes/{job_id}/events", self.job_events)
        app.router.add_post("/v1/fine-tunes/{job_id}/cancel", self.cancel_job)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            token = request.headers.get("Authorization", "")
            if not token.startswith("Bearer " + self.api_key_prefix):
                return error(401, "Invalid API key provided", "invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response


class Running:
    """The fake served from a background thread: ``with Running() as fake: fake.url``."""

    def __init__(self, fake: FakeTogether | None = None) -> None:
        self.fake = fake or FakeTogether()
        self._server = BackgroundApp(self.fake.app)

    def __enter__(self) -> FakeTogether:
        self.fake.url = self._server.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    fake = FakeTogether(url=f"http://127.0.0.1:{args.port}")
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


__all__ = ["FakeTogether", "Running", "main"]

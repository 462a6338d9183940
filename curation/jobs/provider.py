"""The fine-tuning provider through the openai SDK: the only module that imports it.

Works against OpenAI or any compatible provider at OPENAI_BASE_URL. Every SDK
error becomes an UpstreamError with the provider's own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import openai

from curation.config import Settings
from curation.errors import InvalidInput, UpstreamError

T = TypeVar("T")


class Provider:
    def __init__(self, settings: Settings, *, max_retries: int = 2) -> None:
        if not settings.openai_api_key:
            raise InvalidInput(
                "OPENAI_API_KEY is not set: export it (the fine-tuning provider's key) and run again"
            )
        self.base_url = settings.openai_base_url
        self.client = openai.OpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            max_retries=max_retries,
            timeout=120,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except openai.APIStatusError as exc:
            message = exc.message
            if isinstance(exc.body, dict) and exc.body.get("message"):
                message = str(exc.body["message"])
            raise UpstreamError(
                f"{what}: the provider answered {exc.status_code}: {message}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise UpstreamError(
                f"{what}: cannot reach the provider at {self.base_url} ({exc.__cause__ or exc})"
            ) from exc

    def chat(self, **request: Any) -> tuple[dict[str, Any], dict[str, Any], float]:
        """One chat completion: (assistant message, usage, latency in ms)."""
        started = time.perf_counter()
        reply = self._call(
            f"asking {request.get('model')}", lambda: self.client.chat.completions.create(**request)
        )
        latency = (time.perf_counter() - started) * 1000
        message = reply.choices[0].message.model_dump(exclude_none=True) if reply.choices else {}
        return message, reply.usage.model_dump() if reply.usage else {}, latency

    def upload(self, path: Path) -> str:
        def go() -> str:
            with open(path, "rb") as f:
                return self.client.files.create(file=f, purpose="fine-tune").id

        return self._call(f"uploading {path.name}", go)

    def create_job(self, **params: Any) -> dict[str, Any]:
        return self._call(
            "creating the job", lambda: self.client.fine_tuning.jobs.create(**params).model_dump()
        )

    def retrieve(self, job_id: str) -> dict[str, Any]:
        return self._call(
            f"reading job {job_id}",
            lambda: self.client.fine_tuning.jobs.retrieve(job_id).model_dump(),
        )

    def events(self, job_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` events, oldest first."""
        page = self._call(
            f"reading events of {job_id}",
            lambda: self.client.fine_tuning.jobs.list_events(job_id, limit=limit),
        )
        return [e.model_dump() for e in reversed(page.data)]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call(
            f"cancelling job {job_id}",
            lambda: self.client.fine_tuning.jobs.cancel(job_id).model_dump(),
        )

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs newest first, following the SDK's pagination."""

        def go() -> list[dict[str, Any]]:
            out = []
            for job in self.client.fine_tuning.jobs.list(limit=min(limit, 100)):
                out.append(job.model_dump())
                if len(out) >= limit:
                    break
            return out

        return self._call("listing jobs", go)

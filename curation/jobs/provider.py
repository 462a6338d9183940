"""An OpenAI-shaped API through the openai SDK: the one place its errors are translated.

Works against OpenAI or any compatible provider at OPENAI_BASE_URL. The
evaluation and relabelling use ``chat``; the ``openai`` training backend
(``backends/openai.py``) uses ``client`` through ``call``. Every SDK error
becomes an UpstreamError with the provider's own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from curation.config import Settings
from curation.errors import InvalidInput, UpstreamError

if TYPE_CHECKING:
    import openai

T = TypeVar("T")


class Provider:
    def __init__(self, settings: Settings, *, max_retries: int = 2) -> None:
        if not settings.openai_api_key:
            raise InvalidInput(
                "OPENAI_API_KEY is not set: export it (the fine-tuning provider's key) and run again"
            )
        import openai  # a second to import: only a command that calls a provider pays it

        self.base_url = settings.openai_base_url
        self.client: openai.OpenAI = openai.OpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            max_retries=max_retries,
            timeout=120,
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; its failure becomes one UpstreamError line."""
        import openai

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
        reply = self.call(
            f"asking {request.get('model')}", lambda: self.client.chat.completions.create(**request)
        )
        latency = (time.perf_counter() - started) * 1000
        message = reply.choices[0].message.model_dump(exclude_none=True) if reply.choices else {}
        return message, reply.usage.model_dump() if reply.usage else {}, latency

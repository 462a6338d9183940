"""Embeddings of prompts from the configured OpenAI-compatible provider, for
``curation coverage NS --embeddings MODEL`` (the job layer is the one that talks to
providers through the openai SDK; ``Provider`` translates its errors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from curation.config import Settings
from curation.errors import UpstreamError
from curation.jobs.provider import Provider

BATCH = 256  # inputs per request: well under every provider's limit


def embedder(settings: Settings, model: str) -> Callable[[Sequence[str]], npt.NDArray[np.float32]]:
    """A function from prompts to one embedding row each, through ``model``."""
    provider = Provider(settings)

    def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows: list[list[float]] = []
        for at in range(0, len(texts), BATCH):
            part = [t or " " for t in texts[at : at + BATCH]]  # providers refuse empty input
            reply = provider.call(
                f"embedding with {model}", partial(_create, provider, model, part)
            )
            ordered = sorted(reply.data, key=lambda d: d.index)
            if len(ordered) != len(part):
                raise UpstreamError(
                    f"embedding with {model}: the provider answered {len(ordered)} embeddings "
                    f"for {len(part)} inputs"
                )
            rows += [list(d.embedding) for d in ordered]
        if len({len(r) for r in rows}) > 1:
            raise UpstreamError(f"embedding with {model}: the provider's vectors differ in length")
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)

    return embed


def _create(provider: Provider, model: str, part: list[str]) -> Any:
    return provider.client.embeddings.create(model=model, input=part, encoding_format="float")

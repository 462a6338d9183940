"""POST /v1/embeddings: deterministic vectors from the text, so tests know the clusters.

Each word of the input adds one to a dimension chosen by its CRC-32: prompts that
share most words point the same way (a bag of words, not a language model)."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from typing import Any

from aiohttp import web

DIMENSIONS = 512


def vector(text: str) -> list[float]:
    v = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        v[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
    return v


class EmbeddingsAPI:
    async def embeddings(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) and i for i in inputs)
        ):
            error = {
                "message": "input must be a non-empty string or array of them",
                "type": "invalid_request_error",
                "param": "input",
                "code": None,
            }
            return web.json_response({"error": error}, status=400)
        data = []
        for i, text in enumerate(inputs):
            v = vector(text)
            encoded: Any = v
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(t.split()) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

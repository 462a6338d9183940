"""Token counts as OpenAI counts chat examples (the cookbook's formula).

Each message costs 3 tokens plus its values' tokens (1 more for ``name``),
the reply is primed with 3; structured values (tool calls, content parts)
and the ``tools`` list are counted as their JSON text.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import tiktoken

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )


def count_messages(messages: list[dict[str, Any]], encoding_name: str) -> int:
    enc = encoding(encoding_name)
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None or key == "weight":
                continue
            total += len(enc.encode_ordinary(_text(value)))
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def count_example(example: dict[str, Any], encoding_name: str) -> int:
    total = count_messages(example.get("messages") or [], encoding_name)
    if example.get("tools"):
        total += len(encoding(encoding_name).encode_ordinary(_text(example["tools"])))
    return total

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

from curation.errors import CurationError

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # tiktoken raises whatever its download raised
        raise CurationError(
            f"cannot load the tiktoken encoding {name} ({type(exc).__name__}); tiktoken downloads it on "
            "first use: allow that, or set TIKTOKEN_CACHE_DIR to a folder holding the file (README: Running offline)"
        ) from exc


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )


_MEMO: dict[tuple[str, str], int] = {}
_MEMO_MAX = 10_000


def count_text(text: str, encoding_name: str, *, repeated: bool = False) -> int:
    """Tokens of ``text``; ``repeated`` texts (roles, the training prompt, tool
    schemas) are remembered, since every example carries the same ones."""
    if repeated:
        key = (encoding_name, text)
        found = _MEMO.get(key)
        if found is None:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            found = _MEMO[key] = len(encoding(encoding_name).encode_ordinary(text))
        return found
    return len(encoding(encoding_name).encode_ordinary(text))


def count_messages(messages: list[dict[str, Any]], encoding_name: str) -> int:
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        for key, value in message.items():
            if value is None or key == "weight":
                continue
            repeated = key == "role" or role == "system"
            total += count_text(_text(value), encoding_name, repeated=repeated)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def count_example(example: dict[str, Any], encoding_name: str) -> int:
    total = count_messages(example.get("messages") or [], encoding_name)
    if example.get("tools"):
        total += count_text(_text(example["tools"]), encoding_name, repeated=True)
    return total

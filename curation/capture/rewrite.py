"""Serving a namespace with its fine-tuned model: rewrite a call's body. Pure.

The model is replaced and the system/developer messages give way to the
namespace's short training prompt, exactly as the model was trained.
"""

from __future__ import annotations

from typing import Any

import orjson

from curation.capture.prompt import SYSTEM_ROLES, role


def rewrite(body: bytes, model: str, short_prompt: str | None) -> bytes | None:
    """The rewritten body, or None when the body is not a chat request (forward it as is)."""
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return None
    messages = [
        m for m in request["messages"] if not (isinstance(m, dict) and role(m) in SYSTEM_ROLES)
    ]
    if short_prompt:
        messages.insert(0, {"role": "system", "content": short_prompt})
    return orjson.dumps({**request, "model": model, "messages": messages})

"""Serving a namespace with its fine-tuned model: rewrite a call's body. Pure.

The model is replaced and the system/developer messages give way to the
namespace's short training prompt, exactly as the model was trained. A
Responses call gets the short prompt as its ``instructions`` instead, and
loses its system/developer input items the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from curation.capture.prompt import SYSTEM_ROLES, role
from curation.capture.responses import API as RESPONSES_API


def rewrite(
    body: bytes, model: str, short_prompt: str | None, api: str = "chat.completions"
) -> bytes | None:
    """The rewritten body, or None when the body is not a request of ``api`` (forward it as is)."""
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    changed = rewritten(request, model, short_prompt, api)
    return None if changed is None else orjson.dumps(changed)


def rewritten(
    request: Any, model: str, short_prompt: str | None, api: str = "chat.completions"
) -> dict[str, Any] | None:
    """``rewrite`` on a parsed request (for callers that go on working on it)."""
    if not isinstance(request, dict):
        return None
    if api == RESPONSES_API:
        return _responses(request, model, short_prompt)
    if not isinstance(request.get("messages"), list):
        return None
    messages = [m for m in request["messages"] if not _is_system(m)]
    if short_prompt:
        messages.insert(0, {"role": "system", "content": short_prompt})
    return {**request, "model": model, "messages": messages}


def _responses(request: dict[str, Any], model: str, short_prompt: str | None) -> dict[str, Any]:
    out = {k: v for k, v in request.items() if k != "instructions"}
    if isinstance(request.get("input"), list):
        out["input"] = [item for item in request["input"] if not _is_system(item)]
    if short_prompt:
        out["instructions"] = short_prompt
    return {**out, "model": model}


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and role(message) in SYSTEM_ROLES

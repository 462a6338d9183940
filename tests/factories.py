"""Rows as the proxy records them, written straight into a test database."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from curation.capture.row import Capture, Row
from curation.db import capture

_n = itertools.count(1)
LONG_PROMPT = "You are the production locations extractor. " * 30


def completion(
    content: str | None = None, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{next(_n)}",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


def add_row(
    conn: psycopg.Connection[Any],
    namespace: str,
    prompt: str,
    answer: str | None = "ok",
    *,
    included: bool = True,
    excluded: bool = False,
    corrected: Any = None,
    tools: list[Any] | None = None,
    tool_calls: list[Any] | None = None,
    tags: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> int:
    conn.execute("SELECT curation_create_namespace(%s)", [namespace])
    request: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": messages
        or [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": prompt}],
    }
    if tools:
        request["tools"] = tools
        request["parallel_tool_calls"] = False
    row = conn.execute(
        f"INSERT INTO {namespace}_openai_chat_completion (namespace, user_prompt, request, response, system_prompt,"
        " included, excluded, corrected_response, tags) VALUES (%s, %s, %s, %s, %s, CASE WHEN %s THEN now() END,"
        " CASE WHEN %s THEN now() END, %s, %s) RETURNING id",
        [
            namespace,
            prompt,
            json.dumps(request),
            json.dumps(completion(answer, tool_calls)),
            LONG_PROMPT,
            included,
            excluded,
            json.dumps(corrected) if corrected is not None else None,
            json.dumps(tags or {}),
        ],
    ).fetchone()
    return int(row["id"] if isinstance(row, dict) else row[0])  # type: ignore[index]


def captured(prompt: str, tags: dict[str, str], namespace: str = "locations") -> Row:
    """A row as the recorder builds it from a capture, before it is written."""
    return Row(
        namespace=namespace,
        user_prompt=prompt,
        response=json.dumps({"choices": []}),
        request="{}",
        system_prompt=None,
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        streamed=False,
        upstream_request_id=None,
        seen_at=datetime.now(UTC),
        tags=json.dumps(tags),
    )


async def write_batches(db_url: str, batches: list[list[Row]]) -> None:
    """Write each batch in its own transaction, through the recorder's own insert."""
    conn = await capture.connect(db_url)
    try:
        for batch in batches:
            async with conn.transaction():
                await capture.insert_rows(conn, batch)
    finally:
        await conn.close()


def spooled(**fields: Any) -> Capture:
    """A spooled capture with neutral defaults: tests name only what they are about."""
    defaults: dict[str, Any] = {
        "namespace": "ns",
        "started_at": 1.0,
        "latency_ms": 1.0,
        "streamed": False,
        "content_encoding": None,
        "request_id": None,
        "tags_header": None,
        "request": b"{}",
        "response": b"{}",
    }
    return Capture(**{**defaults, **fields})

"""Writing captured rows (async, for the proxy's background writer).

A batch is COPYed into a temp staging table, folded and upserted in one
statement, and the spool checkpoint moves in the same transaction: after a
crash the replay starts exactly where the committed rows end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.capture import tags
from curation.capture.row import Row
from curation.db import queries

AsyncConnection = psycopg.AsyncConnection[dict[str, Any]]


async def connect(url: str) -> AsyncConnection:
    """The recorder's connection. A wait on it is never a stall (recorder.py), so a peer
    gone silent must end it: TCP keepalives and a 30 s limit on unacknowledged data.

    The server ends a session of ours left idle in a transaction (a recorder cut off
    mid-batch by a network fault): its locks on the checkpoint and the rows would
    otherwise block the next recorder until the server's own keepalive, hours later.
    The writer never idles inside a transaction, so 30 s is far from its pace."""
    conn = await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        row_factory=dict_row,
        connect_timeout=5,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=30_000,
    )
    await conn.execute(queries.get("session_limits"))
    await conn.execute(queries.get("create_staging"))
    return conn


async def namespaces(conn: AsyncConnection) -> set[str]:
    cur = await conn.execute(queries.get("namespace_names"))
    return {str(r["name"]) for r in await cur.fetchall()}


async def checkpoint(conn: AsyncConnection, spool_id: str) -> tuple[int, int] | None:
    cur = await conn.execute(queries.get("get_checkpoint"), {"spool_id": spool_id})
    row = await cur.fetchone()
    return (int(row["segment"]), int(row["byte_offset"])) if row else None


async def create_namespaces(conn: AsyncConnection, names: set[str]) -> None:
    for name in sorted(names):
        await conn.execute(
            queries.get("create_namespace"),
            {
                "name": name,
                "training_system_prompt": None,
                "base_model": None,
            },
        )


async def insert_rows(conn: AsyncConnection, rows: Sequence[Row], *, clear: bool = False) -> None:
    """Upsert ``rows``; ``clear`` empties staging for another insert in the same transaction."""
    async with conn.cursor() as cur:
        # tag merges by the proxy are not curation: the audit trigger skips them;
        # JIT would compile the upsert's plan over every partition for seconds
        await cur.execute(
            "SELECT set_config('curation.source', 'proxy', true), set_config('jit', 'off', true)"
        )
        async with cur.copy(queries.get("copy_staging")) as copy:
            for ord_, r in enumerate(rows):
                if ord_ % 32 == 31:
                    await asyncio.sleep(0)  # let the proxy's requests run between slices
                await copy.write_row(
                    (
                        ord_,
                        r.namespace,
                        r.user_prompt,
                        r.response,
                        r.request,
                        r.system_prompt,
                        r.model,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.latency_ms,
                        r.streamed,
                        r.upstream_request_id,
                        r.seen_at,
                        r.tags,
                        r.rewritten,
                        r.fallback_from,
                    )
                )
        await cur.execute(queries.get("insert_from_staging"), {"max_tags": tags.MAX_TAGS})
        if clear:
            await cur.execute("DELETE FROM capture_staging")


async def set_checkpoint(
    conn: AsyncConnection, spool_id: str, segment: int, offset: int, rows: int
) -> None:
    await conn.execute(
        queries.get("set_checkpoint"),
        {
            "spool_id": spool_id,
            "segment": segment,
            "offset": offset,
            "rows": rows,
        },
    )


async def serving_table(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every namespace with its serving settings (the proxy polls this)."""
    cur = await conn.execute(queries.get("serving_table"))
    return await cur.fetchall()

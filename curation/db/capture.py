"""Writing captured rows (async, for the proxy's background writer).

A batch is COPYed into a temp staging table, folded and upserted in one
statement, and the spool checkpoint moves in the same transaction: after a
crash the replay starts exactly where the committed rows end.

The functions the writer calls raise only the project's errors (errors.py):
``DatabaseUnavailable`` when PostgreSQL is away, ``RowRefused`` when it
refused a batch's data (``write_batch``; ``write_each`` hands each row it
refuses to its caller and writes the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.capture import tags
from curation.capture.row import Row
from curation.db import feedback, keepalive, queries
from curation.db.errors import CONNECTION_ERRORS, wrap_errors
from curation.errors import RowRefused

AsyncConnection = psycopg.AsyncConnection[dict[str, Any]]

# capture_staging's columns, in copy_staging's order (binary COPY sends no names)
STAGING_TYPES = (
    "int4", "text", "text", "text", "text", "text", "text", "int4", "int4", "float4", "bool",
    "text", "timestamptz", "text", "bool", "text", "text", "text", "text", "text", "text",
)  # fmt: skip


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
        **keepalive.CLIENT,
    )
    await conn.execute(queries.get("session_limits"))
    await conn.execute(queries.get("fast_compression"))
    await conn.execute(queries.get("create_staging"))
    return conn


async def open_writer(
    url: str, spool_id: str
) -> tuple[AsyncConnection, tuple[int, int] | None, set[str]]:
    """The writer's connection, its spool's checkpoint and the namespaces that exist.

    Only a failure to reach PostgreSQL is ``DatabaseUnavailable`` (retry later);
    any other error here is a bug and propagates: the recorder exits."""
    with wrap_errors(CONNECTION_ERRORS):
        conn = await connect(url)
        return conn, await _checkpoint(conn, spool_id), await namespaces(conn)


async def close(conn: AsyncConnection) -> None:
    """Close ``conn``; one whose connection is already lost closes quietly."""
    with contextlib.suppress(*CONNECTION_ERRORS):
        await conn.close()


async def namespaces(conn: AsyncConnection) -> set[str]:
    cur = await conn.execute(queries.get("namespace_names"))
    return {str(r["name"]) for r in await cur.fetchall()}


async def checkpoint(conn: AsyncConnection, spool_id: str) -> tuple[int, int] | None:
    """Where the committed rows of ``spool_id`` end (None: nothing committed yet)."""
    with wrap_errors():
        return await _checkpoint(conn, spool_id)


async def _checkpoint(conn: AsyncConnection, spool_id: str) -> tuple[int, int] | None:
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


async def ensure_namespaces(conn: AsyncConnection, names: set[str]) -> None:
    """Create ``names`` in a short transaction of their own (creating one takes locks that
    would otherwise block every other proxy's writer for a whole batch)."""
    with wrap_errors(rows_on=conn):
        async with conn.transaction():
            await create_namespaces(conn, names)


async def write_batch(
    conn: AsyncConnection, spool_id: str, rows: Sequence[Row], segment: int, offset: int
) -> None:
    """``rows`` and the checkpoint moved to their end, in one transaction."""
    with wrap_errors(rows_on=conn):
        async with conn.transaction():
            if rows:
                await insert_rows(conn, rows)
            await set_checkpoint(conn, spool_id, segment, offset, len(rows))


async def write_each(
    conn: AsyncConnection,
    spool_id: str,
    rows: Sequence[Row],
    segment: int,
    offset: int,
    refused: Callable[[Row, RowRefused], None],
) -> tuple[int, set[str]]:
    """Each row in a savepoint of its own, then the checkpoint, in one transaction; a row
    PostgreSQL refuses goes to ``refused``. How many went in, and their namespaces."""
    written: set[str] = set()
    count = 0
    with wrap_errors():
        async with conn.transaction():
            for r in rows:
                try:
                    with wrap_errors(rows_on=conn):
                        async with conn.transaction():
                            if r.namespace not in written:  # whatever the caller believes
                                await create_namespaces(conn, {r.namespace})
                            await insert_rows(conn, [r], clear=True)
                except RowRefused as exc:
                    refused(r, exc)
                    continue
                written.add(r.namespace)
                count += 1
            await set_checkpoint(conn, spool_id, segment, offset, count)
    return count, written


async def insert_rows(conn: AsyncConnection, rows: Sequence[Row], *, clear: bool = False) -> None:
    """Upsert ``rows`` and map their call ids; ``clear`` empties staging for another insert
    in the same transaction. The session already says the writes are the proxy's and JIT
    is off (``session_limits``): a batch is a COPY and two statements."""
    async with conn.cursor() as cur:
        async with cur.copy(queries.get("copy_staging")) as copy:
            copy.set_types(STAGING_TYPES)
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
                        r.api,
                        r.response_id,
                        r.previous_response_id,
                        r.call_id,
                        ",".join(r.flags) if r.flags is not None else None,
                    )
                )
        # the upsert maps call ids -> rows in the same statement
        await cur.execute(queries.get("insert_from_staging"), {"max_tags": tags.MAX_TAGS})
        if any(r.call_id for r in rows):  # then the feedback that came before them
            await _attach_feedback(conn)
        if clear:
            await cur.execute("DELETE FROM capture_staging")


async def _attach_feedback(conn: AsyncConnection) -> None:
    """Attach feedback that came before its call was recorded; a correction among it
    becomes its row's proposal (the latest, by feedback id, for each row)."""
    cur = await conn.execute(queries.get("attach_feedback"))
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for f in await cur.fetchall():
        key = (f["namespace"], f["row_id"])
        if f["correction"] is not None and (key not in latest or f["id"] > latest[key]["id"]):
            latest[key] = f
    if latest:
        await feedback.propose(conn, latest.values())  # the one place proposals are made


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

"""The rollout's queries (rollout.sql): the decider's connection, and curation serve's.

``DeciderConnection`` is the one connection a decider keeps: it holds the
session advisory lock that makes its proxy the only decider, reads the
numbers and applies steps. Any failure is ``DatabaseUnavailable``; the
connection is then closed (so the lock is surely gone) and the next call
opens a fresh one and asks for the lock again.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from curation.db import queries
from curation.errors import DatabaseUnavailable

if TYPE_CHECKING:  # psycopg itself is imported with the first query, not for `curation --help`
    from curation.db.capture import AsyncConnection
    from curation.db.connect import Connection

CONNECT_TIMEOUT = 5
MIN_IDLE_S = 15  # idle_session_timeout's floor: a slow tick must not end its own session


class DeciderConnection:
    def __init__(self, url: str, *, idle_s: float = 60) -> None:
        """``idle_s``: the server ends the session after this long without a query (the
        decider's tick queries every time, so pass a multiple of the tick)."""
        self.url = url
        self.idle_s = max(MIN_IDLE_S, idle_s)
        self.leading = False
        self._conn: AsyncConnection | None = None

    async def lead(self) -> bool:
        """Whether this process is the decider: it holds the lock, or has just taken it."""
        if self.leading and self._conn is not None and not self._conn.closed:
            return True  # a lost session shows in the next query, which closes it
        row = await self._fetch("rollout_try_lock", {})
        self.leading = bool(row and row[0]["locked"])
        return self.leading

    async def active(self) -> list[dict[str, Any]]:
        """Every namespace with a rollout under way."""
        return await self._fetch("rollout_active", {})

    async def stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return (await self._fetch("rollout_stats", params))[0]

    async def apply(self, params: dict[str, Any]) -> bool:
        """Move the rollout and record the step; False when it changed since it was read."""
        return bool(await self._fetch("rollout_apply", params))

    async def prune(self) -> None:
        """Drop serving tallies older than a day (serving_tally_bucket_idx finds them)."""
        await self._fetch("rollout_prune_tally", {})

    async def close(self) -> None:
        conn, self._conn, self.leading = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _fetch(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        from curation.db.errors import wrap_errors

        try:
            with wrap_errors():
                conn = await self._connect()
                cur = await conn.execute(queries.get(name), params)
                return await cur.fetchall()
        except DatabaseUnavailable:
            await self.close()
            raise

    async def _connect(self) -> AsyncConnection:
        import psycopg
        from psycopg.rows import dict_row

        from curation.db import keepalive

        if self._conn is None or self._conn.closed:
            self.leading = False  # a new session holds no lock
            conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                row_factory=dict_row,
                application_name="curation-rollout",
                **keepalive.CLIENT,
            )
            try:
                params = {**keepalive.SERVER, "idle": f"{int(self.idle_s * 1000)}ms"}
                await conn.execute(queries.get("rollout_session"), params)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn


# -- curation serve (sync) ---------------------------------------------------


def settings(conn: Connection, namespace: str, *, for_update: bool = False) -> dict[str, Any]:
    """The namespace's serving settings; ``for_update``: locked until the transaction ends."""
    name = "serve_settings_for_update" if for_update else "serve_settings"
    row = conn.execute(queries.get(name), {"namespace": namespace}).fetchone()
    assert row is not None  # the caller checked the namespace exists
    return row


def set_serving(conn: Connection, namespace: str, **values: Any) -> None:
    """model, endpoint, key_env, serve, shadow, watch and rollout (a JSON text or None)."""
    conn.execute(queries.get("serve_set"), {"namespace": namespace, **values})


def set_budget(conn: Connection, namespace: str, per_minute: int) -> None:
    conn.execute(
        queries.get("serve_set_budget"), {"namespace": namespace, "per_minute": per_minute}
    )


def record_step(conn: Connection, namespace: str, **values: Any) -> None:
    """model, from/to percent and stage, reason, decided_by: a change made by hand."""
    conn.execute(queries.get("rollout_step_insert"), {"namespace": namespace, **values})


def history(conn: Connection, namespace: str, limit: int) -> list[dict[str, Any]]:
    return conn.execute(
        queries.get("rollout_history"), {"namespace": namespace, "limit": limit}
    ).fetchall()


def live(conn: Connection, namespace: str, model: str, last: int) -> dict[str, Any]:
    """Agreement over the last ``last`` comparisons and the last hour; latency and tokens."""
    params = {"namespace": namespace, "model": model, "last": last}
    row = conn.execute(queries.get("serve_live"), params).fetchone()
    tally = conn.execute(queries.get("serve_tally_hour"), {"namespace": namespace}).fetchone()
    return {**(row or {}), **(tally or {})}


def set_compare(conn: Connection, namespace: str, compare: str | None) -> None:
    conn.execute(queries.get("set_compare"), {"namespace": namespace, "compare": compare})


def compare_of(conn: Connection, namespace: str) -> str | None:
    row = conn.execute(queries.get("get_compare"), {"namespace": namespace}).fetchone()
    return None if row is None else row["compare"]


# -- disagreements as review work --------------------------------------------


def next_disagreement(conn: Connection, namespace: str, skip: list[int]) -> dict[str, Any] | None:
    """Lock and return the pending row a student disagreed on last (inside a transaction)."""
    return conn.execute(
        queries.for_namespace("next_disagreement", namespace),
        {"namespace": namespace, "skip": skip},
    ).fetchone()


def last_disagreement(conn: Connection, namespace: str, row_id: int) -> dict[str, Any] | None:
    """The latest live answer of a student that disagreed with this row's teacher."""
    return conn.execute(
        queries.get("last_disagreement"), {"namespace": namespace, "id": row_id}
    ).fetchone()

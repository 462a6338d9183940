"""The rollout decider against the failures a review found: a vanished leader, a failing
student in shadow, stale tallies and comparisons of the previous stage."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from typing import Any

from curation.db.shadow import Comparison, ShadowStore
from curation.rollout.decider import Decider
from tests.test_rollout import (
    FT,
    TEACHER,
    TICK,
    Conn,
    compare,
    serving,
    start_rollout,
    steps,
    until,
    with_deciders,
)


def test_the_deciders_session_ends_when_its_host_goes_silent(db_url: str, conn: Conn) -> None:
    """Keepalives on both sides and server-side limits: a dead leader's lock is freed."""
    start_rollout(db_url, conn)

    async def main() -> None:
        d = Decider(db_url, interval=TICK, name="decider-a")
        d.start()
        try:
            await until(lambda: d.leading)
            session = d.db._conn
            assert session is not None
            shown = {}
            for name in (
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
                "statement_timeout",
                "idle_session_timeout",
            ):
                cur = await session.execute(f"SHOW {name}")
                shown[name] = (await cur.fetchone() or {}).get(name)
            assert shown == {
                "tcp_keepalives_idle": "10",
                "tcp_keepalives_interval": "5",
                "tcp_keepalives_count": "3",
                "tcp_user_timeout": "30000",
                "statement_timeout": "5s",
                "idle_session_timeout": "15s",  # 20 ticks of 50 ms, raised to the floor
            }
            given = {o.keyword: o.val for o in session.pgconn.info}  # libpq's side
            assert given[b"keepalives"] == b"1" and given[b"keepalives_idle"] == b"10"
            assert given[b"keepalives_count"] == b"3"
            assert given[b"tcp_user_timeout"] == b"30000"
        finally:
            await d.stop()

    asyncio.run(main())


def failed_calls(conn: Conn, n: int) -> None:
    """``n`` shadow calls the student failed (timeouts, 5xx): no answer to compare."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow_comparison (call_id, namespace, kind, teacher_model, student_model,"
            " agreed, error, call_failed) VALUES (%s, 'locations', 'shadow', %s, %s, NULL,"
            " 'status 503', true)",
            [(uuid.uuid4(), TEACHER, FT) for _ in range(n)],
        )


def test_a_student_failing_most_background_calls_is_not_promoted(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)
    compare(conn, 20)
    failed_calls(conn, 60)  # 60 of 80 calls failed: only its answers agree

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        await until(lambda: d.leading)
        await asyncio.sleep(10 * TICK)
        assert serving(conn)["stage"] == "shadow"
        numbers = await d.db.stats(stats_params(conn))
        assert (numbers["samples"], numbers["errors"], numbers["window_errors"]) == (20, 60, 60)

    assert "5%" not in [s["to_stage"] for s in steps(conn)]


def test_a_comparator_error_is_not_the_students_failure(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)
    compare(conn, 20)
    conn.execute(  # the comparator could not judge: no answer counted either way
        "INSERT INTO shadow_comparison (call_id, namespace, kind, student_model, agreed, error)"
        " SELECT gen_random_uuid(), 'locations', 'shadow', %s, NULL, 'comparator: boom'"
        " FROM generate_series(1, 60)",
        [FT],
    )

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        await until(lambda: serving(conn)["stage"] == "5%")


def test_the_previous_stages_calls_are_not_this_stages(db_url: str, conn: Conn) -> None:
    """Tallies and comparisons from before the stage began (the same minute, even the same
    10-second bucket) count for neither its promotion nor its error rate."""
    start_rollout(db_url, conn)
    since = conn.execute(
        "SELECT (rollout->>'since')::timestamptz AS t FROM namespace WHERE name = 'locations'"
    ).fetchone()
    assert since is not None
    conn.execute(
        "INSERT INTO serving_tally (namespace, proxy, bucket, student_calls, student_failures)"
        " VALUES ('locations', 'p:1', %s - interval '1 ms', 100, 100)",
        [since["t"]],
    )
    failed_calls(conn, 60)
    conn.execute("UPDATE shadow_comparison SET created_at = %s - interval '1 ms'", [since["t"]])
    compare(conn, 20)

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        await until(lambda: serving(conn)["stage"] == "5%")


def stats_params(conn: Conn) -> dict[str, Any]:
    row = conn.execute(
        "SELECT serve_model, rollout->>'since' AS since FROM namespace WHERE name = 'locations'"
    ).fetchone()
    assert row is not None
    return {
        "namespace": "locations",
        "model": row["serve_model"],
        "since": row["since"],
        "samples": 20,
        "window": 20,
        "error_window_s": 60,
    }


def shadow_comparison(**fields: Any) -> Comparison:
    """An agreeing shadow comparison of FT against the teacher, with ``fields`` changed."""
    defaults: dict[str, Any] = {
        "call_id": str(uuid.uuid4()),
        "namespace": "locations",
        "kind": "shadow",
        "teacher_model": TEACHER,
        "student_model": FT,
        "teacher_answer": None,
        "student_answer": None,
        "agreed": True,
        "error": None,
        "teacher_ms": 1.0,
        "student_ms": 2.0,
    }
    return Comparison(**{**defaults, **fields})


def test_a_comparison_is_stamped_when_its_call_was_launched(db_url: str, conn: Conn) -> None:
    """Written up to a flush (and a 60 s call) later, it still counts in its launch's stage."""
    conn.execute("SELECT curation_create_namespace('locations')")
    store = ShadowStore(db_url, "p:1")
    store.add(
        shadow_comparison(
            agreed=None,
            error="timeout: no answer within 60s",
            teacher_ms=800.0,
            student_ms=None,
            call_failed=True,
            launched=time.monotonic() - 61,
        )
    )

    async def flush() -> None:
        await store.flush()
        await store.stop()

    asyncio.run(flush())
    row = conn.execute(
        "SELECT extract(epoch FROM now() - created_at)::float8 AS age, call_failed"
        " FROM shadow_comparison"
    ).fetchone()
    assert row is not None and row["call_failed"] is True
    assert 60 < row["age"] < 70


def test_a_flush_cancelled_at_shutdown_keeps_what_it_held() -> None:
    """A PostgreSQL that accepts and never answers: the flush waits; cancelling it (the
    proxy stopping) puts its tallies and comparisons back for stop()'s last flush."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    store = ShadowStore(f"postgresql://nobody@127.0.0.1:{port}/nothing", "p:1")
    comparison = shadow_comparison()
    store.add(comparison)
    store.count("locations", "student_calls", time.time(), 3)

    async def cancelled() -> None:
        task = asyncio.create_task(store.flush())
        await asyncio.sleep(0.3)
        assert not store.queue and not store.tallies  # swapped out, waiting on the socket
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancelled())
    finally:
        listener.close()
    assert store.queue == [comparison]
    assert [dict(c) for c in store.tallies.values()] == [{"student_calls": 3}]

"""The rollout decider against real PostgreSQL: comparisons and tallies in, steps out.

Rows are inserted into shadow_comparison and serving_tally as the proxies
write them; the real decider task runs on its own connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.rollout.decider import Decider
from tests.cli import run
from tests.factories import add_row

FT = "ft:gpt-4o-mini-2024-07-18:org-fake:locations:abc123"
TEACHER = "gpt-4o-2024-08-06"
TICK = 0.05
Conn = psycopg.Connection[dict[str, Any]]


def start_rollout(db_url: str, conn: Conn, *extra: str) -> None:
    add_row(conn, "locations", "seed")
    result = run(
        db_url,
        "serve",
        "locations",
        "--model",
        FT,
        "--rollout",
        "auto",
        "--min-samples",
        "20",
        *extra,
    )
    assert result.exit_code == 0, result.output
    # a small rolling window, so a test needs few comparisons to move
    conn.execute(
        "UPDATE namespace SET rollout = jsonb_set(jsonb_set(rollout, '{policy,window}', '20'),"
        " '{policy,min_window}', '10') WHERE name = 'locations'"
    )


def compare(conn: Conn, agreed: int, disagreed: int = 0) -> None:
    rows = [True] * agreed + [False] * disagreed
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow_comparison (call_id, namespace, kind, teacher_model, student_model,"
            " agreed, teacher_ms, student_ms) VALUES (%s, 'locations', 'shadow', %s, %s, %s, 800, 90)",
            [(uuid.uuid4(), TEACHER, FT, a) for a in rows],
        )


def tally(conn: Conn, calls: int, failures: int, proxy: str = "p:1") -> None:
    conn.execute(
        "INSERT INTO serving_tally (namespace, proxy, bucket, student_calls, student_failures)"
        " VALUES ('locations', %s, now(), %s, %s)"
        " ON CONFLICT (namespace, proxy, bucket) DO UPDATE SET"
        " student_calls = serving_tally.student_calls + excluded.student_calls,"
        " student_failures = serving_tally.student_failures + excluded.student_failures",
        [proxy, calls, failures],
    )


def serving(conn: Conn) -> dict[str, Any]:
    row = conn.execute(
        "SELECT serve_percent, serve_shadow_percent, serve_watch_percent, rollout->>'stage' AS stage"
        " FROM namespace WHERE name = 'locations'"
    ).fetchone()
    assert row is not None
    return row


def steps(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT from_stage, to_stage, from_percent, to_percent, reason, agreement, samples,"
        " error_rate, decided_by FROM rollout_step WHERE namespace = 'locations' ORDER BY id"
    ).fetchall()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held (the decider's task runs meanwhile)."""
    t0 = time.perf_counter()
    while not check():
        assert time.perf_counter() - t0 < timeout, "timed out"
        await asyncio.sleep(0.02)
    return time.perf_counter() - t0


def with_deciders(db_url: str, *names: str) -> Callable[[Callable[..., Awaitable[None]]], None]:
    """Run ``scenario(*deciders)`` with the deciders started, and stop them after."""

    def runner(scenario: Callable[..., Awaitable[None]]) -> None:
        async def main() -> None:
            deciders = [Decider(db_url, interval=TICK, name=n) for n in names]
            for d in deciders:
                d.start()
            try:
                await scenario(*deciders)
            finally:
                for d in deciders:
                    await d.stop()

        asyncio.run(main())

    return runner


def test_promotes_through_the_steps_and_demotes_in_seconds(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn, "--shadow", "30")
    assert serving(conn) == {
        "serve_percent": 0,
        "serve_shadow_percent": 30,
        "serve_watch_percent": 0,
        "stage": "shadow",
    }

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        compare(conn, 19)
        await asyncio.sleep(10 * TICK)
        assert serving(conn)["stage"] == "shadow"  # one sample short
        for stage in ("5%", "25%", "50%", "100%"):
            compare(conn, 20)
            await until(lambda s=stage: serving(conn)["stage"] == s)  # type: ignore[misc]
        assert serving(conn) == {
            "serve_percent": 100,
            "serve_shadow_percent": 0,
            "serve_watch_percent": 2,
            "stage": "100%",
        }
        compare(conn, 30)
        await asyncio.sleep(10 * TICK)
        assert serving(conn)["stage"] == "100%"  # the top: nothing above
        compare(conn, 2, 8)  # the last 20: 12 of 20 agree
        took = await until(lambda: serving(conn)["stage"] == "shadow")
        assert took < 3.0
        print(f"stepped back on agreement {took:.2f}s after the rows arrived")
        assert serving(conn)["serve_percent"] == 0 and serving(conn)["serve_shadow_percent"] == 30

    history = steps(conn)
    assert [(h["from_stage"], h["to_stage"]) for h in history] == [
        ("off", "shadow"),
        ("shadow", "5%"),
        ("5%", "25%"),
        ("25%", "50%"),
        ("50%", "100%"),
        ("100%", "shadow"),
    ]
    started, *promoted, demoted = history
    assert started["reason"].startswith("rollout started by ") and started["to_percent"] == 0
    for h in promoted:
        assert h["decided_by"] == "decider-a" and h["samples"] == 20 and h["agreement"] == 1.0
        assert h["reason"] == "promote: agreement 1.000 over 20 >= 0.95"
    assert [h["to_percent"] for h in promoted] == [5, 25, 50, 100]
    assert demoted["reason"] == "demote: agreement 0.600 over the last 20 < 0.9"
    assert demoted["agreement"] == 0.6 and demoted["samples"] == 20
    assert demoted["from_percent"] == 100 and demoted["to_percent"] == 0


def test_demotes_when_the_student_fails(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        compare(conn, 20)
        await until(lambda: serving(conn)["stage"] == "5%")
        tally(conn, 30, 1)
        tally(conn, 10, 0, proxy="p:2")
        await asyncio.sleep(10 * TICK)
        assert serving(conn)["stage"] == "5%"  # 1 of 40 calls: too few to judge
        tally(conn, 20, 1, proxy="p:2")  # 2 of 60, from two proxies: 3.3% > 2%
        took = await until(lambda: serving(conn)["stage"] == "shadow")
        assert took < 3.0
        print(f"stepped back on errors {took:.2f}s after the tallies arrived")

    demoted = steps(conn)[-1]
    assert demoted["reason"] == "demote: error rate 0.033 over 60 calls > 0.02"
    assert abs(demoted["error_rate"] - 2 / 60) < 1e-6


def test_no_flapping_after_a_demotion(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        compare(conn, 20)
        await until(lambda: serving(conn)["stage"] == "5%")
        compare(conn, 0, 10)
        await until(lambda: serving(conn)["stage"] == "shadow")
        await asyncio.sleep(20 * TICK)  # the bad comparisons belong to the old stage
        assert serving(conn)["stage"] == "shadow"
        compare(conn, 19)
        await asyncio.sleep(10 * TICK)
        assert serving(conn)["stage"] == "shadow"
        compare(conn, 1)  # 20 fresh agreeing comparisons: up again
        await until(lambda: serving(conn)["stage"] == "5%")

    assert [h["to_stage"] for h in steps(conn)] == ["shadow", "5%", "shadow", "5%"]


def test_two_deciders_one_decides_the_other_takes_over(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)

    @with_deciders(db_url, "decider-a", "decider-b")
    async def scenario(a: Decider, b: Decider) -> None:
        await until(lambda: a.leading or b.leading)
        await asyncio.sleep(10 * TICK)
        assert a.leading != b.leading
        first, second = (a, b) if a.leading else (b, a)
        compare(conn, 20)
        await until(lambda: serving(conn)["stage"] == "5%")
        await first.stop()
        await until(lambda: second.leading, timeout=5)
        compare(conn, 20)
        await until(lambda: serving(conn)["stage"] == "25%")
        assert [h["decided_by"] for h in steps(conn)[1:]] == [first.name, second.name]


def test_survives_postgres_going_away(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)

    async def unreachable() -> None:
        d = Decider("postgresql://nobody@127.0.0.1:1/nothing", interval=TICK)
        d.start()
        await asyncio.sleep(10 * TICK)
        assert d._task is not None and not d._task.done() and not d.leading
        await d.stop()

    asyncio.run(unreachable())

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        await until(lambda: d.leading)
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE application_name = 'curation-rollout' AND datname = current_database()"
        ).fetchone()
        assert killed == {"n": 1}  # the server dropped its session (as a restart does)
        compare(conn, 20)
        await until(lambda: serving(conn)["stage"] == "5%")
        assert d.leading


def test_a_change_by_hand_wins_over_the_decider(db_url: str, conn: Conn) -> None:
    start_rollout(db_url, conn)
    assert run(db_url, "serve", "locations", "--percent", "10", "--force").exit_code == 0

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        compare(conn, 40)
        await asyncio.sleep(20 * TICK)

    row = serving(conn)
    assert row["stage"] is None and row["serve_percent"] == 10
    assert [h["to_stage"] for h in steps(conn)] == ["shadow", "10%"]
    assert steps(conn)[-1]["reason"].startswith("by hand (")


def test_the_lock_is_one_per_database(db_url: str) -> None:
    """The lock is one per database: a second session cannot take it while one holds it."""
    sql = "SELECT pg_try_advisory_lock(hashtext('curation_rollout')) AS locked"
    with (
        psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as one,
        psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as two,
    ):
        assert one.execute(sql).fetchone() == {"locked": True}
        assert two.execute(sql).fetchone() == {"locked": False}


def test_an_unreadable_rollout_is_left_alone(db_url: str, conn: Conn) -> None:
    """A rollout edited into nonsense in psql: logged, left alone, the decider goes on."""
    start_rollout(db_url, conn)
    add_row(conn, "other", "seed")
    conn.execute(
        "UPDATE namespace SET serve_model = %s, rollout = jsonb_set(rollout, '{stage}', '\"12x\"')"
        " WHERE name = 'locations'",
        [FT],
    )
    conn.execute(
        'UPDATE namespace SET serve_model = %s, rollout = \'{"stage": "shadow",'
        ' "since": "2020-01-01T00:00:00+00:00", "policy": {"steps": "bad"}}\''
        " WHERE name = 'other'",
        [FT],
    )

    @with_deciders(db_url, "decider-a")
    async def scenario(d: Decider) -> None:
        await until(lambda: d.leading)
        compare(conn, 40)
        await asyncio.sleep(10 * TICK)
        assert d._task is not None and not d._task.done()

    assert serving(conn)["stage"] == "12x" and len(steps(conn)) == 1

"""Shadow and watch traffic under pressure (issue 14): budgets and concurrency limits drop
background calls, failures are counted, a database that cannot take comparisons and a
shutdown never hold up a client."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiohttp import web

from tests import test_shadow
from tests.background import BackgroundApp
from tests.fake_openai import Running
from tests.harness import ProxyProcess, query, wait_for
from tests.test_proxy_faults import scripted
from tests.test_shadow import (
    BASE,
    MESSAGES,
    STUDENT,
    Conn,
    ask,
    comparison,
    metrics,
    serve,
    tallies,
)

student_api = test_shadow.student_api  # the fixtures: the student's engine
shadowed = test_shadow.shadowed  # and a proxy shadowing it


def test_over_the_budget_background_calls_are_dropped_and_counted(
    db_url: str, shadowed: Callable[..., ProxyProcess]
) -> None:
    if time.time() % 60 > 45:  # the budget is per minute: keep the calls inside one
        time.sleep(61 - time.time() % 60)
    # warmed up by the minute's one shadow call (or more, across a minute's turn)
    proxy = shadowed(shadow_per_minute=1)
    before = query(db_url, "SELECT count(*) AS n FROM shadow_comparison")[0]["n"]
    ids = [ask(proxy, f"I live in town {i}")[0] for i in range(4)]
    line = 'curation_background_dropped_total{namespace="locations",reason="budget"}'
    dropped = wait_for(lambda: [x for x in metrics(proxy).splitlines() if x.startswith(line)])
    assert float(dropped[0].split()[-1]) >= 3
    counts = wait_for(lambda: (t := tallies(db_url))["background_dropped"] >= 3 and t, timeout=10)
    assert counts["background_calls"] >= 1
    time.sleep(0.5)
    after = query(db_url, "SELECT count(*) AS n FROM shadow_comparison")[0]["n"]
    assert after - before <= 1 and len(set(ids)) == 4


def test_over_the_concurrency_limit_background_calls_are_dropped(
    student_api: Running,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed(env={"CURATION_BACKGROUND_CONCURRENCY": "1"})
    student_api.fake.delay = 3.0
    for i in range(3):
        ask(proxy, f"I live in town {i}")  # the first holds the one slot for 3 s
    line = 'curation_background_dropped_total{namespace="locations",reason="concurrency"} 2.0'
    assert line in metrics(proxy)


def test_tallies_count_the_students_calls_and_fallbacks(
    db_url: str,
    student_api: Running,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed(warm=False, serve_percent=100, serve_shadow_percent=0)
    wait_for(lambda: ask(proxy, "warm up")[1] == STUDENT, timeout=15, interval=0.3)

    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("the student crashed")

    student_api.fake.answers[STUDENT] = broken
    for i in range(3):
        assert ask(proxy, f"I live in town {i}")[1] == BASE  # the teacher answers
    counts = wait_for(lambda: (t := tallies(db_url))["student_failures"] == 3 and t, timeout=10)
    assert counts["student_calls"] >= 4  # the warm-up calls that went to the student too
    assert counts["background_calls"] == 0  # no shadow share: no background calls
    assert proxy.proc is not None
    proxies = query(db_url, "SELECT DISTINCT proxy FROM serving_tally")
    assert [r["proxy"] for r in proxies] == [f"{socket.gethostname()}:{proxy.proc.pid}"]


def test_comparisons_postgresql_cannot_take_break_no_call(
    db_url: str,
    conn: Conn,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed(compare="no-such-comparator-xyz")
    call_id, _, _ = ask(proxy, "I live in Lyon")
    row = comparison(db_url, call_id)
    assert row["agreed"] is None and row["error"].startswith("comparator: ")
    assert row["student_answer"] is not None  # both answers kept, for a person to compare
    ask(proxy, "I live in Nice")
    assert proxy.log().count("the comparator cannot compare live answers") == 1  # logged once

    conn.execute("ALTER TABLE shadow_comparison RENAME TO shadow_comparison_away")
    for i in range(3):
        assert ask(proxy, f"I live in town {i}")[2] == f"Answer to: I live in town {i}"
    line = 'curation_background_dropped_total{namespace="locations",reason="database"}'
    wait_for(lambda: line in metrics(proxy), timeout=10)
    assert "shadow comparisons are dropped while PostgreSQL cannot take them" in proxy.log()


def test_shutdown_does_not_wait_for_background_calls(
    student_api: Running,
    shadowed: Callable[..., ProxyProcess],
) -> None:
    proxy = shadowed()
    student_api.fake.delay = 6.0  # longer than the stop below may take
    ask(proxy, "I live in Lyon")
    time.sleep(0.3)  # the shadow call is in flight
    started = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - started < 4


def test_shutdown_kills_a_slow_command_comparator(shadowed: Callable[..., ProxyProcess]) -> None:
    marker = "sleep 30.4321"  # a comparator that never answers in time
    proxy = shadowed(warm=False, compare=marker)

    def comparing() -> bool:
        ask(proxy, "I live in Lyon")
        time.sleep(0.3)
        return marker in running_commands()

    wait_for(comparing, timeout=20, interval=0.2)
    started = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - started < 5
    assert marker not in running_commands()  # its process group was killed, not orphaned


def running_commands() -> str:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return out.stdout


def test_a_plain_answer_the_upstream_served_student_never_finishes_is_a_student_failure(
    db_url: str, conn: Conn, start_proxy: Callable[..., ProxyProcess]
) -> None:
    app = BackgroundApp(faults_upstream)
    upstream = app.start()
    try:
        serve(conn, None, serve_percent=100, serve_shadow_percent=0)
        proxy = start_proxy(upstream=upstream, CURATION_UPSTREAM_READ_TIMEOUT="0.5")
        wait_for(
            lambda: post(proxy, "warm up").status_code == 200 and tallies(db_url)["student_calls"]
        )
        before = tallies(db_url)
        assert post(proxy, "stalled", "stall").status_code == 504
        assert post(proxy, "cut short", "cut").status_code == 502
        counts = wait_for(
            lambda: (
                (t := tallies(db_url))["student_failures"] >= before["student_failures"] + 2 and t
            ),
            timeout=10,
        )
        assert counts["student_failures"] == before["student_failures"] + 2
    finally:
        app.stop()


def faults_upstream() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted)
    return app


def post(proxy: ProxyProcess, text: str, script: str = "") -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/ns/locations/v1/chat/completions",
        json={"model": BASE, "messages": [*MESSAGES, {"role": "user", "content": text}]},
        headers={"Authorization": "Bearer sk-client-key", "X-Script": script},
        timeout=20,
    )

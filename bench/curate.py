"""Curator benchmark (issue 17): one namespace of BENCH_ROWS rows (default 1,000,000;
``--rows N`` for a smaller run), each curator query of the CLI timed beside the
database's own floor, and the CLI's start-up beside ``python -c "import click"``.

The fill is one INSERT ... SELECT over generate_series at revision 0005, so that
revision 0006 then builds its indexes CONCURRENTLY on a full partition, as on a
production upgrade (timed). Rows: 10% are repeats (times_seen up to 997), the
most-seen half of those is decided (as review leaves a namespace), 5% more are
included, 2% excluded, 0.5% corrected; a submitted job trained on half the
included rows; one row in 1000 has a model with no known price.

Each query is what the CLI runs (the library call, rows as dicts), the median of
BENCH_REPEAT (7) runs after one warm-up, printed with the server's own time for
it (EXPLAIN ANALYZE) and its floor: EXPLAIN ANALYZE of a primary-key index scan
returning as many rows (for stats, which reads running counts: a count(*) of
the namespace, what any scan costs at least). Targets: 50 ms for each query,
500 ms for stats, 3x `python -c "import click"` for start-up, which is measured
with DATABASE_URL set (the embedded server would add its own start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT
from psycopg.rows import dict_row

from curation.curate import rows, stats
from curation.db import migrate, queries
from tests import pg

NS = "big"
QUERY_MS, STATS_MS, STARTUP_RATIO = 50.0, 500.0, 3.0
LIMIT = 50  # the CLI's default page

FILL = """
INSERT INTO big_openai_chat_completion (namespace, user_prompt, request, response, system_prompt,
    model, prompt_tokens, completion_tokens, times_seen, first_seen_at, last_seen_at, included,
    excluded, corrected_response, note)
SELECT 'big', p.prompt,
       jsonb_build_object('model', 'gpt-4o', 'temperature', 0, 'messages', jsonb_build_array(
           jsonb_build_object('role', 'system', 'content', repeat('You extract geographical locations. ', 15)),
           jsonb_build_object('role', 'user', 'content', p.prompt))),
       json_build_object('id', 'chatcmpl-' || g, 'object', 'chat.completion', 'model', p.model,
           'choices', json_build_array(json_build_object('index', 0, 'finish_reason', 'stop',
               'message', json_build_object('role', 'assistant',
                   'content', '["town number ' || g || '", "city ' || (g %% 977) || '"]'))),
           'usage', json_build_object('prompt_tokens', 140, 'completion_tokens', 10 + g %% 20)),
       repeat('You extract geographical locations. ', 15),
       p.model, 140, 10 + g %% 20, p.seen,
       now() - interval '30 days' + g * interval '1 second',
       now() - interval '30 days' + g * interval '1 second' + (p.seen - 1) * interval '1 minute',
       CASE WHEN (p.seen > 500 OR g %% 20 = 3) AND g %% 50 <> 7 THEN now() END,
       CASE WHEN g %% 50 = 7 THEN now() END,
       CASE WHEN g %% 200 = 3 THEN json_build_object('role', 'assistant', 'content', '["fixed"]') END,
       CASE WHEN g %% 50 = 7 THEN 'not a location' END
FROM generate_series(1, %(rows)s) AS g,
LATERAL (SELECT
    format('I was born in town number %%s near the %%s, then moved to city %%s',
           g, (ARRAY['river', 'lake', 'mountains', 'sea', 'forest'])[1 + g %% 5], g %% 977) AS prompt,
    CASE WHEN g %% 10 = 0 THEN 1 + (g::bigint * 7919 %% 997)::int ELSE 1 END AS seen,
    CASE WHEN g %% 1000 = 0 THEN 'acme-unknown-1' WHEN g %% 3 = 0 THEN 'gpt-4o-mini-2024-07-18'
         ELSE 'gpt-4o-2024-08-06' END AS model) AS p
"""

# A submitted job that trained on every other included row, so new_since_last_job has work.
LINEAGE = """
WITH d AS (
    INSERT INTO dataset (namespace, format, base_model, sha256, train_sha256, train_examples,
                         validation_examples, train_tokens, validation_tokens, manifest)
    VALUES ('big', 'chat', 'gpt-4o-mini-2024-07-18', 'x', 'x', 0, 0, 0, 0, '{}') RETURNING id
), r AS (
    INSERT INTO dataset_row (dataset_id, namespace, row_id, row_version, split, tokens)
    SELECT d.id, 'big', c.id, c.version, 'train', 150 FROM d, big_openai_chat_completion c
    WHERE c.included IS NOT NULL AND c.excluded IS NULL AND c.id % 2 = 0
)
INSERT INTO fine_tune_job (namespace, dataset_id, provider_job_id, base_model, status)
SELECT 'big', d.id, 'ftjob-bench', 'gpt-4o-mini-2024-07-18', 'succeeded' FROM d
"""


@contextmanager
def scratch_database(rows_wanted: int, keep: bool) -> Iterator[str]:
    """A database filled at revision 0005, then upgraded to head (0006 timed)."""
    server = os.environ.get("DATABASE_URL") or pg.embedded.ensure_running(
        Path(tempfile.gettempdir()) / "curation-bench-embedded"
    )
    name = pg.unique_name("curation_bench_curate")
    url = pg.create_database(server, name)
    try:
        migrate.upgrade(url, "0005")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT curation_create_namespace('big', 'List the places mentioned, as JSON.',"
                " 'gpt-4o-mini-2024-07-18'), curation_create_namespace('tiny')"
            )
            t = time.perf_counter()
            conn.execute(FILL, {"rows": rows_wanted})
            conn.execute(LINEAGE)
            conn.execute("VACUUM ANALYZE big_openai_chat_completion")
            print(f"filled {rows_wanted} rows at revision 0005 in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        migrate.upgrade(url, "0006")
        print(
            f"revision 0006: its indexes built CONCURRENTLY on the filled partition in "
            f"{time.perf_counter() - t:.0f} s"
        )
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE big_openai_chat_completion")  # as autovacuum would
        yield url
    finally:
        if keep:
            print(f"\nkept the database: {url}")
        else:
            pg.drop_database(server, name)


def median_ms(run: Callable[[], object], repeat: int) -> float:
    run()  # warm-up: plan caches, buffers
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def explain_ms(
    conn: psycopg.Connection[Any], query: Any, params: dict[str, Any], first: Any = None
) -> float:
    """The server's own execution time of ``query`` (EXPLAIN ANALYZE, median of 3), after
    ``first`` (a SET LOCAL the library runs before it) in the same transaction."""
    found = []
    for _ in range(3):
        with conn.transaction(force_rollback=True):  # EXPLAIN ANALYZE of a write writes
            if first is not None:
                conn.execute(first)
            plan = conn.execute(
                psycopg.sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, params
            ).fetchone()
        assert plan is not None
        found.append(float(next(iter(plan.values()))[0]["Execution Time"]))
    return statistics.median(found)


def floor_ms(conn: psycopg.Connection[Any], n: int) -> float:
    """EXPLAIN ANALYZE of a primary-key index scan returning ``n`` whole rows."""
    query = psycopg.sql.SQL(
        "SELECT * FROM big_openai_chat_completion WHERE namespace = %(namespace)s"
        " ORDER BY id DESC LIMIT %(n)s"
    )
    return explain_ms(conn, query, {"namespace": NS, "n": n})


def print_row(label: str, wall: float, server: float | None, floor: float, target: float) -> None:
    verdict = "PASS" if wall <= target else "MISS"
    shown = f"{server:8.2f}" if server is not None else "       -"
    print(f"  {label:34s} {wall:8.2f} {shown} {floor:8.2f} {target:7.0f}  {verdict}")


def curator_queries(url: str, repeat: int) -> None:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        newest = rows.list_rows(conn, NS, rows.ListFilter(limit=1))[0]["id"]
        middle = newest // 2
        one_row = floor_ms(conn, 1)
        page = floor_ms(conn, LIMIT)
        print(
            f"\ncurator queries at {newest} rows (ms; wall = the library call as the CLI makes it,"
            f" median of {repeat}; server = EXPLAIN ANALYZE of its query)"
        )
        print(f"  {'query':34s} {'wall':>8s} {'server':>8s} {'floor':>8s} {'target':>7s}")
        lists = {
            "list (newest)": rows.ListFilter(),
            "list --pending": rows.ListFilter(state="pending"),
            "list --included": rows.ListFilter(state="included"),
            "list --excluded": rows.ListFilter(state="excluded"),
            "list --most-seen": rows.ListFilter(sort="seen"),
            "list --pending --most-seen": rows.ListFilter(state="pending", sort="seen"),
            "list --included --most-seen": rows.ListFilter(state="included", sort="seen"),
            "list --search 'number 4242 '": rows.ListFilter(search="number 4242 "),
            "list --search 'city 97'": rows.ListFilter(search="city 97"),
            "list --search river": rows.ListFilter(search="river"),
            "list --pending --search 'city 4'": rows.ListFilter(state="pending", search="city 4"),
        }
        for label, f in lists.items():
            wall = median_ms(lambda f=f: rows.list_rows(conn, NS, f), repeat)
            query, params = rows.list_query(NS, f)
            print_row(label, wall, explain_ms(conn, query, params), page, QUERY_MS)

        def show() -> None:
            rows.get_row(conn, NS, middle)
            rows.history(conn, NS, middle)

        server = explain_ms(
            conn, queries.for_namespace("get_row", NS), {"namespace": NS, "id": middle}
        )
        print_row(f"show {middle}", median_ms(show, repeat), server, one_row, QUERY_MS)

        def review_next() -> None:
            with conn.transaction(force_rollback=True):
                rows.next_pending(conn, NS, [])
                rows.progress(conn, NS)

        server = explain_ms(
            conn, queries.for_namespace("next_pending", NS), {"namespace": NS, "skip": []}
        ) + explain_ms(conn, queries.for_namespace("review_progress", NS), {"namespace": NS})
        print_row(
            "review: next pending + progress",
            median_ms(review_next, repeat),
            server,
            one_row,
            QUERY_MS,
        )

        pending = rows.list_rows(conn, NS, rows.ListFilter(state="pending", limit=repeat + 1))
        for state in ("included", "excluded"):
            ids = iter([int(r["id"]) for r in pending])

            def decide(state: str = state, ids: Iterator[int] = ids) -> None:
                with conn.transaction():
                    rows.set_state(conn, NS, [next(ids)], state, curator="bench")

            wall = median_ms(decide, repeat)
            with conn.transaction():
                rows.set_state(
                    conn, NS, [r["id"] for r in pending], "pending", curator="bench", strict=False
                )
            verb = rows.VERB[state]
            print_row(f"{verb} one row (committed)", wall, None, one_row, QUERY_MS)

        count = explain_ms(
            conn,
            psycopg.sql.SQL(
                "SELECT count(*) FROM big_openai_chat_completion WHERE namespace = %(namespace)s"
            ),
            {"namespace": NS},
        )
        wall = median_ms(lambda: stats.collect(conn, NS, None), repeat)
        server = explain_ms(
            conn, queries.compose("stats", filters=["stats_namespace"]), {"namespace": NS}
        )
        server += explain_ms(
            conn,
            queries.get("new_since_last_job"),
            {"namespace": NS},
            first=queries.get("stats_without_jit"),
        )
        print_row("stats big", wall, server, count, STATS_MS)
        wall = median_ms(lambda: stats.collect(conn, None, None), repeat)
        print_row("stats (every namespace)", wall, None, count, STATS_MS)


def run_ms(args: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    def once() -> None:
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)

    return median_ms(once, repeat)


def startup(url: str, repeat: int) -> None:
    # As installed: with bytecode caches. Without them (PYTHONDONTWRITEBYTECODE, set in some
    # sandboxes) every curation module is compiled on each start, which site-packages' are not.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"PYTHONPATH": str(ROOT), "DATABASE_URL": url}
    py = sys.executable
    click_ms = run_ms([py, "-c", "import click"], repeat, env)
    psycopg_ms = run_ms([py, "-c", "import click, psycopg"], repeat, env)
    print(
        f"\nCLI start-up (ms, median of {repeat}; floor: python -c 'import click' = {click_ms:.0f})"
    )
    print(f"  {'command':34s} {'wall':>8s} {'ratio':>8s} {'target':>7s}")
    cases = {
        "curation --help": [py, "-m", "curation", "--help"],
        "curation list --help": [py, "-m", "curation", "list", "--help"],
        "curation list tiny (empty)": [py, "-m", "curation", "list", "tiny"],
        f"curation list {NS} --limit 20": [py, "-m", "curation", "list", NS, "--limit", "20"],
    }
    for label, args in cases.items():
        wall = run_ms(args, repeat, env)
        verdict = "PASS" if wall <= STARTUP_RATIO * click_ms else "MISS"
        print(f"  {label:34s} {wall:8.0f} {wall / click_ms:7.1f}x {STARTUP_RATIO:6.0f}x  {verdict}")
    print(
        f"  (python -c 'import click, psycopg': {psycopg_ms:.0f} ms, {psycopg_ms / click_ms:.1f}x:"
        " the driver alone, which every command that reads the database needs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", 1_000_000)))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", 7)))
    parser.add_argument("--keep", action="store_true", help="Keep the database (for EXPLAIN).")
    args = parser.parse_args()
    print(f"curation curator benchmark: {args.rows} rows in namespace {NS}")
    with scratch_database(args.rows, args.keep) as url:
        curator_queries(url, args.repeat)
        startup(url, args.repeat)


if __name__ == "__main__":
    main()

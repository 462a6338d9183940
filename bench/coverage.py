"""Coverage benchmark (issue 16): clustering throughput and peak memory at 100,000
and 1,000,000 generated prompts (the pure functions, in a process of their own
each), clustering end to end through PostgreSQL at 100,000 rows (``curation
coverage``'s own call), and incremental assignment of new rows in rows/s.

Prompts: 80% from the eight templates of tests/traffic.py (slots filled with
made-up words, random case and punctuation), 20% a long tail of unique prompts
of 6-16 random words from a 20,000-word vocabulary (each its own cluster, so the
index new rows are compared with holds tens of thousands of clusters).
Targets: 1,000,000 rows clustered in under 5 minutes in under 2 GB; new rows
assigned at over 2,000 rows/s (checked on 10,000 new rows; 1,000 more then show
a run's fixed cost: finding the rows without a cluster, reading every cluster's
representative). Peak memory is the process's maximum resident set
(``ru_maxrss``), the interpreter and libraries (~100 MB) included.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

from common import ROOT, scratch_database

CLUSTER_SECONDS, CLUSTER_MB, ASSIGN_RATE = 300.0, 2048.0, 2000.0
NS = "bench"
NEW_ROWS = 10_000


def prompts(n: int, seed: int = 16) -> Iterator[str]:
    from tests.traffic import traffic

    rng = random.Random(seed + 1)
    vocabulary = [f"word{i}" for i in range(20_000)]
    templated = traffic(n, seed)
    for _ in range(n):
        if rng.random() < 0.2:
            yield " ".join(rng.choices(vocabulary, k=rng.randint(6, 16)))
        else:
            yield next(templated)[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pure(n: int) -> dict[str, float]:
    """Signatures and clusters of ``n`` prompts, in this process."""
    from curation.coverage import groups, signatures

    texts = list(prompts(n))
    started = time.perf_counter()
    sigs = signatures.signatures(texts)
    hashed = time.perf_counter()
    labels = groups.cluster(sigs)
    done = time.perf_counter()
    return {
        "rows": n,
        "signatures_s": hashed - started,
        "cluster_s": done - hashed,
        "total_s": done - started,
        "rows_per_s": n / (done - started),
        "clusters": int(labels.max()) + 1,
        "peak_mb": peak_mb(),
    }


def end_to_end(n: int) -> dict[str, float]:
    """``n`` rows in a scratch database: bulk clustering, then NEW_ROWS new rows assigned."""
    import psycopg
    from psycopg.rows import dict_row

    from curation.curate import coverage

    with scratch_database() as url, psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("SELECT curation_create_namespace(%s)", [NS])
        load(conn, prompts(n))
        conn.commit()
        conn.autocommit = True
        bulk = coverage.update(conn, NS)
        started = time.perf_counter()
        report = coverage.report(conn, NS, 50)
        report_s = time.perf_counter() - started
        conn.autocommit = False
        load(conn, (f"{p} again" for p in prompts(NEW_ROWS, seed=99)))
        conn.commit()
        conn.autocommit = True
        new = coverage.update(conn, NS)
        conn.autocommit = False
        load(conn, (f"{p} once more" for p in prompts(NEW_ROWS // 10, seed=7)))
        conn.commit()
        conn.autocommit = True
        few = coverage.update(conn, NS)
        plan_ms, row_ms = review_ms(conn)
    return {
        "rows": n,
        "cluster_s": bulk.seconds,
        "clusters": bulk.new_clusters,
        "report_s": report_s,
        "covered_share": report["covered_share"],
        "assigned": new.assigned,
        "assign_s": new.seconds,
        "assign_rows_per_s": new.assigned / new.seconds,
        "few": few.assigned,
        "few_s": few.seconds,
        "plan_ms": plan_ms,
        "row_ms": row_ms,
        "peak_mb": peak_mb(),
    }


def review_ms(conn: object) -> tuple[float, float]:
    """Medians of 5: a coverage review's plan (once per session), then its next row
    (locked, then let go)."""
    from curation.curate import coverage

    plans, rows = [], []
    for _ in range(5):
        started = time.perf_counter()
        plan = coverage.plan(conn, NS)  # type: ignore[arg-type]
        planned = time.perf_counter()
        with conn.transaction():  # type: ignore[attr-defined]
            coverage.next_for_review(conn, NS, [], plan)  # type: ignore[arg-type]
        plans.append((planned - started) * 1000)
        rows.append((time.perf_counter() - planned) * 1000)
    return sorted(plans)[2], sorted(rows)[2]


def load(conn: object, texts: Iterator[str]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(  # type: ignore[attr-defined]
            f"COPY {NS}_openai_chat_completion (namespace, user_prompt, response) FROM STDIN"
        ) as copy,
    ):
        seen = set()
        for text in texts:
            if text.lower() not in seen:  # user_prompt is unique per namespace, case-insensitively
                seen.add(text.lower())
                copy.write_row((NS, text, "{}"))


def child(kind: str, n: int) -> dict[str, float]:
    """Each measurement in a fresh process, so peak memory is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="100000,1000000", help="pure clustering sizes")
    parser.add_argument("--db-rows", type=int, default=100_000, help="end-to-end size")
    args = parser.parse_args()
    if args.child:
        kind, n = args.child
        print(json.dumps((pure if kind == "pure" else end_to_end)(int(n))))
        return
    failed = False
    for n in map(int, args.sizes.split(",")):
        r = child("pure", n)
        ok = n < 1_000_000 or (r["total_s"] < CLUSTER_SECONDS and r["peak_mb"] < CLUSTER_MB)
        failed |= not ok
        print(
            f"pure {n:>9,} rows: signatures {r['signatures_s']:.1f}s + clusters "
            f"{r['cluster_s']:.1f}s = {r['total_s']:.1f}s ({r['rows_per_s']:,.0f} rows/s), "
            f"{r['clusters']:,} clusters, peak {r['peak_mb']:,.0f} MB"
            + ("" if ok else f"  OVER TARGET ({CLUSTER_SECONDS:.0f}s, {CLUSTER_MB:.0f} MB)")
        )
    r = child("db", args.db_rows)
    few_rate = r["few"] / r["few_s"]
    ok = r["assign_rows_per_s"] > ASSIGN_RATE  # throughput; the 1,000 rows show the fixed cost
    failed |= not ok
    print(
        f"postgres {r['rows']:>6,} rows: clustered in {r['cluster_s']:.1f}s "
        f"({r['clusters']:,} clusters), report {r['report_s']:.2f}s, peak {r['peak_mb']:,.0f} MB; "
        f"{r['assigned']:,} new rows assigned in {r['assign_s']:.1f}s "
        f"({r['assign_rows_per_s']:,.0f} rows/s), {r['few']:,} more in {r['few_s']:.2f}s "
        f"({few_rate:,.0f} rows/s; target {ASSIGN_RATE:,.0f}); review --order coverage: "
        f"plan {r['plan_ms']:.0f} ms, then {r['row_ms']:.0f} ms a row"
        + ("" if ok else "  UNDER TARGET")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

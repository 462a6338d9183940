"""Web page benchmark (issue 15): the curator page's loads on one namespace of
``--rows`` rows (default 100,000; the fill of bench/curate.py), through a real
``curation web`` and a plain HTTP client: the median of ``--repeat`` loads after
one warm-up, wall time as the browser waits for the HTML (query, template, socket).

Before measuring, the fill gets what the page filters on and bench/curate.py does
not write: tags (``team`` t0-t9, and ``rare`` on one row in 10,000), an answer
found in no prompt (a correction, ``Lugdunum``, on one row in 20,000) and flags
(``truncated`` on one row in 1,000). Then revision 0010's answer index is built
once more beside the real one, timed, to say what it costs on a filled table.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import time

import psycopg
from common import ROOT
from curate import NS, scratch_database

TARGET_MS = 100.0

EXTRAS = f"""
UPDATE {NS}_openai_chat_completion
SET tags = jsonb_build_object('team', CASE WHEN id % 10000 = 1 THEN 'rare' ELSE 't' || id % 10 END),
    flags = CASE WHEN id % 1000 = 2 THEN '{{truncated}}'::text[] ELSE '{{}}' END,
    corrected_response = CASE WHEN id % 20000 = 5 THEN '{{"role": "assistant", "content": "Lugdunum"}}'
                              ELSE corrected_response END;
VACUUM ANALYZE {NS}_openai_chat_completion
"""
# Revision 0010's answer index on the filled partition, built again under another name.
ANSWER_INDEX = f"""
SELECT replace(pg_get_indexdef(i.inhrelid), c.relname, 'bench_answer_trgm_idx') AS ddl
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'openai_chat_completion_answer_trgm_idx'::regclass
  AND c.relname LIKE '{NS}\\_%'
"""


def prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        t = time.perf_counter()
        for statement in EXTRAS.split(";"):
            conn.execute(statement)
        print(f"tags, flags and rare answers set in {time.perf_counter() - t:.1f} s")
        found = conn.execute(ANSWER_INDEX).fetchone()
        if found is None:
            print("no answer index (pg_trgm missing): search in answers scans")
            return
        t = time.perf_counter()
        conn.execute(found[0])
        took = time.perf_counter() - t
        size = conn.execute("SELECT pg_relation_size('bench_answer_trgm_idx')").fetchone()
        conn.execute("DROP INDEX bench_answer_trgm_idx")
        mib = (size[0] if size else 0) / 2**20
        print(f"revision 0010's answer index: built in {took:.1f} s, {mib:.0f} MiB")


def start(url: str) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation", "--database-url", url, "web", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found = re.search(r":(\d+)/\?token=(\S+)", proc.stdout.readline())
    assert found, "curation web printed no sign-in line"
    return proc, int(found.group(1)), found.group(2)


def load(port: int, path: str, cookie: str) -> tuple[int, str, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"Accept": "text/html", "Cookie": cookie})
    got = conn.getresponse()
    body = got.read().decode()
    conn.close()
    return got.status, body, (time.perf_counter() - t) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--url", help="A database bench/curate.py --keep left (no fill).")
    parser.add_argument("--keep", action="store_true", help="Keep the filled database.")
    args = parser.parse_args()
    if args.url:
        prepare(args.url)
        measure(args.url, args)
        return
    with scratch_database(args.rows, keep=args.keep) as url:
        prepare(url)
        measure(url, args)


def measure(url: str, args: argparse.Namespace) -> None:
    proc, port, token = start(url)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/?token={token}")
        cookie = conn.getresponse().headers["Set-Cookie"].split(";")[0]
        _, first, _ = load(port, f"/ns/{NS}/rows", cookie)
        after = re.search(r'id="next" href="[^"]*after=(\d+)', first)
        row = re.search(r'data-row-id="(\d+)"', first)
        assert after and row
        cases = {
            "namespaces page": "/",
            "rows, first page": f"/ns/{NS}/rows",
            "rows, second page (keyset)": f"/ns/{NS}/rows?after={after.group(1)}",
            "pending, first page": f"/ns/{NS}/rows?state=pending",
            "corrected, first page": f"/ns/{NS}/rows?state=corrected",
            "search, rare term": f"/ns/{NS}/rows?q=town+number+4242+",
            "search, frequent term": f"/ns/{NS}/rows?q=lake",
            "search, rare term in answers": f"/ns/{NS}/rows?q=lugdunum",
            "search, answers' 0.5% term": f"/ns/{NS}/rows?q=fixed",
            "model filter": f"/ns/{NS}/rows?model=gpt-4o-mini-2024-07-18",
            "model filter, rare model": f"/ns/{NS}/rows?model=acme-unknown-1",
            "tag filter, frequent tag": f"/ns/{NS}/rows?tag=team%3Dt3",
            "tag filter, rare tag": f"/ns/{NS}/rows?tag=team%3Drare",
            "flagged": f"/ns/{NS}/rows?state=flagged",
            "row page": f"/ns/{NS}/rows/{row.group(1)}",
        }
        print(f"curation web: {args.rows} rows in {NS}; median of {args.repeat} loads, ms")
        for label, path in cases.items():
            status, _, _ = load(port, path, cookie)
            assert status == 200, f"{label}: HTTP {status}"
            ms = statistics.median(load(port, path, cookie)[2] for _ in range(args.repeat))
            verdict = "PASS" if ms <= TARGET_MS else "MISS"
            print(f"  {label:30s} {ms:8.1f} {TARGET_MS:6.0f}  {verdict}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()

"""Web page benchmark (issue 15): the curator page's loads on one namespace of
``--rows`` rows (default 100,000; the fill of bench/curate.py), through a real
``curation web`` and a plain HTTP client: the median of ``--repeat`` loads after
one warm-up, wall time as the browser waits for the HTML (query, template, socket).
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import time

from common import ROOT
from curate import NS, scratch_database

TARGET_MS = 100.0


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
    args = parser.parse_args()
    if args.url:
        measure(args.url, args)
        return
    with scratch_database(args.rows, keep=False) as url:
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
            "model filter": f"/ns/{NS}/rows?model=gpt-4o-mini-2024-07-18",
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

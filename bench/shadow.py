"""What shadow traffic costs the client: latency with every call shadowed vs none.

One proxy, a fake teacher (20 ms) and a slower fake student (200 ms); rounds of
sequential calls alternate between serve_shadow_percent 0 and 100, so both
modes see the same machine. The client's latency should not move.

    python bench/shadow.py [--calls 100] [--rounds 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from common import ROOT, percentile, scratch_database

from tests.factories import LONG_PROMPT
from tests.harness import ProxyProcess, free_port, wait_for

KEY = "sk-student-bench"


@contextmanager
def fake(delay: float) -> Iterator[str]:
    """A fake OpenAI in its own process (in this one, it would compete with the client)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", str(port), "--delay", str(delay)],
        cwd=ROOT,
    )
    try:
        wait_for(lambda: port_open(port), timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def calls(port: int, n: int, tag: str) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for i in range(n):
        body = json.dumps(
            {
                "model": "gpt-4o-2024-08-06",
                "messages": [
                    {"role": "system", "content": LONG_PROMPT},
                    {"role": "user", "content": f"{tag} call {i}"},
                ],
            }
        )
        headers = {"Authorization": "Bearer sk-client", "Content-Type": "application/json"}
        t0 = time.perf_counter()
        conn.request("POST", "/ns/bench/v1/chat/completions", body, headers)
        reply = conn.getresponse()
        reply.read()
        out.append(time.perf_counter() - t0)
        assert reply.status == 200, reply.status
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with (
        scratch_database() as db,
        fake(0.02) as teacher,
        fake(0.2) as student,
        tempfile.TemporaryDirectory() as work,
        psycopg.connect(db, autocommit=True) as conn,
    ):
        conn.execute("SELECT curation_create_namespace('bench')")
        conn.execute(
            "UPDATE namespace SET serve_model = 'bench-student', serve_endpoint = %s,"
            " serve_endpoint_key_env = 'STUDENT_KEY', serve_percent = 0, serve_shadow_percent = 1,"
            " shadow_per_minute = 100000 WHERE name = 'bench'",
            [f"{student}/v1"],
        )
        proxy = ProxyProcess(db, teacher, Path(work) / "spool", STUDENT_KEY=KEY).start()
        try:
            calls(proxy.port, 20, "warm")
            seen: dict[int, list[float]] = {0: [], 100: []}
            for r in range(args.rounds):
                for percent in (0, 100):
                    conn.execute(
                        "UPDATE namespace SET serve_shadow_percent = %s WHERE name = 'bench'",
                        [percent],
                    )
                    time.sleep(2.5)  # the proxy reads its serving settings every 2 s
                    seen[percent] += calls(proxy.port, args.calls, f"r{r}-{percent}")
            time.sleep(3)
            compared = conn.execute("SELECT count(*) FROM shadow_comparison").fetchone()
        finally:
            proxy.stop()
    print(f"client latency, {len(seen[0])} calls each: shadow 0% vs 100% (ratio = 100% / 0%)")
    print(f"{'':>4} {'0%':>9} {'100%':>9} {'ratio':>6}")
    for p in (50, 90, 99):
        off, on = percentile(seen[0], p) * 1000, percentile(seen[100], p) * 1000
        print(f"p{p:<3} {off:6.1f} ms {on:6.1f} ms {on / off:6.2f}")
    print(f"comparisons stored: {compared[0] if compared else 0}")


if __name__ == "__main__":
    main()

"""Proxy benchmark: the same load direct to a fake upstream and through
`curation proxy` (recording on), side by side in one run.

Phases (each direct, then through the proxy):
  1. paced:  REQUESTS_PACED calls at RATE/s, half streaming -> added latency p50/p99, TTFC
  2. closed: CLIENTS concurrent clients, REQUESTS calls, half streaming -> throughput
  3. writer: a spool pre-filled with WRITER_ROWS captures drained into PostgreSQL -> rows/s
Then: every call made through the proxy must be in PostgreSQL, once.

Environment knobs: BENCH_REQUESTS (20000), BENCH_PACED (5000), BENCH_RATE (500),
BENCH_CLIENTS (32), BENCH_UPSTREAM_DELAY (0.02 s), BENCH_WRITER_ROWS (20000).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psycopg
from common import ROOT, peak_rss_mb, percentile, scratch_database

from tests.harness import free_port, wait_for

REQUESTS = int(os.environ.get("BENCH_REQUESTS", 20000))
PACED = int(os.environ.get("BENCH_PACED", 5000))
RATE = float(os.environ.get("BENCH_RATE", 500))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", 32))
DELAY = float(os.environ.get("BENCH_UPSTREAM_DELAY", 0.02))
WRITER_ROWS = int(os.environ.get("BENCH_WRITER_ROWS", 20000))
SYSTEM = "You extract geographical locations from user input. " * 40  # a ~2 kB production prompt


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def body(tag: str, i: int, stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"bench {tag} {i}"},
            ],
            "stream": stream,
        }
    )


async def one(
    session: aiohttp.ClientSession, url: str, data: bytes, stream: bool, result: Result
) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(
            url,
            data=data,
            headers={"Authorization": "Bearer sk-bench", "Content-Type": "application/json"},
        ) as r:
            if stream:
                first = None
                async for _ in r.content.iter_any():
                    if first is None:
                        first = time.perf_counter()
                result.ttfc.append((first or time.perf_counter()) - t0)
            else:
                await r.read()
            if r.status != 200:
                result.errors += 1
                return
    except aiohttp.ClientError:
        result.errors += 1
        return
    result.latencies.append(time.perf_counter() - t0)


async def paced(url: str, tag: str) -> Result:
    result = Result()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(PACED):
            wait = start + i / RATE - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(
                asyncio.create_task(one(session, url, body(tag, i, i % 2 == 0), i % 2 == 0, result))
            )
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - start
    return result


async def closed(url: str, tag: str) -> Result:
    result = Result()
    counter = iter(range(REQUESTS))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            await one(session, url, body(tag, i, i % 2 == 0), i % 2 == 0, result)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        result.seconds = time.perf_counter() - start
    return result


PIN = os.environ.get("BENCH_PIN", "1") == "1" and (os.cpu_count() or 1) >= 2


def spawn(
    args: list[str], env: dict[str, str], log: Path, cpu: int | None = None
) -> subprocess.Popen[bytes]:
    """Start a process; with BENCH_PIN, on one CPU of its own (the proxy) or the other."""
    proc = subprocess.Popen(
        args, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    if PIN and cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


def unpin_children(pid: int) -> None:
    """The recorder inherits the proxy's CPU; like PostgreSQL, it may run anywhere."""
    import psutil

    if PIN:
        for child in psutil.Process(pid).children(recursive=True):
            child.cpu_affinity(list(range(os.cpu_count() or 1)))


def port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def count(db: str, table: str) -> int:
    with psycopg.connect(db) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [table]).fetchone()
        if not exists or exists[0] is None:
            return 0
        row = conn.execute(f"SELECT count(*), coalesce(sum(times_seen), 0) FROM {table}").fetchone()
        assert row is not None
        return int(row[0]) if row[0] == row[1] else -int(row[0])


def fill_spool(directory: Path, n: int) -> None:
    from curation.capture.row import Capture
    from curation.proxy.spool import Spool, encode

    spool = Spool(directory, max_bytes=1 << 34)
    spool.open()
    response = orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris, France"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 500, "completion_tokens": 5, "total_tokens": 505},
        }
    )
    for i in range(n):
        c = Capture(
            "writerbench",
            time.time(),
            20.0,
            False,
            None,
            f"req_{i}",
            None,
            body("writer", i, False),
            response,
        )
        spool.append(encode(c.meta(), c.request, c.response))
    spool.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    up_port, proxy_port = free_port(), free_port()
    with scratch_database() as db:
        if PIN:  # the load generator and the fake upstream share CPU 0; the proxy has CPU 1
            os.sched_setaffinity(0, {0})
        fake = spawn(
            [
                sys.executable,
                "-m",
                "tests.fake_openai",
                "--port",
                str(up_port),
                "--delay",
                str(DELAY),
            ],
            {},
            work / "fake.log",
            cpu=0,
        )
        env = {
            "DATABASE_URL": db,
            "CURATION_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
            "CURATION_LISTEN": f"127.0.0.1:{proxy_port}",
            "CURATION_SPOOL_DIR": str(work / "spool"),
            "CURATION_LOG_LEVEL": "WARNING",
        }
        proxy = spawn([sys.executable, "-m", "curation", "proxy"], env, work / "proxy.log", cpu=1)
        try:
            wait_for(lambda: port_open(up_port) and port_open(proxy_port), timeout=30)
            unpin_children(proxy.pid)
            direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
            via = f"http://127.0.0.1:{proxy_port}/ns/bench/v1/chat/completions"
            asyncio.run(paced(direct, "warm"))  # warm both paths (and the JIT-less caches)
            asyncio.run(paced(via, "warm"))
            pd, pp = asyncio.run(paced(direct, "pd")), asyncio.run(paced(via, "pp"))
            cd, cp = asyncio.run(closed(direct, "cd")), asyncio.run(closed(via, "cp"))
            sent_via = PACED * 2 + REQUESTS
            t_wait = time.perf_counter()
            wait_for(
                lambda: (
                    count(db, "bench_openai_chat_completion") >= sent_via - pp.errors - cp.errors
                ),
                timeout=120,
            )
            recorded = count(db, "bench_openai_chat_completion")
            rss = peak_rss_mb(proxy.pid)
            lag = time.perf_counter() - t_wait
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(60)
        # writer capacity: a spool backlog drained by a fresh proxy
        fill_spool(work / "spool2", WRITER_ROWS)
        env2 = {
            **env,
            "CURATION_SPOOL_DIR": str(work / "spool2"),
            "CURATION_LISTEN": f"127.0.0.1:{free_port()}",
        }
        t0 = time.perf_counter()
        drain = spawn([sys.executable, "-m", "curation", "proxy"], env2, work / "drain.log", cpu=1)
        wait_for(
            lambda: count(db, "writerbench_openai_chat_completion") >= WRITER_ROWS,
            timeout=300,
            interval=0.02,
        )
        writer_seconds = time.perf_counter() - t0
        drain.send_signal(signal.SIGTERM)
        drain.wait(60)
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)

    ms = 1000.0
    lat_d, lat_p = pd.latencies, pp.latencies
    print(
        f"curation proxy benchmark: upstream latency {DELAY * ms:.0f} ms, half of all calls streamed, "
        f"2 kB system prompt, {os.cpu_count()} CPUs, "
        + (
            "load generator + fake upstream pinned to CPU 0, proxy to CPU 1, its recorder and PostgreSQL unpinned"
            if PIN
            else "nothing pinned"
        )
    )
    print(f"paced {RATE:.0f} req/s x {PACED}:            direct      proxy      added")
    for label, p in (("p50", 50), ("p90", 90), ("p99", 99)):
        d, q = percentile(lat_d, p) * ms, percentile(lat_p, p) * ms
        print(f"  latency {label} (ms)            {d:8.2f}   {q:8.2f}   {q - d:+8.2f}")
    for label, p in (("p50", 50), ("p99", 99)):
        d, q = percentile(pd.ttfc, p) * ms, percentile(pp.ttfc, p) * ms
        print(f"  time to first chunk {label} (ms){d:8.2f}   {q:8.2f}   {q - d:+8.2f}")
    print(f"closed loop {CLIENTS} clients x {REQUESTS}:")
    print(
        f"  throughput (req/s)            {REQUESTS / cd.seconds:8.0f}   {REQUESTS / cp.seconds:8.0f}   ratio {cd.seconds / cp.seconds:.2f}"
    )
    print(
        f"  latency p50 / p99 (ms)        {percentile(cd.latencies, 50) * ms:6.1f}/{percentile(cd.latencies, 99) * ms:<6.1f}  "
        f"{percentile(cp.latencies, 50) * ms:6.1f}/{percentile(cp.latencies, 99) * ms:<6.1f}"
    )
    print(f"errors: direct {pd.errors + cd.errors}, proxy {pp.errors + cp.errors}")
    ok = (
        recorded == sent_via - pp.errors - cp.errors
    )  # count() is negative if any row counted twice
    print(
        f"recorded through the proxy: {recorded} rows for {sent_via} calls, each exactly once: {ok}; "
        f"last row in PostgreSQL {lag * ms:.0f} ms after the last response"
    )
    print(
        f"writer capacity: {WRITER_ROWS} spooled captures into PostgreSQL in {writer_seconds:.2f} s "
        f"= {WRITER_ROWS / writer_seconds:.0f} rows/s (includes proxy start-up)"
    )
    print(f"proxy peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()

"""``curation proxy --workers N``: several proxy processes on one port, each with its
own spool and recorder, under one supervisor. Every call answered is recorded exactly
once, whichever worker took it; a worker killed with SIGKILL is restarted and loses
nothing it had acknowledged; SIGTERM to the supervisor drains every worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
from openai import OpenAI

from curation.proxy.spool import segment_sizes
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, query, wait_for
from tests.pg import ROOT

pytestmark = pytest.mark.slow
KEY = "sk-workers-test"


class Workers(ProxyProcess):
    """``curation proxy --workers N`` in its own process."""

    def __init__(self, *args: Any, workers: int = 2, **kw: str) -> None:
        super().__init__(*args, **kw)
        self.workers = workers

    def start(self, wait: bool = True) -> Workers:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "curation", "proxy", "--workers", str(self.workers)],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for(self.healthy, timeout=60)
            wait_for(lambda: len(self.worker_pids()) == self.workers, timeout=60)
        return self

    def worker_pids(self) -> list[int]:
        """The worker processes (not their recorders), once each has its recorder."""
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if any(
                    "curation.proxy.recorder" in " ".join(g.cmdline()) for g in child.children()
                ):
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found


@pytest.fixture
def start_workers(
    db_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []

    def start(workers: int = 2, **env: str) -> Workers:
        proc = Workers(db_url, fake_openai.url, tmp_path / "spool", workers=workers, **env)  # type: ignore[attr-defined]
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=90)


def call(proxy: ProxyProcess, text: str, stream: bool = False, **headers: str) -> None:
    """One call on a connection of its own, so the kernel may give it to any worker."""
    c = OpenAI(
        base_url=f"{proxy.url}/ns/wk/v1",
        api_key=KEY,
        max_retries=0,
        timeout=30,
        default_headers=headers,
    )
    messages = [{"role": "user", "content": text}]
    try:
        if stream:
            list(c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))  # type: ignore[arg-type]
        else:
            c.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    finally:
        c.close()


def recorded(db_url: str) -> dict[str, int]:
    try:
        found = query(db_url, "SELECT user_prompt, times_seen FROM wk_openai_chat_completion")
    except Exception:
        return {}
    return {r["user_prompt"]: r["times_seen"] for r in found}


def spooled(directory: Path) -> int:
    return sum(segment_sizes(directory).values()) if directory.is_dir() else 0


def test_workers_share_the_port_and_record_every_call_once(
    start_workers: Callable[..., Workers], db_url: str
) -> None:
    proxy = start_workers(workers=2)
    texts = [f"shared {i}" for i in range(60)]
    for i, text in enumerate(texts):
        call(proxy, text, stream=i % 2 == 0)
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == len(texts) and r, timeout=60)
    assert got == dict.fromkeys(texts, 1)
    # both workers took calls: each spooled into its own directory
    assert spooled(proxy.spool_dir) > 0 and spooled(proxy.spool_dir / "worker-1") > 0
    assert proxy.stop(timeout=90) == 0
    assert "Traceback" not in proxy.log()


def test_a_killed_worker_is_restarted_and_loses_nothing(
    start_workers: Callable[..., Workers], db_url: str
) -> None:
    proxy = start_workers(workers=2)
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(w: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            text = f"load w{w} #{i}"
            try:
                call(proxy, text, stream=(i + w) % 2 == 0)
            except (openai.APIError, openai.APIConnectionError):
                continue  # a call the killed worker had: never answered, so never promised
            with lock:
                received.append(text)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(received) >= 80, timeout=90)
    victim = proxy.worker_pids()[0]
    psutil.Process(victim).kill()  # SIGKILL mid-load
    # the supervisor starts a new worker on the same spool; calls go on meanwhile
    wait_for(lambda: victim not in (pids := proxy.worker_pids()) and len(pids) == 2, timeout=60)
    count = len(received)
    wait_for(lambda: len(received) >= count + 40, timeout=90)
    stop.set()
    for t in threads:
        t.join(60)
    got = wait_for(lambda: (r := recorded(db_url)) and set(received) <= set(r) and r, timeout=90)
    assert all(n == 1 for n in got.values()), {k: v for k, v in got.items() if v != 1}
    assert "restarting it" in proxy.log()
    assert proxy.stop(timeout=90) == 0


def test_sigterm_drains_every_worker(start_workers: Callable[..., Workers], db_url: str) -> None:
    proxy = start_workers(workers=2)
    done: list[str] = []
    failed: list[BaseException] = []

    def slow(i: int) -> None:
        text = f"in flight {i}"
        try:  # a stream that takes about 2 s: still running when SIGTERM arrives
            call(proxy, text, stream=True, **{"X-Fake-Chunk-Delay": "0.3"})
            done.append(text)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    assert proxy.proc is not None
    workers = proxy.worker_pids()
    proxy.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert proxy.proc.wait(90) == 0
    assert not failed and len(done) == 8
    assert not any(psutil.pid_exists(pid) for pid in workers)
    # each worker flushed its spool before it exited: everything is in PostgreSQL now
    assert recorded(db_url) == dict.fromkeys(done, 1)

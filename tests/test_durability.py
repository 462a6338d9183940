"""Nothing lost, nothing written twice: PostgreSQL outages, kill -9, restarts,
rows PostgreSQL refuses."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
from openai import OpenAI

from curation.capture.row import Row
from curation.proxy.spool import Position, Spool
from curation.proxy.spool_reader import SpoolReader
from curation.proxy.writer import Stats, Writer
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, Relay, query, wait_for

Start = Callable[..., ProxyProcess]
KEY = "sk-durability-test"


def client(proxy: ProxyProcess) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/ns/dur/v1", api_key=KEY, max_retries=0, timeout=10)


def call(proxy: ProxyProcess, text: str, stream: bool = False) -> None:
    c = client(proxy)
    messages = [{"role": "user", "content": text}]
    if stream:
        list(c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))  # type: ignore[arg-type]
    else:
        c.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]


def recorded(db_url: str) -> dict[str, int]:
    try:
        found = query(db_url, "SELECT user_prompt, times_seen FROM dur_openai_chat_completion")
    except Exception:
        return {}
    return {r["user_prompt"]: r["times_seen"] for r in found}


def test_postgres_down_during_traffic_then_back(start_proxy: Start, db_url: str) -> None:
    relay = Relay(db_url)
    relay.up()
    proxy = start_proxy(db=relay.url)
    for i in range(10):
        call(proxy, f"before {i}", stream=i % 2 == 0)
    wait_for(lambda: len(recorded(db_url)) == 10)
    relay.down()
    for i in range(30):  # calls go on while PostgreSQL is away
        call(proxy, f"during {i}", stream=i % 2 == 0)
    wait_for(lambda: "curation_database_up 0.0" in metrics(proxy))
    assert b"503" in http(proxy, "/readyz").split(b"\r\n")[0]
    assert len(recorded(db_url)) == 10
    relay.up()
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 40 and r, timeout=30)
    assert set(got.values()) == {1}  # each call exactly once
    wait_for(lambda: b"200" in http(proxy, "/readyz").split(b"\r\n")[0])
    relay.down()


def test_postgres_down_at_start(start_proxy: Start, db_url: str) -> None:
    relay = Relay(db_url)  # not up: connection refused
    proxy = start_proxy(db=relay.url)
    call(proxy, "while down")
    assert "starting without PostgreSQL" in proxy.log()
    relay.up()
    wait_for(lambda: recorded(db_url) == {"while down": 1}, timeout=30)
    relay.down()


def test_kill_9_under_load_loses_nothing_and_writes_nothing_twice(
    start_proxy: Start, db_url: str
) -> None:
    proxy = start_proxy()
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            text = f"load w{w} #{i}"
            try:
                call(proxy, text, stream=(i + w) % 2 == 0)
            except (openai.APIError, openai.APIConnectionError):
                return
            with lock:
                received.append(text)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(received) >= 150, timeout=60)
    proxy.kill()  # SIGKILL mid-load
    stop.set()
    for t in threads:
        t.join(20)
    assert len(received) >= 150
    restarted = start_proxy()  # same spool directory
    got = wait_for(lambda: (r := recorded(db_url)) and set(received) <= set(r) and r, timeout=60)
    assert all(n == 1 for n in got.values()), {k: v for k, v in got.items() if v != 1}
    restarted.stop()


def test_restart_replays_nothing_already_written(start_proxy: Start, db_url: str) -> None:
    first = start_proxy()
    for i in range(5):
        call(first, f"r{i}")
    wait_for(lambda: len(recorded(db_url)) == 5)
    assert first.stop() == 0
    second = start_proxy()
    call(second, "after restart")
    wait_for(lambda: len(recorded(db_url)) == 6)
    second.stop()
    third = start_proxy()
    call(third, "third")
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 7 and r)
    assert set(got.values()) == {1}
    checkpoint = query(db_url, "SELECT rows_written FROM spool_checkpoint")
    assert [r["rows_written"] for r in checkpoint] == [7]


def test_rows_postgres_refuses_are_kept_aside(db_url: str, tmp_path: Path) -> None:
    """A bad row in a batch does not block the others, and is kept, not dropped."""
    from datetime import UTC, datetime

    def row(prompt: str, response: str) -> Row:
        return Row(
            namespace="dur",
            user_prompt=prompt,
            response=response,
            request=json.dumps({"messages": []}),
            system_prompt=None,
            model="m",
            prompt_tokens=1,
            completion_tokens=1,
            latency_ms=1.0,
            streamed=False,
            upstream_request_id=None,
            seen_at=datetime.now(UTC),
            tags="{}",
        )

    async def scenario() -> Stats:
        stats = Stats()
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
        spool.open()
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, db_url, stats)
        batch = [
            row("good 1", '{"choices": []}'),
            row("poison", "{not json"),
            row("good 2", '{"choices": []}'),
        ]
        assert await writer.commit(batch, Position(1, 123))
        await writer.stop(1)
        reader.close()
        spool.close()
        return stats

    stats = asyncio.run(scenario())
    assert recorded(db_url) == {"good 1": 1, "good 2": 1}
    rejected = [
        json.loads(line)
        for line in (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    ]
    assert [r["row"]["user_prompt"] for r in rejected] == ["poison"]
    assert "invalid input syntax for type json" in rejected[0]["reason"]
    assert stats.rejected == 1 and stats.rows_written == 2  # a rejected row is not written
    assert query(db_url, "SELECT segment, byte_offset, rows_written FROM spool_checkpoint") == [
        {"segment": 1, "byte_offset": 123, "rows_written": 2}
    ]


def http(proxy: ProxyProcess, path: str) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def metrics(proxy: ProxyProcess) -> str:
    return http(proxy, "/metrics").decode()


def recorder_of(proxy: ProxyProcess) -> Any:
    import psutil

    assert proxy.proc is not None
    [child] = wait_for(lambda: psutil.Process(proxy.proc.pid).children(), timeout=10)  # type: ignore[union-attr]
    return child


def test_killed_recorder_is_restarted_and_loses_nothing(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    call(proxy, "before")
    wait_for(lambda: recorded(db_url) == {"before": 1})
    recorder_of(proxy).kill()
    for i in range(20):  # the proxy keeps serving and spooling meanwhile
        call(proxy, f"after {i}", stream=i % 2 == 0)
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 21 and r, timeout=30)
    assert set(got.values()) == {1}
    assert "recorder exited" in proxy.log()
    assert "curation_recorder_restarts_total 1.0" in metrics(proxy)


def test_recorder_does_not_outlive_a_killed_proxy(start_proxy: Start, db_url: str) -> None:
    import psutil

    proxy = start_proxy()
    recorder = recorder_of(proxy)
    proxy.kill()
    recorder.wait(timeout=15)  # it notices its parent is gone, flushes and exits
    assert not psutil.pid_exists(recorder.pid) or recorder.status() == psutil.STATUS_ZOMBIE


POISON_REQUESTS = [
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a", "tool_calls": "zz"}],
    [{"role": "user", "content": "q2"}, {"role": "assistant", "tool_calls": [{"function": "f"}]}],
    [{"role": "user", "content": "q3"}, {"role": "assistant", "tool_calls": [None]}],
]


def test_poison_captures_never_stop_recording(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    """Odd shapes become rows; a capture that cannot be one goes to rejected.jsonl,
    logged once without its body; every later call is recorded."""
    completion = {"id": "c", "object": "chat.completion", "model": "m", "usage": "lots"}
    completion["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]
    fake_openai.raw["usage"] = ("application/json", orjson.dumps(completion))
    fake_openai.raw["sse"] = ("text/event-stream", b"data: [1,2]\n\ndata: [DONE]\n\n")
    proxy = start_proxy()
    calls: list[tuple[Any, str]] = [(m, "") for m in POISON_REQUESTS]
    calls += [([{"role": "user", "content": "lots"}], "usage")]
    calls += [([{"role": "user", "content": "secret-sse-prompt"}], "sse")]
    for i, (messages, raw) in enumerate(calls):
        answer = httpx.post(
            f"{proxy.url}/ns/dur/v1/chat/completions",
            json={"model": "x", "messages": messages, "stream": raw == "sse"},
            headers={"Authorization": f"Bearer {KEY}", "X-Fake-Raw": raw},
            timeout=10,
        )
        assert answer.status_code == 200
        call(proxy, f"normal {i}", stream=i % 2 == 0)
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 9 and r, timeout=15)
    assert {f"normal {i}" for i in range(5)} | {"lots"} <= set(got)
    [rejected] = (proxy.spool_dir / "rejected.jsonl").read_text().splitlines()
    assert "stream event is not a JSON object" in json.loads(rejected)["reason"]
    logged = [line for line in proxy.log().splitlines() if "not recorded" in line]
    assert len(logged) == 1 and "dur" in logged[0] and "not a JSON object" in logged[0]
    assert "secret-sse-prompt" not in proxy.log()
    wait_for(lambda: "curation_rows_written_total 9.0" in metrics(proxy))
    assert "curation_unrecordable_total 1.0" in metrics(proxy)


def test_stream_ended_without_done_is_recorded_when_finished(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    """An engine that closes its stream cleanly with no [DONE]: recorded when every
    choice finished, set aside in rejected.jsonl (never silently lost) when not."""

    def event(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    fake_openai.raw["eof"] = ("text/event-stream", event({"content": "whole"}, "stop"))
    fake_openai.raw["half"] = ("text/event-stream", event({"content": "half"}, None))
    proxy = start_proxy()
    for prompt, raw in (("finished", "eof"), ("unfinished", "half")):
        answer = httpx.post(
            f"{proxy.url}/ns/dur/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": prompt}], "stream": True},
            headers={"Authorization": f"Bearer {KEY}", "X-Fake-Raw": raw},
            timeout=10,
        )
        assert answer.status_code == 200
    call(proxy, "after")
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 2 and r, timeout=15)
    assert set(got) == {"finished", "after"}
    [rejected] = (proxy.spool_dir / "rejected.jsonl").read_text().splitlines()
    assert "before every choice finished" in json.loads(rejected)["reason"]


def test_dropped_count_is_exact_when_the_spool_overflows(start_proxy: Start, db_url: str) -> None:
    """PostgreSQL away and the spool over its cap: every call is either recorded or
    counted in curation_dropped_total, never both."""
    relay = Relay(db_url)
    relay.up()
    proxy = start_proxy(db=relay.url, CURATION_SPOOL_MAX_BYTES="1MiB")
    sent = [f"up {i} " + "x" * 6000 for i in range(10)]
    sent += [f"down {i} " + "x" * 6000 for i in range(150)]  # ~13 KB a capture
    for i, text in enumerate(sent):
        if i == 10:
            # down between batches: this test is about the cap's count (an outage in the
            # middle of a batch is test_postgres_down_during_traffic_then_back's)
            wait_for(lambda: len(recorded(db_url)) == 10, timeout=30)
            relay.down()
        call(proxy, text)
    relay.up()
    wait_for(lambda: "curation_recorder_queue_depth 0.0" in metrics(proxy), timeout=90)
    [dropped] = [
        float(line.split()[-1])
        for line in metrics(proxy).splitlines()
        if line.startswith('curation_dropped_total{reason="spool_cap"}')
    ]
    got = recorded(db_url)
    assert dropped > 0 and set(got.values()) == {1}
    assert len(got) + dropped == len(sent)
    relay.down()

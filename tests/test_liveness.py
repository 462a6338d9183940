"""The recorder never stops quietly: a stalled or failed writer shows in /readyz and
/metrics, is logged and restarted, and a frame it died on never stalls the spool."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from curation.capture import row as capture_row
from curation.proxy import recorder
from curation.proxy.spool import Spool, encode
from curation.proxy.spool_reader import SpoolReader
from curation.proxy.writer import Stats, Writer
from tests.harness import ProxyProcess, Relay, query, wait_for
from tests.test_durability import call, http, metrics, recorded, recorder_of

Start = Callable[..., ProxyProcess]


def ready(proxy: ProxyProcess) -> tuple[int, dict[str, Any]]:
    head, _, body = http(proxy, "/readyz").partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_stalled_recorder_is_reported_and_restarted(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_RECORDER_STALL_SECONDS="2")
    call(proxy, "before")
    wait_for(lambda: recorded(db_url) == {"before": 1})
    with psycopg.connect(db_url) as blocker:  # a curator holding a lock: inserts wait
        blocker.execute("LOCK TABLE dur_openai_chat_completion IN ACCESS EXCLUSIVE MODE")
        call(proxy, "while stalled")
        _, body = wait_for(lambda: (r := ready(proxy))[0] == 503 and r, timeout=20)
        assert body["recorder"] == "stalled" and "no progress" in body["reasons"][0]
        assert "curation_recorder_stalled 1.0" in metrics(proxy)
        assert "made no progress" in proxy.log()
        wait_for(lambda: "curation_recorder_restarts_total 1.0" in metrics(proxy), timeout=10)
        blocker.rollback()
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 2 and r, timeout=20)
    assert got == {"before": 1, "while stalled": 1}  # exactly once across the kill
    wait_for(lambda: ready(proxy)[0] == 200, timeout=10)
    assert "curation_recorder_stalled 0.0" in metrics(proxy)
    assert "curation_recorder_queue_depth 0.0" in metrics(proxy)


def test_queue_depth_is_exact_across_recorder_restarts(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    for i in range(3):
        call(proxy, f"first {i}")
    wait_for(lambda: len(recorded(db_url)) == 3)
    wait_for(lambda: "curation_recorder_queue_depth 0.0" in metrics(proxy))
    recorder_of(proxy).kill()
    wait_for(lambda: "curation_recorder_restarts_total 1.0" in metrics(proxy), timeout=10)
    call(proxy, "after restart")
    wait_for(lambda: len(recorded(db_url)) == 4)
    wait_for(lambda: "curation_recorder_queue_depth 0.0" in metrics(proxy), timeout=5)
    wait_for(lambda: "curation_rows_written_total 4.0" in metrics(proxy), timeout=5)


def spooled_capture(text: str) -> capture_row.Capture:
    request = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    return capture_row.Capture(
        "dur", 1.0, 1.0, False, None, None, None, request.encode(), b'{"choices": []}'
    )


def spooled(tmp_path: Path, prompts: list[str]) -> Spool:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.open()
    for text in prompts:
        capture = spooled_capture(text)
        spool.append(encode(capture.meta(), capture.request, capture.response))
    return spool


def test_writer_failure_ends_the_recorder_to_be_restarted(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spooled(tmp_path, ["a"])
    (spool.directory / f"{spool.first_segment + 1:012d}.seg").mkdir()  # unreadable segment
    reader = SpoolReader(spool.directory)
    reader.open()
    with caplog.at_level(logging.ERROR):
        code = asyncio.run(asyncio.wait_for(recorder.run(reader, db_url, os.getppid()), 20))
    assert code == 1
    assert "writer stopped on IsADirectoryError" in caplog.text


class Died(BaseException):
    """The recorder process dying (out of memory, a native crash) while parsing."""


def test_a_frame_the_recorder_dies_on_twice_is_set_aside(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = capture_row.build

    def dies_on_poison(capture: capture_row.Capture) -> capture_row.Row:
        if b"poison" in capture.request:
            raise Died
        return build(capture)

    monkeypatch.setattr(capture_row, "build", dies_on_poison)
    spool = spooled(tmp_path, ["good 1", "poison", "good 2"])

    async def one_life() -> BaseException | None:
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await wait(lambda: writer.failure is not None or len(recorded(db_url)) == 2)
        await writer.stop(5)
        reader.close()
        return writer.failure

    assert isinstance(asyncio.run(one_life()), Died)  # dies parsing the batch
    assert isinstance(asyncio.run(one_life()), Died)  # dies again on the poison alone
    assert asyncio.run(one_life()) is None  # sets it aside and moves on
    assert recorded(db_url) == {"good 1": 1, "good 2": 1}
    [rejected] = (spool.directory / "rejected.jsonl").read_text().splitlines()
    assert "died twice" in json.loads(rejected)["reason"]
    assert "poison" in json.loads(rejected)["request"]
    assert not (spool.directory / "parsing").exists()
    assert query(db_url, "SELECT rows_written FROM spool_checkpoint") == [{"rows_written": 2}]


async def wait(check: Callable[[], bool], timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_a_replayed_batch_sets_nothing_aside_twice(db_url: str, tmp_path: Path) -> None:
    """PostgreSQL goes away after a batch with a poison capture was parsed; the recorder
    restarts and replays it: the poison is kept, counted and logged once."""
    relay = Relay(db_url)
    relay.up()
    spool = spooled(tmp_path, [])
    poison = capture_row.Capture("dur", 1.0, 1.0, True, None, None, None, b'{"messages": []}', b"")
    good = spooled_capture("good")

    async def first_life() -> Stats:
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, relay.url, Stats())
        writer.start()
        await wait(lambda: writer.database_ok)
        relay.down()
        for capture in (poison, good):
            spool.append(encode(capture.meta(), capture.request, capture.response))
        await wait(lambda: writer.stats.unrecordable == 1 and not writer.database_ok)
        await writer.stop(0.5)
        reader.close()
        return writer.stats

    async def second_life() -> Stats:
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await wait(lambda: recorded(db_url) == {"good": 1})
        await writer.stop(5)
        reader.close()
        return writer.stats

    assert asyncio.run(first_life()).rows_written == 0
    assert asyncio.run(second_life()).unrecordable == 0
    assert len((spool.directory / "rejected.jsonl").read_text().splitlines()) == 1
    assert not (spool.directory / "set-aside").exists()

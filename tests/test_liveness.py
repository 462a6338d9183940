"""The recorder never stops quietly: a stalled or failed writer shows in /readyz and
/metrics, is logged and restarted, and a frame it died on never stalls the spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from curation import config
from curation.capture import row as capture_row
from curation.errors import InvalidInput
from curation.proxy import quarantine, recorder
from curation.proxy.spool import Position, Spool, encode
from curation.proxy.spool_reader import SpoolReader
from curation.proxy.writer import Stats, Writer
from tests import factories
from tests.harness import ProxyProcess, Relay, query, wait_for
from tests.test_durability import call, http, metrics, recorded, recorder_of

Start = Callable[..., ProxyProcess]


def ready(proxy: ProxyProcess) -> tuple[int, dict[str, Any]]:
    head, _, body = http(proxy, "/readyz").partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_recorder_waiting_on_postgresql_is_reported_not_killed(
    start_proxy: Start, db_url: str
) -> None:
    """A slow write or a lock wait: restarting would only send the batch again."""
    proxy = start_proxy(CURATION_RECORDER_STALL_SECONDS="2")
    call(proxy, "before")
    wait_for(lambda: recorded(db_url) == {"before": 1})
    with psycopg.connect(db_url) as blocker:  # a curator holding a lock: inserts wait
        blocker.execute("LOCK TABLE dur_openai_chat_completion IN ACCESS EXCLUSIVE MODE")
        call(proxy, "while stalled")
        _, body = wait_for(lambda: (r := ready(proxy))[0] == 503 and r, timeout=20)
        assert body["recorder"] == "stalled" and "waiting on PostgreSQL" in body["reasons"][0]
        assert "curation_recorder_stalled 1.0" in metrics(proxy)
        wait_for(lambda: "waiting on PostgreSQL for" in proxy.log(), timeout=5)
        assert "curation_recorder_restarts_total 0.0" in metrics(proxy)
        blocker.rollback()
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 2 and r, timeout=20)
    assert got == {"before": 1, "while stalled": 1}
    wait_for(lambda: ready(proxy)[0] == 200, timeout=10)
    assert "curation_recorder_stalled 0.0" in metrics(proxy)
    assert "curation_recorder_restarts_total 0.0" in metrics(proxy)


def test_a_hung_recorder_is_reported_and_restarted(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_RECORDER_STALL_SECONDS="2")
    call(proxy, "before")
    wait_for(lambda: recorded(db_url) == {"before": 1})
    hung = recorder_of(proxy)
    os.kill(hung.pid, signal.SIGSTOP)  # its loop stops: nothing parsed, nothing published
    try:
        call(proxy, "while hung")
        _, body = wait_for(lambda: (r := ready(proxy))[0] == 503 and r, timeout=20)
        assert "made no progress" in proxy.log() or body["reasons"]
        wait_for(lambda: "curation_recorder_restarts_total 1.0" in metrics(proxy), timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung.pid, signal.SIGCONT)
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 2 and r, timeout=20)
    assert got == {"before": 1, "while hung": 1}  # exactly once across the kill
    wait_for(lambda: ready(proxy)[0] == 200, timeout=10)


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
    return factories.spooled(
        namespace="dur",
        request=request.encode(),
        response=b'{"choices": []}',
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
    assert stat.S_IMODE((spool.directory / "rejected.jsonl").stat().st_mode) == 0o600
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
    poison = factories.spooled(
        namespace="dur",
        streamed=True,
        request=b'{"messages": []}',
        response=b"",
    )
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


def test_a_stall_kill_is_no_strike_against_the_frame_being_parsed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow machine: the supervisor kills the recorder in a careful pass, while a good
    capture is parsing. That capture is not set aside; every row is written once."""
    build = capture_row.build
    dies_on = {"good 1"}  # the first life dies (a real crash), the second is stall-killed

    def dies(capture: capture_row.Capture) -> capture_row.Row:
        if any(text.encode() in capture.request for text in dies_on):
            raise Died
        return build(capture)

    monkeypatch.setattr(capture_row, "build", dies)
    spool = spooled(tmp_path, ["good 0", "good 1", "good 2", "good 3"])

    async def one_life() -> BaseException | None:
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await wait(lambda: writer.failure is not None)
        await writer.stop(5)
        reader.close()
        return writer.failure

    assert isinstance(asyncio.run(one_life()), Died)  # a real death in the batch pass
    dies_on.add("good 2")
    dies_on.discard("good 1")
    assert isinstance(asyncio.run(one_life()), Died)  # "killed" parsing good 2 alone
    monkeypatch.setattr(capture_row, "build", build)
    supervisor = recorder.Recorder(spool.directory, db_url, stall_seconds=60)
    supervisor._restart(stalled=True)  # the supervisor's own kill, then a real recorder
    try:
        wait_for(lambda: len(recorded(db_url)) == 4, timeout=30)
    finally:
        asyncio.run(supervisor.stop())
    assert recorded(db_url) == {f"good {i}": 1 for i in range(4)}
    assert not (spool.directory / "rejected.jsonl").exists()
    assert query(db_url, "SELECT rows_written FROM spool_checkpoint") == [{"rows_written": 4}]


def test_a_frame_hanging_alone_for_the_stall_time_is_a_strike(tmp_path: Path) -> None:
    start, end, frame = Position(1, 0), Position(1, 300), Position(1, 100)
    note = quarantine.Note(tmp_path)
    note.write(quarantine.Span(start, end, frame, time.time()))
    quarantine.after_stall_kill(tmp_path, 60)
    assert note.load() == quarantine.Span(start, end)  # the span stays suspect, no strike
    note.write(quarantine.Span(start, end, frame, time.time() - 61))
    quarantine.after_stall_kill(tmp_path, 60)
    kept = note.load()
    assert kept is not None and kept.frame == frame  # a hang: the strike stands


def test_a_frame_set_aside_is_never_parsed_again_nor_kept_twice(
    db_url: str, tmp_path: Path
) -> None:
    """Set aside, then killed before the batch committed: the replay writes no row of it,
    and an entry torn by the kill is cut off and written again whole."""
    spool = spooled(tmp_path, ["kept aside", "good"])
    reader = SpoolReader(spool.directory)
    reader.open()
    [first, _] = reader.read(2, 1 << 20)
    reader.close()
    aside = quarantine.SetAside(spool.directory)
    aside.pending(first.position)
    (spool.directory / "rejected.jsonl").write_bytes(b'{"torn": ')
    assert first.position not in quarantine.SetAside(spool.directory).positions
    assert (spool.directory / "rejected.jsonl").read_bytes() == b""
    aside.pending(first.position)
    (spool.directory / "rejected.jsonl").write_bytes(b'{"whole": 1}\n')
    assert first.position in quarantine.SetAside(spool.directory).positions

    async def life() -> None:
        reader = SpoolReader(spool.directory)
        reader.open()
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await wait(lambda: recorded(db_url) == {"good": 1})
        await writer.stop(5)
        reader.close()

    asyncio.run(life())
    assert recorded(db_url) == {"good": 1}
    assert (spool.directory / "rejected.jsonl").read_bytes() == b'{"whole": 1}\n'


def test_a_big_backlog_and_a_short_stall_time_sets_nothing_aside(
    start_proxy: Start, db_url: str, tmp_path: Path
) -> None:
    """Batches that take longer than the stall time to parse and write: the recorder is
    slow, not stalled. It is not killed, no good capture is set aside, and every row is
    written exactly once."""
    spool = Spool(tmp_path / "spool", max_bytes=256 << 20)
    spool.open()
    for i in range(48):
        capture = spooled_capture(f"backlog {i} " + "x" * (400 << 10))
        spool.append(encode(capture.meta(), capture.request, capture.response))
    spool.close()
    proxy = start_proxy(CURATION_RECORDER_STALL_SECONDS="1")
    wait_for(lambda: len(recorded(db_url)) == 48, timeout=120)
    assert set(recorded(db_url).values()) == {1}
    assert not (spool.directory / "rejected.jsonl").exists()
    assert "curation_recorder_restarts_total 0.0" in metrics(proxy)
    assert "died twice" not in proxy.log()


def test_the_stall_time_is_at_least_a_second() -> None:
    """Below that, a healthy recorder's ordinary pauses would read as stalls."""
    with pytest.raises(InvalidInput, match="CURATION_RECORDER_STALL_SECONDS"):
        config.load(env={"CURATION_RECORDER_STALL_SECONDS": "0.1"})
    assert config.load(env={"CURATION_RECORDER_STALL_SECONDS": "1"}).recorder_stall_seconds == 1

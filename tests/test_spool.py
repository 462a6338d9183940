"""The spool on a real filesystem: order, torn frames, cap, release, lock."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest

from curation.errors import Conflict
from curation.proxy.spool import Position, Spool, encode
from curation.proxy.spool_reader import SpoolReader


def frame(i: int, size: int = 10) -> bytes:
    return encode({"i": i}, b"q" * size, b"r" * size)


def opened(path: Path, **kw: int) -> Spool:
    s = Spool(path, max_bytes=kw.pop("max_bytes", 1 << 30), **kw)  # type: ignore[arg-type]
    s.open()
    return s


def reader(path: Path) -> SpoolReader:
    r = SpoolReader(path)
    r.open(wait=1)
    return r


def test_frames_read_back_in_order(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = reader(tmp_path)
    for i in range(5):
        s.append(frame(i))
    got = r.read(3, 1 << 20) + r.read(10, 1 << 20)
    assert [f.meta["i"] for f in got] == [0, 1, 2, 3, 4]
    assert got[0].request == b"q" * 10 and got[0].response == b"r" * 10
    assert r.read(10, 1 << 20) == []


def test_replay_after_restart_from_checkpoint(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = reader(tmp_path)
    for i in range(4):
        s.append(frame(i))
    r.read(2, 1 << 20)
    checkpoint = r.read_position
    s.close()  # as if killed: nothing else recorded
    r.close()
    again, r2 = opened(tmp_path), reader(tmp_path)
    r2.seek(checkpoint)
    assert [f.meta["i"] for f in r2.read(10, 1 << 20)] == [2, 3]
    again.append(frame(9))
    assert [f.meta["i"] for f in r2.read(10, 1 << 20)] == [9]


def test_torn_last_frame_is_skipped(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(frame(0))
    s.append(frame(1))
    segment = s.path(s._active)
    s.close()
    with open(segment, "r+b") as f:  # kill -9 in the middle of a write
        f.truncate(os.path.getsize(segment) - 5)
    again, r = opened(tmp_path), reader(tmp_path)
    assert [f.meta["i"] for f in r.read(10, 1 << 20)] == [
        0
    ]  # the torn tail: not yet known to be torn
    again.append(frame(2))
    assert [f.meta["i"] for f in r.read(10, 1 << 20)] == [2]
    assert r.torn == 1


def test_release_deletes_consumed_segments(tmp_path: Path) -> None:
    s = opened(tmp_path, segment_bytes=100)
    r = reader(tmp_path)
    for i in range(6):
        s.append(frame(i, 40))
    assert len(list(tmp_path.glob("*.seg"))) >= 5
    r.read(100, 1 << 20)
    r.release(r.read_position)
    assert sorted(tmp_path.glob("*.seg")) == [s.path(r.read_position.segment)]
    s.rescan()
    assert s.total_bytes == s.path(r.read_position.segment).stat().st_size


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    for i in range(30):
        s.append(frame(i, 40))
    assert s.total_bytes <= 1000
    remaining = [f.meta["i"] for f in reader(tmp_path).read(100, 1 << 20)]
    assert remaining == list(range(30 - len(remaining), 30))  # the newest survive, in order
    assert sum(dropped) == 30 - len(remaining)


def test_one_proxy_and_one_reader_per_spool(tmp_path: Path) -> None:
    opened(tmp_path)
    with pytest.raises(Conflict, match="in use by another proxy"):
        opened(tmp_path)
    reader(tmp_path)
    with pytest.raises(Conflict):
        reader(tmp_path)


def test_seek_never_goes_backwards(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = reader(tmp_path)
    s.append(frame(0))
    r.read(10, 1 << 20)
    r.seek(Position(0, 0))
    assert r.read(10, 1 << 20) == []


def test_bytes_after_a_position(tmp_path: Path) -> None:
    s = opened(tmp_path, segment_bytes=100)
    r = reader(tmp_path)
    for i in range(5):
        s.append(frame(i, 40))
    assert s.bytes_after(None) == s.total_bytes
    r.read(2, 1 << 20)
    assert s.bytes_after(r.read_position) == s.total_bytes - sum(
        len(frame(i, 40)) for i in range(2)
    )
    r.read(10, 1 << 20)
    assert s.bytes_after(r.read_position) == 0


def test_dropped_count_is_exact_while_the_reader_holds_frames(tmp_path: Path) -> None:
    """Frames the reader has taken (its batch waits for PostgreSQL) are not lost: only
    those it will never see are counted as dropped, so dropped + read = appended."""
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    r = reader(tmp_path)
    got = []
    for i in range(60):
        s.append(frame(i, 40))
        if i % 7 == 0:
            got += r.read(3, 1 << 20)  # read, never committed
    got += r.read(100, 1 << 20)
    seen = [f.meta["i"] for f in got]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert sum(dropped) + len(got) == 60


def test_a_failed_write_leaves_no_partial_frame(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = reader(tmp_path)
    s.append(frame(0))
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(frame(0)) + 10, hard))  # as a full disk
    try:
        with pytest.raises(OSError):
            s.append(frame(1))  # 10 bytes of it written, then the write fails
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert s.path(s._active).stat().st_size == len(frame(0))
    assert [f.meta["i"] for f in r.read(10, 1 << 20)] == [0]


def test_frames_after_a_position_also_across_a_restart(tmp_path: Path) -> None:
    s = opened(tmp_path, segment_bytes=100)
    r = reader(tmp_path)
    for i in range(5):
        s.append(frame(i, 40))
    r.read(2, 1 << 20)
    assert s.frames_after(None) == 5 and s.frames_after(r.read_position) == 3
    s.close()
    again = opened(tmp_path, segment_bytes=100)  # the frames of old segments are counted on open
    again.append(frame(5, 40))
    assert again.frames_after(r.read_position) == 4
    r.read(100, 1 << 20)
    assert again.frames_after(r.read_position) == 0

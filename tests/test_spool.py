"""The spool on a real filesystem: order, torn frames, cap, release, lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curation.errors import Conflict
from curation.proxy.spool import Position, Spool, encode


def frame(i: int, size: int = 10) -> bytes:
    return encode({"i": i}, b"q" * size, b"r" * size)


def opened(path: Path, **kw: int) -> Spool:
    s = Spool(path, max_bytes=kw.pop("max_bytes", 1 << 30), **kw)  # type: ignore[arg-type]
    s.open()
    return s


def test_frames_read_back_in_order(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(5):
        s.append(frame(i))
    got = s.read(3, 1 << 20) + s.read(10, 1 << 20)
    assert [f.meta["i"] for f in got] == [0, 1, 2, 3, 4]
    assert got[0].request == b"q" * 10 and got[0].response == b"r" * 10
    assert s.read(10, 1 << 20) == []


def test_replay_after_restart_from_checkpoint(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(4):
        s.append(frame(i))
    s.read(2, 1 << 20)
    checkpoint = s.read_position
    s.close()  # as if killed: nothing else recorded
    again = opened(tmp_path)
    again.seek(checkpoint)
    assert [f.meta["i"] for f in again.read(10, 1 << 20)] == [2, 3]
    again.append(frame(9))
    assert [f.meta["i"] for f in again.read(10, 1 << 20)] == [9]


def test_torn_last_frame_is_skipped(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(frame(0))
    s.append(frame(1))
    segment = s._path(s._active)
    s.close()
    with open(segment, "r+b") as f:  # kill -9 in the middle of a write
        f.truncate(os.path.getsize(segment) - 5)
    again = opened(tmp_path)
    again.append(frame(2))
    assert [f.meta["i"] for f in again.read(10, 1 << 20)] == [0, 2]
    assert again.torn == 1


def test_release_deletes_consumed_segments(tmp_path: Path) -> None:
    s = opened(tmp_path, segment_bytes=100)
    for i in range(6):
        s.append(frame(i, 40))
    assert len(list(tmp_path.glob("*.seg"))) >= 5
    s.read(100, 1 << 20)
    s.release(s.read_position)
    assert sorted(tmp_path.glob("*.seg")) == [s._path(s._active)]


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    for i in range(30):
        s.append(frame(i, 40))
    assert s.total_bytes <= 1000
    remaining = [f.meta["i"] for f in s.read(100, 1 << 20)]
    assert remaining == list(range(30 - len(remaining), 30))  # the newest survive, in order
    assert sum(dropped) == 30 - len(remaining)


def test_one_proxy_per_spool(tmp_path: Path) -> None:
    opened(tmp_path)
    with pytest.raises(Conflict, match="in use by another proxy"):
        opened(tmp_path)


def test_seek_never_goes_backwards(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(frame(0))
    s.read(10, 1 << 20)
    s.seek(Position(0, 0))
    assert s.read(10, 1 << 20) == []

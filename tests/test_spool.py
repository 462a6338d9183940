"""The spool on a real filesystem: order, torn frames, cap, release, lock."""

from __future__ import annotations

import fcntl
import os
import resource
import signal
from collections.abc import Callable
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
    segment = s.path(max(s.on_disk()))  # the newest segment: the one appended to
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
    assert s.path(max(s.on_disk())).stat().st_size == len(frame(0))
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


def test_the_cap_never_counts_frames_the_reader_already_took(tmp_path: Path) -> None:
    """Frames the reader took are written from its memory (or already committed):
    a segment the cap drops after that loses nothing, and counts nothing."""
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    r = reader(tmp_path)
    for i in range(8):  # four full segments, under the cap
        s.append(frame(i, 40))
    assert len(r.read(100, 1 << 20)) == 8
    oldest = min(s.on_disk())
    for i in range(8, 12):
        s.append(frame(i, 40))
    assert oldest not in s.on_disk()  # the cap dropped segments ...
    assert dropped == []  # ... of frames already taken: none lost
    assert [f.meta["i"] for f in r.read(100, 1 << 20)] == [8, 9, 10, 11]


def test_a_segment_being_read_is_dropped_on_the_next_append(tmp_path: Path) -> None:
    """The appender never deletes a segment under a reader's lock: it waits for the
    next append, then drops and counts it once."""
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    for i in range(9):
        s.append(frame(i, 40))
    oldest = min(s.on_disk())
    with open(s.path(oldest), "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_SH)  # a reader inside it this instant
        s.append(frame(9, 40))  # over the cap
        assert oldest in s.on_disk() and dropped == []
    s.append(frame(10, 40))
    assert oldest not in s.on_disk() and dropped == [2]  # its two frames, never read
    assert s.total_bytes <= 1000


class RacedReader(SpoolReader):
    """A reader whose listing of segments goes stale at once: ``race`` (the appender
    dropping segments over its cap) runs between the listing and the reads, as it
    may at any instant in production."""

    race: Callable[[], None] | None = None

    def on_disk(self) -> dict[int, int]:
        found = super().on_disk()
        race, self.race = self.race, None
        if race is not None:
            race()
        return found


@pytest.mark.parametrize("held_open", [True, False], ids=["open-segment", "listed-segment"])
def test_the_reader_skips_a_segment_dropped_under_it(tmp_path: Path, held_open: bool) -> None:
    """Dropped while the reader had it open (unlinked: st_nlink 0) or only listed
    (gone from the directory): skipped, never read. Every frame is read or counted
    as dropped, exactly once."""
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=200)
    s.on_drop = dropped.append
    r = RacedReader(tmp_path)
    r.open(wait=1)
    for i in range(4):  # segments 1 and 2, two frames each
        s.append(frame(i, 40))
    got = r.read(1, 1 << 20) if held_open else []  # frame 0; segment 1 stays open
    first = min(s.on_disk())

    def overflow() -> None:
        for i in range(4, 10):
            s.append(frame(i, 40))
        assert first not in s.on_disk()

    r.race = overflow
    got += r.read(100, 1 << 20)
    got += r.read(100, 1 << 20)
    never_read = [1] if held_open else [0, 1]  # what segment 1 held past the reader
    assert [f.meta["i"] for f in got] == [i for i in range(10) if i not in never_read]
    assert dropped == [len(never_read)]  # so read + dropped = appended


def test_a_cap_smaller_than_a_segment_closes_the_segment_and_drops_it(tmp_path: Path) -> None:
    """Everything over the cap is in the segment being appended to: a new one is
    started, and the full one dropped and counted like any other."""
    dropped: list[int] = []
    s = opened(tmp_path, max_bytes=1000, segment_bytes=1 << 20)
    s.on_drop = dropped.append
    r = reader(tmp_path)  # it has taken nothing yet
    for i in range(9):
        s.append(frame(i, 40))
    first = max(s.on_disk())
    s.append(frame(9, 40))  # ten frames of 101 bytes, all in one segment: over the cap
    assert first not in s.on_disk() and dropped == [10]
    assert s.total_bytes == 0
    s.append(frame(10, 40))
    assert [f.meta["i"] for f in r.read(100, 1 << 20)] == [10]


class RacedSpool(Spool):
    """An appender that learns of the reader's deletions a moment late: ``race`` runs
    right after it looks (the reader releasing segments it committed)."""

    race: Callable[[], None] | None = None

    def rescan(self) -> None:
        super().rescan()
        race, self.race = self.race, None
        if race is not None:
            race()


def test_a_segment_the_reader_released_meanwhile_is_not_counted(tmp_path: Path) -> None:
    dropped: list[int] = []
    s = RacedSpool(tmp_path, max_bytes=1000, segment_bytes=200)
    s.open()
    s.on_drop = dropped.append
    r = reader(tmp_path)
    for i in range(9):
        s.append(frame(i, 40))
    assert len(r.read(3, 1 << 20)) == 3  # past segment 1: committed ...
    oldest = min(s.on_disk())

    def release() -> None:  # ... and released just as the cap looks
        r.release(r.read_position)
        assert not s.path(oldest).exists()

    s.race = release
    s.append(frame(9, 40))  # over the cap: segment 1 is the oldest it knows of
    assert s.race is None and dropped == []
    assert [f.meta["i"] for f in r.read(100, 1 << 20)] == list(range(3, 10))


def test_frames_larger_than_a_read_chunk_come_back_whole(tmp_path: Path) -> None:
    from curation.proxy.spool_reader import CHUNK

    s = opened(tmp_path)
    r = reader(tmp_path)
    sizes = [10, CHUNK // 2, CHUNK - 40, 3 * CHUNK, 10, CHUNK + 7]
    for i, size in enumerate(sizes):
        s.append(frame(i, size))
    got = r.read(2, 1 << 30) + r.read(10, 1 << 30)
    assert [f.meta["i"] for f in got] == list(range(len(sizes)))
    assert [len(f.request) for f in got] == sizes
    assert all(f.request == b"q" * len(f.request) for f in got)
    assert all(f.response == b"r" * len(f.response) for f in got)
    assert r.torn == 0


def test_a_frame_still_being_written_is_read_once_whole(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = reader(tmp_path)
    s.append(frame(0))
    segment = s.path(max(s.on_disk()))
    assert [f.meta["i"] for f in r.read(10, 1 << 20)] == [0]
    whole = frame(1, 300)
    with open(segment, "ab") as f:  # a frame seen while it is being written
        f.write(whole[:3])
        f.flush()
        assert r.read(10, 1 << 20) == []
        f.write(whole[3:60])
        f.flush()
        assert r.read(10, 1 << 20) == []
        f.write(whole[60:])
        f.flush()
    got = r.read(10, 1 << 20)
    assert [(f.meta["i"], f.request) for f in got] == [(1, b"q" * 300)]
    assert r.read(10, 1 << 20) == [] and r.torn == 0


def test_a_corrupt_length_in_a_finished_segment_is_torn_and_never_read(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(frame(0))
    segment = s.path(max(s.on_disk()))
    s.close()
    with open(segment, "ab") as f:  # then a header that claims 1 TiB
        f.write(b"CUR1 2 %d 0\n{}" % (1 << 40))
    again = opened(tmp_path)  # a restarted proxy appends to a new segment
    again.append(frame(1))
    r = reader(tmp_path)
    assert [f.meta["i"] for f in r.read(10, 1 << 20)] == [0, 1]
    assert r.torn == 1

"""The writer's exactly-once guards, on a real spool and a real PostgreSQL: a commit
whose acknowledgement was lost, frames that cannot be rows, a stop that times out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from pathlib import Path

import psycopg
import pytest

from curation.capture import row as capture_row
from curation.proxy.spool import Frame, Position, Spool, encode
from curation.proxy.spool_reader import SpoolReader
from curation.proxy.writer import Stats, Writer
from tests import factories
from tests.harness import Relay, query, wait_for

NS = "guard"
# psycopg ends a transaction with a simple-protocol query: 'Q', its length, the text.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


def capture(text: str) -> capture_row.Capture:
    request = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return factories.spooled(
        namespace=NS,
        started_at=1700000000.0,
        request=json.dumps(request).encode(),
        response=b'{"choices": []}',
    )


def spool_of(tmp_path: Path, prompts: list[str]) -> Spool:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.open()
    for text in prompts:
        append(spool, text)
    return spool


def append(spool: Spool, text: str) -> None:
    c = capture(text)
    spool.append(encode(c.meta(), c.request, c.response))


def reader_of(spool: Spool) -> SpoolReader:
    reader = SpoolReader(spool.directory)
    reader.open(wait=1)
    return reader


def rows_of(frames: list[Frame]) -> list[capture_row.Row]:
    return [
        capture_row.build(capture_row.Capture.from_meta(f.meta, f.request, f.response))
        for f in frames
    ]


def recorded(db_url: str) -> dict[str, int]:
    try:
        found = query(db_url, f"SELECT user_prompt, times_seen FROM {NS}_openai_chat_completion")
    except psycopg.errors.UndefinedTable:
        return {}
    return {str(r["user_prompt"]): int(r["times_seen"]) for r in found}


def checkpoint(db_url: str) -> list[dict[str, object]]:
    return query(db_url, "SELECT segment, byte_offset, rows_written FROM spool_checkpoint")


async def until(check: object, timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


# -- a commit whose acknowledgement was lost --------------------------------------


@pytest.mark.parametrize(
    ("behind", "written"),
    [(0, False), (-7, False), (7, True)],
    ids=["checkpoint-at-the-end", "checkpoint-past-the-end", "checkpoint-before-the-end"],
)
def test_a_fresh_connection_writes_a_batch_only_past_the_checkpoint(
    db_url: str, tmp_path: Path, behind: int, written: bool
) -> None:
    """A batch that ends at or before the checkpoint is in the database already (its
    commit went through, its acknowledgement did not): the first commit on a fresh
    connection writes nothing, not even the checkpoint."""
    spool = spool_of(tmp_path, ["a", "b"])
    reader = reader_of(spool)
    frames = reader.read(10, 1 << 20)
    end = reader.read_position
    held = Position(end.segment, end.offset - behind)
    query(db_url, f"SELECT curation_create_namespace('{NS}')")
    query(
        db_url,
        "INSERT INTO spool_checkpoint (spool_id, segment, byte_offset, rows_written)"
        " VALUES (%s, %s, %s, 5)",
        [spool.id, held.segment, held.offset],
    )

    async def commit() -> Stats:
        writer = Writer(reader, db_url, Stats())
        assert await writer.commit(rows_of(frames), end)
        await writer.stop(1)
        return writer.stats

    stats = asyncio.run(commit())
    if written:
        assert recorded(db_url) == {"a": 1, "b": 1} and stats.rows_written == 2
        assert checkpoint(db_url) == [
            {"segment": end.segment, "byte_offset": end.offset, "rows_written": 7}
        ]
    else:
        assert recorded(db_url) == {} and stats.rows_written == 0
        assert checkpoint(db_url) == [
            {"segment": held.segment, "byte_offset": held.offset, "rows_written": 5}
        ]


class AckEater(Relay):
    """A relay to PostgreSQL that, once armed, lets the next COMMIT through and cuts
    the connection before its acknowledgement reaches the client: the transaction is
    committed, and the client cannot know it."""

    def __init__(self, target_url: str) -> None:
        super().__init__(target_url)
        self.armed = threading.Event()
        self.eaten = threading.Event()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.socket(
                socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET
            )
            try:
                server.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            sent = threading.Event()
            threading.Thread(target=self._up, args=(client, server, sent), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, sent), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, sent: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and COMMIT in data:
                    self.armed.clear()
                    sent.set()  # before it leaves: whatever comes back now is its answer
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, sent: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if sent.is_set():
                    self.eaten.set()  # COMMIT's CommandComplete: never delivered
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:  # shutdown first: it wakes the other thread's recv on the socket
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_a_batch_whose_commit_acknowledgement_was_lost_is_not_written_twice(
    db_url: str, tmp_path: Path
) -> None:
    """The connection breaks between PostgreSQL's COMMIT and its answer: the writer
    reconnects, sees the checkpoint already at the batch's end, and moves on."""
    query(db_url, f"SELECT curation_create_namespace('{NS}')")  # no namespace transaction
    relay = AckEater(db_url)
    relay.up()
    relay.armed.set()
    spool = spool_of(tmp_path, ["a", "b"])

    async def life() -> Stats:
        reader = reader_of(spool)
        writer = Writer(reader, relay.url, Stats())
        writer.start()
        await until(lambda: relay.eaten.is_set() and writer.stats.committed != (0, 0))
        append(spool, "c")  # and the writer goes on as usual
        await until(lambda: len(recorded(db_url)) == 3)
        assert await writer.stop(5)
        reader.close()
        return writer.stats

    try:
        stats = asyncio.run(life())
    finally:
        relay.down()
    assert stats.write_errors == 1  # the lost acknowledgement, nothing else
    assert recorded(db_url) == {"a": 1, "b": 1, "c": 1}  # each exactly once
    assert [c["rows_written"] for c in checkpoint(db_url)] == [3]


# -- frames that cannot be rows ----------------------------------------------------


def raw_frame(meta: bytes, request: bytes, response: bytes) -> bytes:
    """A frame as encode() writes it, with metadata bytes of our choosing."""
    header = b"CUR1 %d %d %d\n" % (len(meta), len(request), len(response))
    return header + meta + request + response + b"\n"


def test_unrecordable_frames_are_kept_aside_and_the_next_ones_written(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spool_of(tmp_path, ["before"])
    bad_request = capture("x")
    at = {"request": spool.total_bytes}
    spool.append(encode(bad_request.meta(), b'{"messages": [not json', b'{"choices": []}'))
    at["meta"] = spool.total_bytes
    spool.append(raw_frame(b'{"ns": 12', capture("y").request, b'{"choices": []}'))
    append(spool, "after")
    segment = min(spool.on_disk())

    async def life() -> Stats:
        reader = reader_of(spool)
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await until(lambda: len(recorded(db_url)) == 2)
        assert await writer.stop(5)
        reader.close()
        return writer.stats

    with caplog.at_level(logging.ERROR, logger="curation.writer"):
        stats = asyncio.run(life())
    assert recorded(db_url) == {"before": 1, "after": 1}
    assert stats.unrecordable == 2 and stats.rejected == 0 and stats.rows_written == 2
    entries = [
        json.loads(line) for line in (spool.directory / "rejected.jsonl").read_text().splitlines()
    ]
    assert [e["position"] for e in entries] == [[segment, at["request"]], [segment, at["meta"]]]
    assert entries[0]["reason"].startswith("unrecordable: request is not JSON")
    assert entries[0]["request"] == '{"messages": [not json' and entries[0]["meta"]["ns"] == NS
    assert entries[1]["reason"] == "unrecordable: spool frame has no valid namespace"
    assert entries[1]["meta"] == {} and "y" in entries[1]["request"]
    assert all(e["spool"] == spool.id for e in entries)
    logged = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(logged) == 2 and "not json" not in "".join(logged)  # once each, no body
    assert [c["rows_written"] for c in checkpoint(db_url)] == [2]


def test_a_parsing_bug_costs_one_capture_and_an_unwritable_rejected_file_none(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Parsing that fails with anything but Unrecordable (a bug) sets that one capture
    aside; when even rejected.jsonl cannot be written, it is still counted and logged."""
    build = capture_row.build

    def buggy(c: capture_row.Capture) -> capture_row.Row:
        if b"bug" in c.request:
            raise RuntimeError("a bug in the parser")
        return build(c)

    monkeypatch.setattr(capture_row, "build", buggy)
    spool = spool_of(tmp_path, ["before", "bug", "after"])
    (spool.directory / "rejected.jsonl").mkdir()  # cannot be opened for writing

    async def life() -> Stats:
        reader = reader_of(spool)
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await until(lambda: len(recorded(db_url)) == 2)
        assert await writer.stop(5)
        reader.close()
        return writer.stats

    with caplog.at_level(logging.ERROR, logger="curation.writer"):
        stats = asyncio.run(life())
    assert recorded(db_url) == {"before": 1, "after": 1} and stats.unrecordable == 1
    assert "could not keep a capture in" in caplog.text
    assert "capture parsing failed with RuntimeError" in caplog.text
    assert "a bug in the parser" not in caplog.text  # the reason is the type, never data


# -- a stop that times out ---------------------------------------------------------


class BlackHole:
    """A server that accepts connections and never says a word: PostgreSQL hung."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"postgresql://curation@127.0.0.1:{self.sock.getsockname()[1]}/curation"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for s in self.held:
            s.close()


def test_a_stop_that_times_out_leaves_the_spool_to_be_replayed(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer stuck on PostgreSQL is cancelled at the stop's timeout (not when its
    connect gives up, seconds later); what it held is replayed by the next writer."""
    spool = spool_of(tmp_path, ["held"])
    hole = BlackHole()

    async def stuck() -> tuple[bool, BaseException | None]:
        reader = reader_of(spool)
        writer = Writer(reader, hole.url, Stats())
        writer.start()
        await until(lambda: writer.stats.in_database_since > 0)
        stopped = await asyncio.wait_for(writer.stop(0.3), 3)  # its connect waits 5 s
        reader.close()
        return stopped, writer.failure

    async def next_life() -> None:
        reader = reader_of(spool)
        writer = Writer(reader, db_url, Stats())
        writer.start()
        await until(lambda: recorded(db_url) == {"held": 1})
        assert await writer.stop(5)
        reader.close()

    try:
        with caplog.at_level(logging.WARNING, logger="curation.writer"):
            assert asyncio.run(stuck()) == (False, None)
    finally:
        hole.close()
    assert "writer stopped with records still in the spool" in caplog.text
    assert list(spool.directory.glob("*.seg"))  # nothing released
    asyncio.run(next_life())
    wait_for(lambda: checkpoint(db_url) and checkpoint(db_url)[0]["rows_written"] == 1)

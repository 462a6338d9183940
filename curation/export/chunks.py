"""The row pipeline of an export: raw COPY rows -> examples, in chunks, in order.

Each chunk of rows is parsed, built into examples (short system prompt,
conversation, curated answer), scanned for personal data, validated and counted,
here for the first rows and in worker processes for the rest; results come back
in row order, so the files are the same however many workers. Everything here
is pure but for the tokenizer's tables and the worker pool.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import orjson

from curation.db import export as db
from curation.export import examples, models, pii, split, tokens, validate

if TYPE_CHECKING:
    from curation.export.run import ExportRequest


class Chunk:
    """The outcome of a run of rows, in row order: the lines for each split (with the
    ids, versions and token counts the manifest needs) and the skipped rows. A
    worker returns one per chunk; it pickles as a few byte strings, not row objects."""

    def __init__(self) -> None:
        self.rows = 0
        self.longest = 0
        self.skipped: list[tuple[int, str]] = []
        self.train, self.validation = Part(), Part()
        self.pii = pii.Tally()

    def add(
        self, row_id: int, version: int, line: bytes, n: tokens.Count, validation: bool
    ) -> None:
        (self.validation if validation else self.train).add(row_id, version, line, n.total)
        if n.longest > self.longest:
            self.longest = n.longest

    def skip(self, row_id: int, reason: str) -> None:
        self.skipped.append((row_id, reason))


class Part:
    def __init__(self) -> None:
        self.lines = bytearray()
        self.ids, self.versions, self.counts = array("q"), array("q"), array("q")
        self.tokens = 0

    def add(self, row_id: int, version: int, line: bytes, n_tokens: int) -> None:
        self.lines += line
        self.ids.append(row_id)
        self.versions.append(version)
        self.counts.append(n_tokens)
        self.tokens += n_tokens


def process(row: tuple[Any, ...], req: ExportRequest, info: models.ModelInfo, into: Chunk) -> None:
    """Build, validate and count one row's example. Pure but for the tokenizer's tables."""
    into.rows += 1
    row_id, version, user_prompt = row[0], row[1], row[2]
    if req.near_duplicates and row_id in req.near_duplicates:
        return  # listed in the manifest's "near_duplicates" with the row kept instead
    try:
        example, n = _counted(row, req, info, into.pii)
        validate.check_length(n.longest, info.max_example_tokens, info.name)
    except (examples.Skip, validate.Invalid, ValueError, KeyError, TypeError) as exc:
        into.skip(row_id, str(exc))
        return
    validation = split.is_validation(user_prompt, req.validation_fraction)
    line = orjson.dumps(example, option=orjson.OPT_APPEND_NEWLINE)
    into.add(row_id, version, line, n, validation)


def _counted(
    row: tuple[Any, ...], req: ExportRequest, info: models.ModelInfo, found: pii.Tally
) -> tuple[dict[str, Any], tokens.Count]:
    """The row's example, scanned for personal data, and its tokens. A row of plain text
    turns (most) takes a shortcut: built by ``examples.plain_chat``, scanned only when
    the one pre-check over its texts says it may hold personal data, counted by
    ``tokens.count_plain``; tests/test_export_golden.py checks it against the full path."""
    request, response = orjson.loads(row[3]), orjson.loads(row[4])
    corrected = orjson.loads(row[5]) if row[5] else None
    encoding, messages = info.encoding, None
    if req.format == "chat" and encoding:
        messages = examples.plain_chat(request, response, corrected, req.system_prompt)
    if messages is not None and encoding:
        example: dict[str, Any] = {"messages": messages}
        if not pii.nothing_in([m["content"] for m in messages]):
            example = found.scan(row[0], example, req.pii, req.pii_region)
        k = tokens.count_plain(example["messages"], encoding)
        return example, tokens.Count(k, k)
    source = examples.SourceRow(
        id=row[0],
        version=row[1],
        user_prompt=row[2],
        request=request,
        response=response,
        corrected_response=corrected,
    )
    example, plain = _example(source, req)
    example = found.scan(source.id, example, req.pii, req.pii_region)
    if plain and info.encoding:
        k = tokens.count_plain(example["messages"], info.encoding)
        return example, tokens.Count(k, k)
    return example, tokens.count(example, info)


def process_chunk(data: bytes, req: ExportRequest, info: models.ModelInfo) -> Chunk:
    """Rows as ``db.copy_rows`` sent them (concatenated) -> their outcome."""
    chunk = Chunk()
    for row in db.parse_rows(data):
        process(row, req, info, chunk)
    return chunk


INLINE_ROWS = 20_000  # done here while the workers start: smaller exports finish first
CHUNK_ROWS = 1000


def outcomes(rows: Iterator[bytes], req: ExportRequest, info: models.ModelInfo) -> Iterator[Chunk]:
    """Every chunk's outcome, in row order. The first INLINE_ROWS rows are done here,
    the rest in worker processes. Those start (loading the tokenizer takes a second)
    once a quarter of INLINE_ROWS is done, so exports smaller than that never start
    them and larger ones overlap their start with the inline work. At most two chunks
    per worker are in flight, so memory stays flat, and results are taken in order,
    so files are deterministic."""
    workers = req.workers if req.workers is not None else min(4, os.cpu_count() or 1)
    inline = 0
    with ExitStack() as stack:
        pool: ProcessPoolExecutor | None = None
        pending: deque[Future[Chunk]] = deque()
        while data := _take(rows):
            if pool is None and workers > 1 and inline >= INLINE_ROWS // 4:
                pool = stack.enter_context(_pool(workers, info))
            if pool is None or inline < INLINE_ROWS:
                chunk = process_chunk(data, req, info)
                inline += chunk.rows
                yield chunk
                continue
            pending.append(pool.submit(process_chunk, data, req, info))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pool(workers: int, info: models.ModelInfo) -> ProcessPoolExecutor:
    """Worker processes, each told at once to load the tokenizer (about a second)."""
    # spawn, not fork: a forked child could close the parent's PostgreSQL socket at exit
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(workers):
        pool.submit(tokens.prepare, info)
    return pool


def _take(rows: Iterator[bytes]) -> bytes:
    """The next CHUNK_ROWS rows, as one byte string (empty at the end)."""
    return b"".join(itertools.islice(rows, CHUNK_ROWS))


def _example(source: examples.SourceRow, req: ExportRequest) -> tuple[dict[str, Any], bool]:
    """The row's example, validated; True with it when it is plain (see ``_plain``)."""
    if req.format == "dpo":
        pair = examples.preference_pair(source, req.system_prompt)
        validate.check_preference(pair)
        return pair, False
    example = examples.chat_example(source, req.system_prompt)
    plain = _plain(example)
    if not plain:
        validate.check_chat(example)
    return example, plain


_PLAIN_ROLES = frozenset({"system", "user", "assistant"})


def _plain(example: dict[str, Any]) -> bool:
    """True for an example that every check of ``validate.check_chat`` passes, seen in
    one quick pass: only messages {role: system/user/assistant, content: non-empty
    text}, the answer last, nothing beside the messages. Anything else (tools, names,
    parts, tool calls) gets the full check."""
    messages = example.get("messages")
    if len(example) != 1 or type(messages) is not list or not messages:
        return False
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return False
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or role not in _PLAIN_ROLES or type(content) is not str:
            return False
        if not content:
            return False
    return bool(messages[-1]["role"] == "assistant")

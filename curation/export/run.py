"""Export a namespace's curated rows as training files plus a manifest.

Rows stream from a binary COPY, in chunks of raw rows that worker processes
parse and turn into examples (short system prompt, conversation, curated
answer), validated and counted; each goes to train or validation by its
prompt's hash, in row order, so the files are the same however many workers.
Files are written under temporary names and renamed, so a crash never leaves
half a file; the dataset and its exact row versions are recorded in the same
transaction.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from curation.db import export as db
from curation.db import flags as db_flags
from curation.db.connect import Connection
from curation.errors import InvalidInput
from curation.export import examples, models, pii, split, tokens, validate

MIN_EXAMPLES = 10  # OpenAI refuses fewer
PII_REGION = pii.DEFAULT_REGION
WARN_EXAMPLES = 50  # fewer rarely helps


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    namespace: str
    out_dir: Path
    base_model: str
    system_prompt: str | None
    validation_fraction: float = 0.1
    format: str = "chat"
    filters: db.Filters = field(default_factory=db.Filters)
    pii: str = "report"  # personal data: report, redact or refuse (export/pii.py)
    pii_region: str | None = PII_REGION  # phone numbers without a + are read as of it
    epochs: int | None = None
    models_file: Path | None = None
    workers: int | None = None  # processes for large exports (None: up to 4, one per CPU)
    near_duplicates: dict[int, int] | None = None  # --dedupe near: dropped -> kept (None: off)


@dataclass(kw_only=True)
class _Split:
    name: str
    path: Path
    tmp: Path
    file: BinaryIO
    sha: Any = field(default_factory=hashlib.sha256)
    examples: int = 0
    tokens: int = 0
    ids: array[int] = field(default_factory=lambda: array("q"))
    versions: array[int] = field(default_factory=lambda: array("q"))
    counts: array[int] = field(default_factory=lambda: array("q"))

    def add(self, part: _Part) -> None:
        self.file.write(part.lines)
        self.sha.update(part.lines)
        self.examples += len(part.ids)
        self.tokens += part.tokens
        self.ids.extend(part.ids)
        self.versions.extend(part.versions)
        self.counts.extend(part.counts)


@dataclass(frozen=True)
class ExportResult:
    manifest: dict[str, Any]
    dataset_id: int
    train_path: Path
    validation_path: Path | None

    @property
    def examples(self) -> int:
        return int(self.manifest["counts"]["examples"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def export(
    conn: Connection, req: ExportRequest, on_row: Callable[[int], None] | None = None
) -> ExportResult:
    if req.format not in ("chat", "dpo"):
        raise InvalidInput(f"unknown format {req.format!r}: use chat or dpo")
    if not 0 <= req.validation_fraction < 1:
        raise InvalidInput(
            f"--validation-fraction {req.validation_fraction} must be from 0 to below 1"
        )
    info = tokens.prepare(models.lookup(req.base_model, req.models_file, open_models=True))
    with _writing(req.out_dir):
        return _write(conn, req, info, on_row)


@contextmanager
def _writing(out_dir: Path) -> Iterator[None]:
    """A failure to write the files (read-only, full, not a folder) is the user's to fix."""
    try:
        yield
    except OSError as exc:
        raise InvalidInput(
            f"cannot write to {out_dir}: {exc.strerror or exc}; choose a writable --out folder"
        ) from exc


def _write(
    conn: Connection,
    req: ExportRequest,
    info: models.ModelInfo,
    on_row: Callable[[int], None] | None,
) -> ExportResult:
    req.out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = (_open_split(req.out_dir, name) for name in ("train", "validation"))
    skipped = _flagged(conn, req)  # export_rows leaves them out
    found = pii.Tally()
    seen, longest = len(skipped), 0
    try:
        rows = db.copy_rows(conn, req.namespace, req.filters)
        for chunk in _chunks(rows, req, info):
            seen += chunk.rows
            if on_row:
                on_row(chunk.rows)
            skipped += ({"id": row_id, "reason": reason} for row_id, reason in chunk.skipped)
            longest = max(longest, chunk.longest)
            train.add(chunk.train)
            valid.add(chunk.validation)
            found.merge(chunk.pii)
        if req.pii == "refuse" and found.row_count:
            raise InvalidInput(found.refusal())
    except BaseException:
        for s in (train, valid):
            s.file.close()
            s.tmp.unlink(missing_ok=True)
        raise
    manifest = _manifest(req, info, train, valid, skipped, seen, longest)
    manifest["pii"] = found.manifest(req.pii, req.pii_region)
    if any(s["reason"].startswith("flagged: ") for s in skipped):
        manifest["warnings"].append(
            f"included rows with automatic flags were skipped: read them (curation list "
            f"{req.namespace} --included --flag any), then curation include {req.namespace} "
            "ID --accept-flags"
        )
    existing = db.find_dataset(conn, req.namespace, manifest["sha256"], info.name, req.format)
    dataset_id = (
        existing
        if existing is not None
        else db.record_dataset(
            conn,
            _dataset_fields(req, info, manifest, train, valid, skipped),
            _lineage(train, valid),
        )
    )
    manifest["dataset_id"] = dataset_id
    _finish(train, valid, manifest, req.out_dir)
    return ExportResult(manifest, dataset_id, train.path, valid.path if valid.examples else None)


class Chunk:
    """The outcome of a run of rows, in row order: the lines for each split (with the
    ids, versions and token counts the manifest needs) and the skipped rows. A
    worker returns one per chunk; it pickles as a few byte strings, not row objects."""

    def __init__(self) -> None:
        self.rows = 0
        self.longest = 0
        self.skipped: list[tuple[int, str]] = []
        self.train, self.validation = _Part(), _Part()
        self.pii = pii.Tally()

    def add(
        self, row_id: int, version: int, line: bytes, n: tokens.Count, validation: bool
    ) -> None:
        (self.validation if validation else self.train).add(row_id, version, line, n.total)
        if n.longest > self.longest:
            self.longest = n.longest

    def skip(self, row_id: int, reason: str) -> None:
        self.skipped.append((row_id, reason))


class _Part:
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
    if req.near_duplicates and row[0] in req.near_duplicates:
        return  # listed in the manifest's "near_duplicates" with the row kept instead
    try:
        source, example, plain = _example(row, req)
        example = into.pii.scan(source.id, example, req.pii, req.pii_region)
        if plain and info.encoding:
            k = tokens.count_plain(example["messages"], info.encoding)
            n = tokens.Count(k, k)
        else:
            n = tokens.count(example, info)
        validate.check_length(n.longest, info.max_example_tokens, info.name)
    except (examples.Skip, validate.Invalid, ValueError, KeyError, TypeError) as exc:
        into.skip(row[0], str(exc))
        return
    validation = split.is_validation(source.user_prompt, req.validation_fraction)
    line = orjson.dumps(example, option=orjson.OPT_APPEND_NEWLINE)
    into.add(source.id, source.version, line, n, validation)


def _flagged(conn: Connection, req: ExportRequest) -> list[dict[str, Any]]:
    """Included rows whose flags no curator accepted: skipped, saying which flags."""
    return [
        {"id": row_id, "reason": f"flagged: {', '.join(flags)}"}
        for row_id, flags in db_flags.export_flagged(conn, req.namespace, req.filters)
    ]


def process_chunk(data: bytes, req: ExportRequest, info: models.ModelInfo) -> Chunk:
    """Rows as ``db.copy_rows`` sent them (concatenated) -> their outcome."""
    chunk = Chunk()
    for row in db.parse_rows(data):
        process(row, req, info, chunk)
    return chunk


INLINE_ROWS = 20_000  # done here while the workers start: smaller exports finish first
CHUNK_ROWS = 1000


def _chunks(rows: Iterator[bytes], req: ExportRequest, info: models.ModelInfo) -> Iterator[Chunk]:
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


def _example(
    row: tuple[Any, ...], req: ExportRequest
) -> tuple[examples.SourceRow, dict[str, Any], bool]:
    """The row's example, validated; True with it when it is plain (see ``_plain``)."""
    row_id, version, user_prompt, request, response, corrected = row
    source = examples.SourceRow(
        id=row_id,
        version=version,
        user_prompt=user_prompt,
        request=orjson.loads(request),
        response=orjson.loads(response),
        corrected_response=orjson.loads(corrected) if corrected else None,
    )
    if req.format == "dpo":
        pair = examples.preference_pair(source, req.system_prompt)
        validate.check_preference(pair)
        return source, pair, False
    example = examples.chat_example(source, req.system_prompt)
    plain = _plain(example)
    if not plain:
        validate.check_chat(example)
    return source, example, plain


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


def _open_split(out_dir: Path, name: str) -> _Split:
    path = out_dir / f"{name}.jsonl"
    tmp = out_dir / f".{name}.jsonl.{os.getpid()}.tmp"
    return _Split(name=name, path=path, tmp=tmp, file=open(tmp, "wb"))


def _manifest(
    req: ExportRequest,
    info: models.ModelInfo,
    train: _Split,
    valid: _Split,
    skipped: list[dict[str, Any]],
    seen: int,
    longest: int,
) -> dict[str, Any]:
    train_sha = train.sha.hexdigest()
    valid_sha = valid.sha.hexdigest() if valid.examples else None
    epochs = req.epochs or info.default_epochs
    cost, cost_basis = info.training_cost(train.tokens, epochs)
    total = train.examples + valid.examples
    warnings = []
    if train.examples < MIN_EXAMPLES:
        warnings.append(
            f"only {train.examples} training examples: fine-tuning needs at least {MIN_EXAMPLES}; "
            f"include {MIN_EXAMPLES - train.examples} more"
        )
    elif train.examples < WARN_EXAMPLES:
        warnings.append(f"{train.examples} training examples: 50-100 good ones usually help more")
    if req.system_prompt is None:
        warnings.append(missing_prompt_warning(req.namespace))
    return {
        "namespace": req.namespace,
        "format": req.format,
        "base_model": info.name,
        "encoding": info.encoding,
        "tokenizer": info.tokenizer,
        "counted_with": info.counted_with,
        "system_prompt": req.system_prompt,
        "created_at": datetime.now(UTC).isoformat(),
        "sha256": hashlib.sha256(f"{train_sha}:{valid_sha or ''}".encode()).hexdigest(),
        "files": {
            "train": {
                "path": train.path.name,
                "sha256": train_sha,
                "examples": train.examples,
                "tokens": train.tokens,
            },
            "validation": {
                "path": valid.path.name,
                "sha256": valid_sha,
                "examples": valid.examples,
                "tokens": valid.tokens,
            }
            if valid.examples
            else None,
        },
        "counts": {
            "rows": seen,
            "examples": total,
            "train": train.examples,
            "validation": valid.examples,
            "skipped": len(skipped),
        },
        "tokens": {
            "train": train.tokens,
            "validation": valid.tokens,
            "longest_example": longest,
            "limit_per_example": info.max_example_tokens,
            "context_limit": info.context_tokens,
        },
        "epochs": epochs,
        "estimated_training_cost_usd": cost,
        "cost_basis": cost_basis,
        "validation_fraction": req.validation_fraction,
        "min_examples": MIN_EXAMPLES,
        "ready_to_submit": train.examples >= MIN_EXAMPLES,
        "warnings": warnings,
        "skipped": skipped,
    } | _dropped(req)


def _dropped(req: ExportRequest) -> dict[str, Any]:
    """What --dedupe near left out, when it was asked for: each dropped row with the kept one."""
    if req.near_duplicates is None:
        return {}
    dropped = [{"id": i, "kept": k} for i, k in sorted(req.near_duplicates.items())]
    return {"near_duplicates": dropped}


def missing_prompt_warning(namespace: str) -> str:
    """Said whenever examples carry no system message: the fine-tuned model would then be
    trained for calls without the short prompt it is meant to be called with."""
    return (
        f"no training system prompt for {namespace}: the examples carry no system message; "
        f"set the short prompt the model will be called with: curation ns set {namespace} "
        f"--system-prompt '...' (a start: curation ns suggest-prompt {namespace})"
    )


def _dataset_fields(
    req: ExportRequest,
    info: models.ModelInfo,
    manifest: dict[str, Any],
    train: _Split,
    valid: _Split,
    skipped: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "namespace": req.namespace,
        "format": req.format,
        "base_model": info.name,
        "system_prompt": req.system_prompt,
        "sha256": manifest["sha256"],
        "train_sha256": manifest["files"]["train"]["sha256"],
        "validation_sha256": manifest["files"]["validation"]["sha256"] if valid.examples else None,
        "train_examples": train.examples,
        "validation_examples": valid.examples,
        "train_tokens": train.tokens,
        "validation_tokens": valid.tokens,
        "skipped": len(skipped),
        "manifest": manifest,
    }


def _lineage(*splits: _Split) -> Iterator[db.Lineage]:
    for s in splits:
        yield s.name, s.ids, s.versions, s.counts


def _finish(train: _Split, valid: _Split, manifest: dict[str, Any], out_dir: Path) -> None:
    """Close, then rename: readers see whole files or none."""
    for s in (train, valid):
        s.file.flush()
        os.fsync(s.file.fileno())
        s.file.close()
    os.replace(train.tmp, train.path)
    if valid.examples:
        os.replace(valid.tmp, valid.path)
    else:
        valid.tmp.unlink()
        valid.path.unlink(missing_ok=True)  # an older export's file must not linger
    rows = {
        s.name: {"ids": s.ids.tolist(), "versions": s.versions.tolist()} for s in (train, valid)
    }
    tmp = out_dir / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps({**manifest, "rows": rows}, option=orjson.OPT_INDENT_2))
    os.replace(tmp, out_dir / "manifest.json")

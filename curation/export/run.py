"""Export a namespace's curated rows as training files plus a manifest.

Rows stream from a server-side cursor; each becomes an example (short
system prompt, conversation, curated answer), is validated and counted, and
goes to train or validation by its prompt's hash. Files are written under
temporary names and renamed, so a crash never leaves half a file; the
dataset and its exact row versions are recorded in the same transaction.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from curation.db import export as db
from curation.db.connect import Connection
from curation.errors import InvalidInput
from curation.export import examples, models, split, tokens, validate

MIN_EXAMPLES = 10  # OpenAI refuses fewer
WARN_EXAMPLES = 50  # fewer rarely helps


@dataclass(frozen=True)
class ExportRequest:
    namespace: str
    out_dir: Path
    base_model: str
    system_prompt: str | None
    validation_fraction: float = 0.1
    format: str = "chat"
    filters: db.Filters = field(default_factory=db.Filters)
    epochs: int | None = None
    models_file: Path | None = None
    workers: int | None = None  # processes for large exports (None: up to 4, one per CPU)


@dataclass
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

    def add(self, line: bytes, row_id: int, version: int, n_tokens: int) -> None:
        self.file.write(line)
        self.sha.update(line)
        self.examples += 1
        self.tokens += n_tokens
        self.ids.append(row_id)
        self.versions.append(version)
        self.counts.append(n_tokens)


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
    skipped: list[dict[str, Any]] = []
    seen = longest = 0
    try:
        for outcome in _outcomes(db.iter_rows(conn, req.namespace, req.filters), req, info):
            seen += 1
            if on_row and seen % 1000 == 0:
                on_row(1000)
            if outcome.line is None:
                skipped.append({"id": outcome.row_id, "reason": outcome.reason})
                continue
            longest = max(longest, outcome.longest)
            target = valid if outcome.validation else train
            target.add(outcome.line, outcome.row_id, outcome.version, outcome.tokens)
        if on_row:
            on_row(seen % 1000)
    except BaseException:
        for s in (train, valid):
            s.file.close()
            s.tmp.unlink(missing_ok=True)
        raise
    manifest = _manifest(req, info, train, valid, skipped, seen, longest)
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


@dataclass(frozen=True)
class Outcome:
    """One row's fate: a JSONL line for a split, or the reason it was skipped."""

    row_id: int
    version: int
    line: bytes | None
    tokens: int = 0
    validation: bool = False
    reason: str = ""
    longest: int = 0  # its longest sequence: a preference pair has two


def process(row: tuple[Any, ...], req: ExportRequest, info: models.ModelInfo) -> Outcome:
    """Build, validate and count one row's example. Pure but for the tokenizer's tables."""
    try:
        source, example = _example(row, req)
        n = tokens.count(example, info)
        validate.check_length(n.longest, info.max_example_tokens, info.name)
    except (examples.Skip, validate.Invalid, ValueError, KeyError, TypeError) as exc:
        return Outcome(row[0], row[1], None, reason=str(exc))
    validation = split.is_validation(source.user_prompt, req.validation_fraction)
    return Outcome(
        source.id,
        source.version,
        orjson.dumps(example) + b"\n",
        n.total,
        validation,
        longest=n.longest,
    )


def process_chunk(
    rows: list[tuple[Any, ...]], req: ExportRequest, info: models.ModelInfo
) -> list[Outcome]:
    return [process(row, req, info) for row in rows]


INLINE_ROWS = 5000  # smaller exports never pay for starting worker processes
CHUNK_ROWS = 1000


def _outcomes(
    rows: Iterator[tuple[Any, ...]], req: ExportRequest, info: models.ModelInfo
) -> Iterator[Outcome]:
    """Every row's outcome, in row order. Past INLINE_ROWS the work spreads over
    worker processes; at most two chunks per worker are in flight, so memory
    stays flat, and results are taken in order, so files are deterministic."""
    workers = req.workers if req.workers is not None else min(4, os.cpu_count() or 1)
    for _ in range(INLINE_ROWS if workers > 1 else -1):
        row = next(rows, None)
        if row is None:
            return
        yield process(row, req, info)
    if workers <= 1:
        yield from (process(row, req, info) for row in rows)
        return
    # spawn, not fork: a forked child could close the parent's PostgreSQL socket at exit
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[list[Outcome]]] = deque()
        while True:
            chunk = list(itertools.islice(rows, CHUNK_ROWS))
            if chunk:
                pending.append(pool.submit(process_chunk, chunk, req, info))
            if pending and (len(pending) >= 2 * workers or not chunk):
                yield from pending.popleft().result()
            elif not chunk:
                return


def _example(row: tuple[Any, ...], req: ExportRequest) -> tuple[examples.SourceRow, dict[str, Any]]:
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
        return source, pair
    example = examples.chat_example(source, req.system_prompt)
    validate.check_chat(example)
    return source, example


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
    }


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


def _lineage(*splits: _Split) -> Iterator[tuple[int, int, str, int]]:
    for s in splits:
        for i in range(s.examples):
            yield s.ids[i], s.versions[i], s.name, s.counts[i]


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

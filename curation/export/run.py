"""Export a namespace's curated rows as training files plus a manifest.

Rows stream from a binary COPY, in chunks of raw rows that worker processes
parse and turn into examples (``chunks.py``); each goes to train or validation
by its prompt's hash, in row order, so the files are the same however many
workers. Files are written under temporary names and renamed, so a crash never
leaves half a file; the dataset and its exact row versions are recorded in the
same transaction.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from curation.db import export as db
from curation.db import flags as db_flags
from curation.db.connect import Connection
from curation.errors import PII_REFUSED, InvalidInput
from curation.export import models, pii, tokens
from curation.export.chunks import Part, outcomes
from curation.export.chunks import process_chunk as process_chunk  # doctor/data.py checks rows so

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

    def add(self, part: Part) -> None:
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
        for chunk in outcomes(rows, req, info):
            seen += chunk.rows
            if on_row:
                on_row(chunk.rows)
            skipped += ({"id": row_id, "reason": reason} for row_id, reason in chunk.skipped)
            longest = max(longest, chunk.longest)
            train.add(chunk.train)
            valid.add(chunk.validation)
            found.merge(chunk.pii)
        if req.pii == "refuse" and found.row_count:
            raise InvalidInput(found.refusal(), exit_code=PII_REFUSED)
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


def _flagged(conn: Connection, req: ExportRequest) -> list[dict[str, Any]]:
    """Included rows whose flags no curator accepted: skipped, saying which flags."""
    return [
        {"id": row_id, "reason": f"flagged: {', '.join(flags)}"}
        for row_id, flags in db_flags.export_flagged(conn, req.namespace, req.filters)
    ]


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

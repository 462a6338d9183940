"""The nightly job: export, and submit only when the data changed.

Safe under cron: a PostgreSQL advisory lock per namespace keeps two runs
apart (the second exits with code 13), and a dataset whose sha256, base model
and method equal those of the last job submitted to the same backend submits
nothing (exit 10). A namespace without a training system prompt is refused
(exit 2) unless the caller says to train without one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from curation.db import jobs
from curation.db.connect import Connection
from curation.db.jobs import Job
from curation.errors import Busy, InvalidInput
from curation.export.run import ExportRequest, ExportResult, export
from curation.jobs import finetune
from curation.jobs.backends import Backend


@dataclass(frozen=True)
class Outcome:
    kind: str  # submitted | nothing_new
    job: Job | None
    export: ExportResult
    previous: Job | None = None


def export_into(conn: Connection, request: ExportRequest, exports_dir: Path) -> ExportResult:
    """Export into ``exports_dir/<namespace>/<sha256[:16]>``: one folder per distinct dataset.

    The folder outlives the command (a local worker trains from it), and a
    second export of the same data replaces its files one atomic rename at a
    time, so a job reading them never sees a missing or half-written file.
    """
    base = exports_dir / request.namespace
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=base))
    try:
        with conn.transaction():
            result = export(conn, replace(request, out_dir=scratch))
        final = base / result.sha256[:16]
        final.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, final / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    validation = final / result.validation_path.name if result.validation_path else None
    return replace(result, train_path=final / result.train_path.name, validation_path=validation)


def retrain(
    conn: Connection,
    backend: Backend,
    request: ExportRequest,
    opts: finetune.SubmitOptions,
    exports_dir: Path,
    *,
    without_prompt: bool = False,
) -> Outcome:
    """``without_prompt``: train on examples without a system message, knowingly."""
    check_prompt(request, without_prompt)
    if not jobs.try_lock(conn, request.namespace):
        raise Busy(f"another retrain of {request.namespace} is running; this one did nothing")
    result = export_into(conn, request, exports_dir)
    last = jobs.last_submitted(conn, request.namespace, backend.name)
    if (
        last is not None
        and last.dataset_sha256 == result.sha256
        and last.base_model == result.manifest["base_model"]
        and last.method == opts.method
    ):
        return Outcome("nothing_new", None, result, last)
    job = finetune.submit(conn, backend, result, opts)
    return Outcome("submitted", job, result, last)


def check_prompt(request: ExportRequest, without_prompt: bool) -> None:
    """A nightly job must not quietly train a model for calls without the short prompt:
    with no training prompt it refuses unless told ``without_prompt``."""
    if request.system_prompt is None and not without_prompt:
        ns = request.namespace
        raise InvalidInput(
            f"no training system prompt for {ns}: its examples would carry no system message; "
            f"set one: curation ns set {ns} --system-prompt '...' (a start: curation ns "
            f"suggest-prompt {ns}), or pass --no-system-prompt to train without one"
        )

"""Doctor's spool check: the proxy can write its spool, and the recorder keeps up with it."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from curation.config import Settings
from curation.db import doctor as db
from curation.db.connect import Connection
from curation.doctor.check import Check, fail, ok, warn
from curation.proxy import spool


def spool_dir(directory: Path, settings: Settings, conn: Connection | None) -> Check:
    """Writable, and how much of it is not in PostgreSQL yet."""
    name = "spool"
    problem = not_writable(directory)
    if problem:
        return fail(name, f"{problem}; fix that, or set CURATION_SPOOL_DIR to a writable folder")
    if not directory.exists():
        return ok(name, f"{directory} does not exist yet; the proxy creates it (it can)")
    sizes = spool.segment_sizes(directory)
    if not sizes:
        return ok(name, f"{directory} is writable and holds no captures")
    checkpoint = None
    if conn is not None:
        with db.answering("the spool's checkpoint"):
            checkpoint = (
                db.spool_checkpoint(conn, spool_id) if (spool_id := read_id(directory)) else None
            )
    backlog = spool.bytes_after(sizes, spool.Position(*checkpoint) if checkpoint else None)
    rejected = size_of(directory / "rejected.jsonl")
    notes = (
        [
            f"{rejected} bytes of captures set aside in {directory / 'rejected.jsonl'} (README: Reliability)"
        ]
        if rejected
        else []
    )
    idle = time.time() - newest_change(directory, sizes)
    if backlog and idle > settings.recorder_stall_seconds:
        notes.insert(
            0,
            f"{backlog} bytes of captures are not in PostgreSQL and nothing was added for "
            f"{idle:.0f} s: start a proxy on it to replay them (curation proxy --spool-dir "
            f"{directory}); if one runs, see its /readyz",
        )
    elif backlog > settings.spool_max_bytes // 2:
        notes.insert(
            0,
            f"{backlog} bytes waiting, over half its cap: is PostgreSQL reachable from the proxy?",
        )
    if notes:
        return warn(name, f"{directory}: {'; '.join(notes)}")
    return ok(name, f"{directory} is writable; {backlog} bytes waiting for the recorder")


def not_writable(directory: Path) -> str | None:
    """Why the proxy could not write its spool in ``directory``; None if it could."""
    target = directory
    while not target.exists() and target.parent != target:
        target = target.parent  # the proxy makes the missing folders
    if not target.is_dir():
        return f"spool directory {directory}: {target} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
            pass
    except OSError as exc:
        return f"spool directory {directory}: cannot write in {target} ({exc.strerror or exc})"
    return None


def read_id(directory: Path) -> str | None:
    try:
        return str(uuid.UUID((directory / "id").read_text().strip()))
    except (OSError, ValueError):
        return None


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def newest_change(directory: Path, sizes: dict[int, int]) -> float:
    times = [0.0]
    for segment in sizes:
        try:
            times.append(os.stat(directory / f"{segment:012d}{spool.SUFFIX}").st_mtime)
        except OSError:
            continue
    return max(times)

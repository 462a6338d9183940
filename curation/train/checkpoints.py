"""Where a job's files live, and which checkpoint a restarted job resumes from. Pure.

Hugging Face's Trainer writes ``checkpoint-<step>/`` non-atomically and its
``trainer_state.json`` last, so a worker killed mid-save leaves a newest
directory without a readable state. ``last_complete`` skips it; keeping two
checkpoints (``save_total_limit=2``) leaves the one before to resume from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class JobDirs:
    """``<data_dir>/train/job-<id>/``: checkpoints, the adapter, the merged model, the log."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path, job_id: int) -> JobDirs:
        return cls(data_dir / "train" / f"job-{job_id}")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def log(self) -> Path:
        return self.root / "worker.log"


def step_of(path: Path) -> int:
    found = _CHECKPOINT.match(path.name)
    return int(found.group(1)) if found else 0


def last_complete(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose trainer state reads back, or None."""
    if not checkpoints.is_dir():
        return None
    candidates = [p for p in checkpoints.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    for path in sorted(candidates, key=step_of, reverse=True):
        try:
            json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        return path
    return None

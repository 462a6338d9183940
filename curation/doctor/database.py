"""Doctor's database checks: reachable, at the head revision, citext, the curator's grants."""

from __future__ import annotations

from curation.config import Settings, mask_url
from curation.db import connect, migrate
from curation.db import doctor as db
from curation.db.connect import Connection
from curation.doctor.check import SHOWN, Check, fail, listed, ok, warn
from curation.errors import CurationError


def connect_to(settings: Settings) -> tuple[Check, Connection | None]:
    """Reach the database and compare its schema with this release's head revision."""
    try:
        url = connect.database_url(settings)
        conn = connect.open_connection(url, autocommit=True)
    except CurationError as exc:
        return fail("database", str(exc)), None
    where = mask_url(url) if settings.database_url else f"embedded, in {settings.data_dir / 'pg'}"
    try:
        with db.answering("the schema"):
            have = db.revision(conn)
    except CurationError as exc:
        return fail("database", f"reachable ({where}), but {exc}"), conn
    head = migrate.head()
    if have == head:
        return ok("database", f"reachable ({where}), schema at the head revision {head}"), conn
    behind = f"reachable ({where}), schema at {have or 'none'}, this curation needs {head}"
    if settings.database_url is None:
        return warn(
            "database", f"{behind}; the next command migrates it (or: curation db upgrade)"
        ), conn
    return fail("database", f"{behind}; run: curation db upgrade"), conn


def citext(conn: Connection) -> Check:
    installed, available = db.citext(conn)
    if installed:
        return ok("citext", f"the citext extension {installed} is installed")
    if available:
        return fail("citext", "citext is available but not installed: run: curation db upgrade")
    return fail(
        "citext",
        "the server has no citext extension: install PostgreSQL's contrib package "
        "(e.g. apt install postgresql-contrib) or use a server that ships it",
    )


def roles(conn: Connection) -> Check:
    if not db.curator_role_exists(conn):
        return fail(
            "roles",
            "the role curation_curator is missing: as a login with CREATEROLE, in psql: CREATE ROLE "
            "curation_curator NOLOGIN; SELECT curation_grant_curator(inhrelid::regclass) FROM "
            "pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass;",
        )
    gaps = db.grant_gaps(conn)
    if not gaps:
        return ok(
            "roles",
            "curation_curator reads every namespace table and changes only curation columns",
        )
    described = [
        f"{g.table} ({', '.join([*g.missing, *(f'extra {e}' for e in g.extra)])})" for g in gaps
    ]
    return fail(
        "roles",
        f"curation_curator's grants differ from the migrations' on {listed(described)}; as the "
        f"tables' owner, in psql: {' '.join(grant_fix(g.table) for g in gaps[:SHOWN])}",
    )


def grant_fix(table: str) -> str:
    if table.endswith("_openai_chat_completion"):
        return f"REVOKE ALL ON {table} FROM curation_curator; SELECT curation_grant_curator('{table}');"
    return f"GRANT SELECT ON {table} TO curation_curator;"

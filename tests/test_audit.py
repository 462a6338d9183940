"""The audit trail against a curator in psql: nothing a login can SET forges or skips it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from curation.capture.row import Row
from curation.db import migrate
from tests import pg
from tests.factories import add_row, captured, write_batches
from tests.harness import query

Conn = psycopg.Connection[dict[str, Any]]
TABLE = "locations_openai_chat_completion"


@pytest.fixture
def curator(pg_server: str, db_url: str) -> Iterator[str]:
    """A real login granted only curation_curator (roles are cluster-wide: a unique name)."""
    name = f"curator_{uuid.uuid4().hex[:10]}"
    with pg.admin(pg_server) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE curation_curator")
    yield name
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f"DROP OWNED BY {name}")
    with pg.admin(pg_server) as c:
        c.execute(f"DROP ROLE {name}")


def as_user(db_url: str, user: str) -> str:
    return make_conninfo(**{**conninfo_to_dict(db_url), "user": user})  # type: ignore[arg-type]


def login(db_url: str, user: str) -> Conn:
    return psycopg.connect(as_user(db_url, user), autocommit=True, row_factory=dict_row)


def audit(db_url: str, row: int) -> list[dict[str, Any]]:
    return query(
        db_url,
        "SELECT column_name, new_value, changed_by, login FROM curation_audit"
        " WHERE row_id = %s ORDER BY id",
        [row],
    )


def test_a_claimed_curator_name_keeps_the_real_login(db_url: str, conn: Conn, curator: str) -> None:
    row = add_row(conn, "locations", "Paris", included=False)
    with login(db_url, curator) as c:
        c.execute("SET curation.curator = 'someone_else'")
        c.execute(f"UPDATE {TABLE} SET excluded = now() WHERE id = %s", [row])
    [entry] = audit(db_url, row)
    assert entry["column_name"] == "excluded"
    assert (entry["changed_by"], entry["login"]) == ("someone_else", curator)


def test_claiming_to_be_the_proxy_does_not_skip_the_audit(
    db_url: str, conn: Conn, curator: str
) -> None:
    row = add_row(conn, "locations", "Paris", included=False, tags={"team": "a"})
    with login(db_url, curator) as c:
        c.execute("SET curation.source = 'proxy'")
        c.execute(f"""UPDATE {TABLE} SET tags = '{{"hidden": "change"}}' WHERE id = %s""", [row])
        with c.transaction():
            c.execute("SELECT set_config('curation.source', 'proxy', true)")
            c.execute(f"""UPDATE {TABLE} SET tags = '{{"second": "try"}}' WHERE id = %s""", [row])
    # the owner's own hand edit is curation too, whatever it claims
    conn.execute("SET curation.source = 'proxy'")
    conn.execute(f"""UPDATE {TABLE} SET tags = '{{"owner": "edit"}}' WHERE id = %s""", [row])
    assert [
        (a["column_name"], json.loads(a["new_value"]), a["login"]) for a in audit(db_url, row)
    ] == [
        ("tags", {"hidden": "change"}, curator),
        ("tags", {"second": "try"}, curator),
        ("tags", {"owner": "edit"}, "postgres"),
    ]


async def record(db_url: str, *rows: Row) -> None:
    await write_batches(db_url, [list(rows)])


def test_the_proxys_repeat_captures_merge_tags_without_audit(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    asyncio.run(record(db_url, captured("Paris", {"team": "a"})))
    asyncio.run(record(db_url, captured("paris", {"src": "web"}), captured("PARIS", {"k": "v"})))
    [row] = conn.execute(f"SELECT id, tags, times_seen FROM {TABLE}").fetchall()
    assert row["tags"] == {"team": "a", "src": "web", "k": "v"} and row["times_seen"] == 3
    assert audit(db_url, row["id"]) == []


def test_reviewer_stamps_come_from_the_trigger(db_url: str, conn: Conn, curator: str) -> None:
    row = add_row(conn, "locations", "Paris", included=False)
    forged = f"UPDATE {TABLE} SET reviewed_by = 'carol', reviewed_at = '2000-01-01' WHERE id = %s"
    with login(db_url, curator) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(forged, [row])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(
                f"UPDATE {TABLE} SET included = now(), reviewed_by = 'carol' WHERE id = %s", [row]
            )
        c.execute("SET curation.curator = 'ana'")
        c.execute(f"UPDATE {TABLE} SET included = now() WHERE id = %s", [row])
    stamp = "SELECT reviewed_by, reviewed_at > now() - interval '1 minute' AS fresh FROM {} WHERE id = %s"
    assert conn.execute(stamp.format(TABLE), [row]).fetchone() == {
        "reviewed_by": "ana",
        "fresh": True,
    }
    # even a login that may write the columns cannot set them: the trigger keeps the stamp
    conn.execute(forged, [row])
    assert conn.execute(stamp.format(TABLE), [row]).fetchone() == {
        "reviewed_by": "ana",
        "fresh": True,
    }
    conn.execute(
        f"UPDATE {TABLE} SET excluded = now(), reviewed_by = 'carol', reviewed_at = '2000-01-01'"
        " WHERE id = %s",
        [row],
    )
    assert conn.execute(stamp.format(TABLE), [row]).fetchone() == {
        "reviewed_by": "postgres",
        "fresh": True,
    }
    assert [(a["column_name"], a["changed_by"], a["login"]) for a in audit(db_url, row)] == [
        ("included", "ana", curator),
        ("excluded", "postgres", "postgres"),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        f"TRUNCATE {TABLE}",
        "TRUNCATE openai_chat_completion",
        "TRUNCATE namespace CASCADE",
        "TRUNCATE later_openai_chat_completion",
    ],
)
def test_truncate_is_refused(db_url: str, conn: Conn, statement: str) -> None:
    """TRUNCATE would erase rows without a trace: refused even for the owner; DELETE is audited."""
    add_row(conn, "locations", "Paris")
    add_row(conn, "later", "Lyon")  # a namespace made after the migration
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="curation_audit"):
        conn.execute(statement)
    assert conn.execute("SELECT count(*) AS n FROM openai_chat_completion").fetchone() == {"n": 2}


def test_a_curator_cannot_truncate(db_url: str, conn: Conn, curator: str) -> None:
    add_row(conn, "locations", "Paris")
    with login(db_url, curator) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(f"TRUNCATE {TABLE}")


def test_only_the_trigger_writes_the_login(db_url: str, curator: str) -> None:
    with login(db_url, curator) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(
            "INSERT INTO curation_audit (namespace, row_id, column_name, changed_by, login)"
            " VALUES ('x', 1, 'y', 'z', 'postgres')"
        )


@pytest.fixture
def owner_member(pg_server: str) -> Iterator[str]:
    """A plain login (no superuser) with the privileges of the tables' owner, as a proxy runs."""
    name = f"proxy_{uuid.uuid4().hex[:10]}"
    with pg.admin(pg_server) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE postgres")
    yield name
    with pg.admin(pg_server) as c:
        c.execute(f"DROP ROLE {name}")


def test_a_proxy_login_needs_no_superuser_for_the_exemption(
    db_url: str, conn: Conn, owner_member: str
) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    url = as_user(db_url, owner_member)
    asyncio.run(record(url, captured("Paris", {"team": "a"})))
    asyncio.run(record(url, captured("Paris", {"src": "web"})))
    [row] = conn.execute(f"SELECT id, tags FROM {TABLE}").fetchall()
    assert row["tags"] == {"team": "a", "src": "web"} and audit(db_url, row["id"]) == []


SNAPSHOT = """
SELECT 'function ' || p.proname AS what, pg_get_functiondef(p.oid) AS def
FROM pg_proc p WHERE p.proname LIKE 'curation%'
UNION ALL
SELECT 'trigger ' || t.tgrelid::regclass || ' ' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t WHERE NOT t.tgisinternal
UNION ALL
SELECT 'grant ' || table_name || '.' || column_name, privilege_type
FROM information_schema.column_privileges WHERE grantee = 'curation_curator'
UNION ALL
SELECT 'column ' || attrelid::regclass || '.' || attname, col_description(attrelid, attnum)
FROM pg_attribute WHERE attrelid = 'curation_audit'::regclass AND attnum > 0 AND NOT attisdropped
UNION ALL
SELECT 'constraint ' || conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid = 'curation_audit'::regclass
ORDER BY 1, 2
"""


def snapshot(url: str) -> list[dict[str, Any]]:
    return query(url, SNAPSHOT)


def test_downgrade_restores_0003_exactly(pg_server: str, empty_db_url: str) -> None:
    """Up to 0004 and back must equal never having left 0003, partitions made meanwhile included."""
    migrate.upgrade(empty_db_url, "0003")
    namespace(empty_db_url, "before")
    migrate.upgrade(empty_db_url, "0004")
    namespace(empty_db_url, "during")
    migrate.downgrade(empty_db_url, "0003")
    namespace(empty_db_url, "after")
    with pg.fresh_database(pg_server, None) as stayed:
        migrate.upgrade(stayed, "0003")
        for name in ("before", "during", "after"):
            namespace(stayed, name)
        assert snapshot(empty_db_url) == snapshot(stayed)


def namespace(url: str, name: str) -> None:
    query(url, "SELECT curation_create_namespace(%s)", [name])

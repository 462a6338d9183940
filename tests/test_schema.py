"""The schema as a curator sees it in psql, and migrations on real data."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from psycopg.rows import dict_row

from curation.db import migrate, namespaces
from curation.db.connect import connection
from curation.errors import InvalidInput
from tests import pg


def make_namespace(url: str, name: str = "locations") -> None:
    with connection(url) as conn:
        namespaces.create(conn, name, training_system_prompt="Find locations.")


def test_namespace_table_shape_in_psql(db_url: str) -> None:
    make_namespace(db_url)
    out = subprocess.run(
        [pg.psql_binary(), db_url, "-c", r"\d locations_openai_chat_completion"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert "citext" in lines["user_prompt"] and "not null" in lines["user_prompt"]
    assert lines["response"].split("|")[1].strip() == "json"
    assert "not null" in lines["response"]
    assert lines["included"].split("|")[1].strip() == "timestamp with time zone"
    assert "not null" not in lines["included"]
    assert "UNIQUE CONSTRAINT, btree (namespace, user_prompt_key)" in out
    assert (
        "generated always as (md5(lower(user_prompt::text))::uuid) stored"
        in lines["user_prompt_key"]
    )
    assert "PRIMARY KEY, btree (namespace, id)" in out
    assert "Partition of: openai_chat_completion FOR VALUES IN ('locations')" in out


def test_comments_explain_partition_columns(conn: psycopg.Connection[dict[str, object]]) -> None:
    conn.execute("SELECT curation_create_namespace('geo')")
    row = conn.execute(
        "SELECT col_description(attrelid, attnum) AS c, obj_description(attrelid) AS t"
        " FROM pg_attribute WHERE attrelid = 'geo_openai_chat_completion'::regclass"
        " AND attname = 'included'"
    ).fetchone()
    assert row is not None
    assert "included" in str(row["c"]) and "now()" in str(row["c"])
    assert "namespace geo" in str(row["t"])


def test_user_prompt_unique_case_insensitively(conn: psycopg.Connection[dict[str, object]]) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    insert = (
        "INSERT INTO locations_openai_chat_completion (namespace, user_prompt, response)"
        " VALUES ('locations', %s, '{}')"
    )
    conn.execute(insert, ["Paris"])
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, ["PARIS"])


def test_long_prompts_are_unique_too(conn: psycopg.Connection[dict[str, object]]) -> None:
    """A btree cannot hold a 64 kB prompt; the hashed key can, with the same case rules."""
    conn.execute("SELECT curation_create_namespace('locations')")
    long = "".join(f"{i:x}Zq" for i in range(20000))
    insert = (
        "INSERT INTO locations_openai_chat_completion (namespace, user_prompt, response)"
        " VALUES ('locations', %s, '{}')"
    )
    conn.execute(insert, [long])
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, [long.upper()])


def test_direct_partition_insert_gets_an_id(conn: psycopg.Connection[dict[str, object]]) -> None:
    """PostgreSQL 15 does not apply a parent's identity to partition inserts; our sequence default is."""
    conn.execute("SELECT curation_create_namespace('a')")
    conn.execute("SELECT curation_create_namespace('b')")
    conn.execute(
        "INSERT INTO a_openai_chat_completion (namespace, user_prompt, response) VALUES ('a', 'x', '{}')"
    )
    conn.execute(
        "INSERT INTO b_openai_chat_completion (namespace, user_prompt, response) VALUES ('b', 'x', '{}')"
    )
    ids = [r["id"] for r in conn.execute("SELECT id FROM openai_chat_completion ORDER BY id")]
    assert len(set(ids)) == 2 and all(isinstance(i, int) for i in ids)


def test_version_bumps_on_correction_only(conn: psycopg.Connection[dict[str, object]]) -> None:
    conn.execute("SELECT curation_create_namespace('a')")
    conn.execute(
        "INSERT INTO a_openai_chat_completion (namespace, user_prompt, response) VALUES ('a', 'x', '{}')"
    )
    conn.execute("UPDATE a_openai_chat_completion SET included = now()")
    assert conn.execute("SELECT version FROM a_openai_chat_completion").fetchone() == {"version": 1}
    conn.execute("""UPDATE a_openai_chat_completion SET corrected_response = '{"content": "y"}'""")
    assert conn.execute("SELECT version FROM a_openai_chat_completion").fetchone() == {"version": 2}


def test_create_namespace_is_idempotent(db_url: str) -> None:
    with connection(db_url) as conn:
        assert namespaces.create(conn, "locations") is True
        assert namespaces.create(conn, "locations") is False


@pytest.mark.parametrize(
    "bad", ["Bad-Name;drop table x", "1abc", "", "a" * 41, "abc-def", "ABC", "a b"]
)
def test_bad_names_refused_before_sql(db_url: str, bad: str) -> None:
    with connection(db_url) as conn, pytest.raises(InvalidInput):
        namespaces.create(conn, bad)


def test_sql_function_refuses_bad_names_too(conn: psycopg.Connection[dict[str, object]]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT curation_create_namespace('x; drop table namespace')")
    assert conn.execute("SELECT count(*) AS n FROM namespace").fetchone() == {"n": 0}


def test_migrations_up_down_up_with_data(empty_db_url: str) -> None:
    assert migrate.upgrade(empty_db_url) == migrate.head()
    make_namespace(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO locations_openai_chat_completion (namespace, user_prompt, response)"
            " VALUES ('locations', 'Paris', '{}')"
        )
    assert migrate.downgrade(empty_db_url, "base") is None
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        left = c.execute(
            "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%'"
        ).fetchone()
        assert left == {"n": 0}
    assert migrate.upgrade(empty_db_url) == migrate.head()
    make_namespace(empty_db_url)


def test_stepwise_migrations_round_trip(empty_db_url: str) -> None:
    """Each revision's downgrade undoes it: walk up one, down one, up again."""
    revisions = [s.revision for s in reversed(list(migrate._script().walk_revisions()))]
    previous = "base"
    for rev in revisions:
        assert migrate.upgrade(empty_db_url, rev) == rev
        assert (migrate.downgrade(empty_db_url, previous) or "base") == previous
        assert migrate.upgrade(empty_db_url, rev) == rev
        previous = rev


def test_psql_snippet_creates_a_namespace(db_url: str) -> None:
    snippet = pg.ROOT / "sql" / "create_namespace.sql"
    for _ in range(2):  # idempotent
        subprocess.run(
            [
                pg.psql_binary(),
                db_url,
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "name=locations",
                "-v",
                "prompt=Find locations.",
                "-f",
                str(snippet),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    with connection(db_url) as conn:
        found = namespaces.get(conn, "locations")
    assert found.training_system_prompt == "Find locations."


def test_triggers_work_after_each_downgrade(empty_db_url: str) -> None:
    """A downgrade must leave working triggers: update a row after each step down."""
    revisions = [s.revision for s in migrate._script().walk_revisions()]  # newest first
    migrate.upgrade(empty_db_url)
    make_namespace(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO locations_openai_chat_completion (namespace, user_prompt, response) VALUES ('locations', 'x', '{}')"
        )
    for target in revisions[1:]:
        migrate.downgrade(empty_db_url, target)
        with psycopg.connect(empty_db_url, autocommit=True) as c:
            c.execute(
                "UPDATE locations_openai_chat_completion SET included = now(), note = %s", [target]
            )


def test_partitions_made_before_a_revision_get_its_comments_and_grants(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0002")
    make_namespace(empty_db_url)
    migrate.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        row = c.execute(
            "SELECT col_description(attrelid, attnum) AS c FROM pg_attribute"
            " WHERE attrelid = 'locations_openai_chat_completion'::regclass AND attname = 'rewritten'"
        ).fetchone()
        granted = c.execute(
            "SELECT has_column_privilege('curation_curator', 'locations_openai_chat_completion',"
            " 'proposed_response', 'UPDATE') AS ok"
        ).fetchone()
    assert row is not None and "fine-tuned model" in str(row["c"])
    assert granted == {"ok": True}

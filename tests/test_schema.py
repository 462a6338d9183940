"""The schema as a curator sees it in psql, and migrations on real data."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

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
    previous = "base"
    for rev in migrate.revisions():
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


Conn = psycopg.Connection[dict[str, object]]
TABLE = "locations_openai_chat_completion"


def new_row(c: Conn, prompt: str) -> int:
    row = c.execute(
        f"INSERT INTO {TABLE} (namespace, user_prompt, response) VALUES ('locations', %s, '{{}}')"
        " RETURNING id",
        [prompt],
    ).fetchone()
    assert row is not None
    return int(str(row["id"]))


def one(c: Conn, sql: str, params: list[object]) -> dict[str, object]:
    row = c.execute(sql, params).fetchone()
    assert row is not None
    return row


def audited(c: Conn, row: int, column: str) -> list[dict[str, object]]:
    return c.execute(
        "SELECT * FROM curation_audit WHERE row_id = %s AND column_name = %s ORDER BY id",
        [row, column],
    ).fetchall()


def bump_version_fires(c: Conn, level: str) -> None:
    row = new_row(c, f"{level} version")
    c.execute(
        f'UPDATE {TABLE} SET corrected_response = \'{{"content": "y"}}\' WHERE id = %s', [row]
    )
    assert one(c, f"SELECT version FROM {TABLE} WHERE id = %s", [row])["version"] == 2


def review_is_stamped_and_audited(c: Conn, level: str) -> None:
    row, gone = new_row(c, f"{level} review"), new_row(c, f"{level} deleted")
    c.execute("SET curation.curator = 'ana'")
    c.execute(f"UPDATE {TABLE} SET included = now() WHERE id = %s", [row])
    stamped = one(c, f"SELECT reviewed_by, reviewed_at FROM {TABLE} WHERE id = %s", [row])
    assert stamped["reviewed_by"] == "ana" and stamped["reviewed_at"] is not None
    [entry] = audited(c, row, "included")
    assert entry["changed_by"] == "ana" and entry["old_value"] is None
    c.execute(f"DELETE FROM {TABLE} WHERE id = %s", [gone])
    [deleted] = audited(c, gone, "row")
    assert deleted["old_value"] == f"{level} deleted" and deleted["changed_by"] == "ana"
    c.execute("RESET curation.curator")


def proposals_are_audited(c: Conn, level: str) -> None:
    row = new_row(c, f"{level} proposal")
    c.execute(f'UPDATE {TABLE} SET proposed_response = \'{{"content": "p"}}\' WHERE id = %s', [row])
    [entry] = audited(c, row, "proposed_response")
    assert entry["new_value"] == '{"content": "p"}'


def audit_is_tamper_proof(c: Conn, level: str) -> None:
    row = new_row(c, f"{level} integrity")
    login = one(c, "SELECT session_user AS u", [])["u"]
    c.execute(f"UPDATE {TABLE} SET note = 'n', reviewed_by = 'mallory' WHERE id = %s", [row])
    assert [e["login"] for e in audited(c, row, "note")] == [login]
    c.execute(f"UPDATE {TABLE} SET reviewed_by = 'mallory' WHERE id = %s", [row])
    assert one(c, f"SELECT reviewed_by FROM {TABLE} WHERE id = %s", [row])["reviewed_by"] == login
    for table in (TABLE, "openai_chat_completion"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="TRUNCATE"):
            c.execute(f"TRUNCATE {table}")


def rows_are_counted(c: Conn, level: str) -> None:
    row, gone = new_row(c, f"{level} counted"), new_row(c, f"{level} uncounted")
    c.execute(f"UPDATE {TABLE} SET included = now(), times_seen = 3 WHERE id = %s", [row])
    c.execute(f"DELETE FROM {TABLE} WHERE id = %s", [gone])
    counted = one(
        c,
        "SELECT sum(distinct_prompts) AS n, sum(calls) AS calls, sum(included) AS included"
        " FROM curation_counts WHERE namespace = 'locations'",
        [],
    )
    truth = one(
        c,
        "SELECT count(*) AS n, sum(times_seen) AS calls,"
        f" count(*) FILTER (WHERE included IS NOT NULL AND excluded IS NULL) AS included FROM {TABLE}",
        [],
    )
    assert counted == truth


def deleted_rows_forget_their_calls(c: Conn, level: str) -> None:
    row, kept = new_row(c, f"{level} forgotten"), new_row(c, f"{level} kept")
    for call, target in ((uuid.uuid4(), row), (uuid.uuid4(), kept)):
        c.execute(
            "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'locations', %s)",
            [call, target],
        )
        c.execute(
            "INSERT INTO feedback (call_id, namespace, row_id, score) VALUES (%s, 'locations', %s, 1)",
            [call, target],
        )
    c.execute(f"DELETE FROM {TABLE} WHERE id = %s", [row])
    left = c.execute(
        "SELECT r.row_id FROM recorded_call r JOIN feedback f ON f.call_id = r.id"
        " WHERE r.row_id = ANY(%s)",
        [[row, kept]],
    )
    assert [r["row_id"] for r in left] == [kept]


def deleted_rows_leave_their_cluster(c: Conn, level: str) -> None:
    row, kept = new_row(c, f"{level} clustered gone"), new_row(c, f"{level} clustered kept")
    cluster = one(
        c, "INSERT INTO coverage_cluster (namespace) VALUES ('locations') RETURNING id", []
    )
    for target in (row, kept):
        c.execute(
            "INSERT INTO coverage_row (row_id, namespace, cluster_id, signature)"
            " VALUES (%s, 'locations', %s, '\\x00')",
            [target, cluster["id"]],
        )
    c.execute(f"DELETE FROM {TABLE} WHERE id = %s", [row])
    left = c.execute("SELECT row_id FROM coverage_by_row WHERE cluster_id = %s", [cluster["id"]])
    assert [r["row_id"] for r in left] == [kept]


def corrected_and_proposed_rows_are_indexed(c: Conn, level: str) -> None:
    """0010 (web page): each partition has the partial indexes of both filters."""
    found = c.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%IS NOT NULL%%'"
        " AND (indexdef LIKE '%%corrected_response%%' OR indexdef LIKE '%%proposed_response%%')",
        [TABLE],
    ).fetchall()
    assert len(found) == 2, level
    # and the search in answers, the model and tag filters (answers: where pg_trgm is)
    defs = [
        str(r["indexdef"])
        for r in c.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE])
    ]
    assert any("(model, id)" in d for d in defs), level
    assert any("gin (tags jsonb_path_ops)" in d for d in defs), level
    assert any("gin (COALESCE((corrected_response" in d for d in defs), level


def disagreements_are_viewed(c: Conn, level: str) -> None:
    """0009: a comparison the student lost shows in shadow_disagreement, with its row."""
    row, call = new_row(c, f"{level} disagreed"), uuid.uuid4()
    c.execute(
        "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'locations', %s)",
        [call, row],
    )
    c.execute(
        "INSERT INTO shadow_comparison (call_id, namespace, kind, student_model, agreed)"
        " VALUES (%s, 'locations', 'shadow', 'ft:s', false)",
        [call],
    )
    seen = c.execute("SELECT row_id FROM shadow_disagreement WHERE call_id = %s", [call])
    assert [r["row_id"] for r in seen] == [row]


def flagged_rows_are_indexed_and_acceptable(c: Conn, level: str) -> None:
    """0012: a partition indexes its flagged rows; a curator may accept flags, not set them."""
    row = new_row(c, f"{level} flagged")
    c.execute(f"UPDATE {TABLE} SET flags = '{{truncated}}' WHERE id = %s", [row])
    found = c.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%flags <>%%'",
        [TABLE],
    ).fetchall()
    assert len(found) == 1, level
    granted = one(
        c,
        "SELECT has_column_privilege('curation_curator', %s, 'flags_accepted_at', 'UPDATE') AS a,"
        " has_column_privilege('curation_curator', %s, 'flags', 'UPDATE') AS f,"
        " has_table_privilege('curation_curator', 'alembic_version', 'SELECT') AS v",
        [TABLE, TABLE],
    )
    assert granted == {"a": True, "f": False, "v": True}, level  # v: the CLI's schema check


def lineage_needs_its_dataset(c: Conn, level: str) -> None:
    """0013: a dataset_row names an existing dataset and goes with it (the foreign key's
    work, done once per statement)."""
    made = one(
        c,
        "INSERT INTO dataset (namespace, format, base_model, sha256, train_sha256,"
        " train_examples, validation_examples, train_tokens, validation_tokens, manifest)"
        " VALUES ('locations', 'chat', 'm', %s, 'x', 1, 0, 5, 0, '{}') RETURNING id",
        [level],
    )["id"]
    add = (
        "INSERT INTO dataset_row (dataset_id, namespace, row_id, row_version, split, tokens)"
        " VALUES (%s, 'locations', 1, 1, 'train', 5)"
    )
    c.execute(add, [made])
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        c.execute(add, [int(str(made)) + 1000])
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        c.execute("UPDATE dataset_row SET dataset_id = dataset_id + 1000")
    c.execute("DELETE FROM dataset WHERE id = %s", [made])
    assert one(c, "SELECT count(*) AS n FROM dataset_row", []) == {"n": 0}, level


# What each revision defines on the completions table (and so on every partition), and
# a check that it fires. A revision that adds a trigger there needs a row here.
TRIGGERS: dict[str, tuple[set[str], Callable[[Conn, str], None] | None]] = {
    "0001": ({"bump_version"}, bump_version_fires),
    "0002": ({"stamp_review", "audit_change", "audit_delete"}, review_is_stamped_and_audited),
    "0003": (set(), proposals_are_audited),  # audit_change replaced: proposals audited too
    "0004": ({"refuse_truncate"}, audit_is_tamper_proof),
    "0006": ({"count_inserts", "count_updates", "count_deletes"}, rows_are_counted),
    "0008": ({"forget_calls"}, deleted_rows_forget_their_calls),
    "0009": (set(), disagreements_are_viewed),
    "0010": (set(), corrected_and_proposed_rows_are_indexed),
    "0011": ({"forget_coverage"}, deleted_rows_leave_their_cluster),
    "0012": (set(), flagged_rows_are_indexed_and_acceptable),
    "0013": (set(), lineage_needs_its_dataset),
}


def trigger_names(c: Conn, table: str) -> set[str]:
    found = c.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [table]
    )
    return {str(r["tgname"]) for r in found}


def test_triggers_fire_after_each_downgrade(empty_db_url: str) -> None:
    """At head and after each step down, the completions table and its partitions have
    exactly the triggers of the revisions still applied, and each of them fires."""
    revisions = migrate.revisions()
    migrate.upgrade(empty_db_url)
    make_namespace(empty_db_url)
    for level in reversed(revisions):
        if level != revisions[-1]:
            assert migrate.downgrade(empty_db_url, level) == level
        applied = revisions[: revisions.index(level) + 1]
        expected = set().union(*(TRIGGERS.get(rev, (set(), None))[0] for rev in applied))
        with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
            assert trigger_names(c, "openai_chat_completion") == expected, level
            assert trigger_names(c, TABLE) == expected, level
            for rev in applied:
                fires = TRIGGERS.get(rev, (set(), None))[1]
                if fires is not None:
                    fires(c, level)


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

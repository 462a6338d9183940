"""Curator queries at scale (issue 17): every access path has an index, the running
counts stay exact whatever changes the rows, revision 0006 on a filled namespace, and
what `stats` says about unknown prices and a missing training prompt. Timings are
bench/curate.py's business; these check the plans and the numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from curation.curate import rows
from curation.db import migrate, queries
from tests import pg
from tests.cli import run, run_json
from tests.factories import add_row, captured, write_batches

Conn = psycopg.Connection[dict[str, Any]]
TABLE = "locations_openai_chat_completion"

TRUTH = """
SELECT namespace, model, count(*) AS distinct_prompts, sum(times_seen) AS calls,
       count(*) FILTER (WHERE included IS NULL AND excluded IS NULL) AS pending,
       count(*) FILTER (WHERE included IS NOT NULL AND excluded IS NULL) AS included,
       count(*) FILTER (WHERE excluded IS NOT NULL) AS excluded,
       count(*) FILTER (WHERE corrected_response IS NOT NULL) AS corrected,
       coalesce(sum(prompt_tokens::bigint * times_seen), 0) AS tokens_in,
       coalesce(sum(completion_tokens::bigint * times_seen), 0) AS tokens_out
FROM openai_chat_completion GROUP BY namespace, model ORDER BY namespace, model
"""


def counted(conn: Conn) -> list[dict[str, Any]]:
    found = conn.execute(queries.compose("stats", filters=[]), {"namespace": None}).fetchall()
    return [
        {k: (int(v) if k not in ("namespace", "model") else v) for k, v in r.items()} for r in found
    ]


def truth(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(TRUTH).fetchall()


def capture(db_url: str, *batches: list[tuple[str, str, str]]) -> None:
    """Rows through the recorder's own insert (the parent, ON CONFLICT for repeats)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        for ns in {ns for batch in batches for ns, _, _ in batch}:
            c.execute("SELECT curation_create_namespace(%s)", [ns])
    asyncio.run(
        write_batches(
            db_url,
            [
                [
                    dataclasses.replace(
                        captured(prompt, {}, namespace=ns),
                        model=model,
                        prompt_tokens=10000,
                        completion_tokens=1000,
                    )
                    for ns, prompt, model in batch
                ]
                for batch in batches
            ],
        )
    )


@pytest.fixture
def curator(pg_server: str, db_url: str) -> Iterator[str]:
    name = f"curator_{uuid.uuid4().hex[:10]}"
    with pg.admin(pg_server) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE curation_curator")
    yield name
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f"DROP OWNED BY {name}")
    with pg.admin(pg_server) as c:
        c.execute(f"DROP ROLE {name}")


def test_running_counts_follow_every_change(db_url: str, conn: Conn, curator: str) -> None:
    capture(
        db_url,
        [("locations", "Paris", "gpt-4o"), ("locations", "Lyon", "gpt-4o"), ("other", "x", "m")],
        [("locations", "PARIS", "gpt-4o"), ("locations", "Rome", "mystery"), ("other", "x", "m")],
    )
    assert counted(conn) == truth(conn) and truth(conn)  # inserts and repeats, two namespaces
    ids = {
        r["user_prompt"]: r["id"]
        for r in conn.execute(f"SELECT id, user_prompt::text FROM {TABLE}")
    }
    assert run(db_url, "include", "locations", str(ids["Paris"])).exit_code == 0
    assert run(db_url, "exclude", "locations", str(ids["Rome"])).exit_code == 0
    assert run(db_url, "include", "locations", "--search", "o", "--yes").exit_code == 0
    rows.set_correction(
        conn, "locations", ids["Lyon"], {"role": "assistant", "content": "y"}, curator="t"
    )
    assert counted(conn) == truth(conn)
    with psycopg.connect(
        make_conninfo(**{**conninfo_to_dict(db_url), "user": curator}),
        autocommit=True,  # type: ignore[arg-type]
    ) as c:  # a curator in psql: no right to write the counts, yet they follow
        c.execute(
            f"UPDATE {TABLE} SET included = NULL, excluded = NULL WHERE id = %s", [ids["Paris"]]
        )
        for forbidden in (
            "INSERT INTO curation_counts SELECT 'locations', 'm', 1, 1, 1, 0, 0, 0, 0, 0",
            "SELECT curation_recount('locations')",
            "SELECT curation_fold_counts()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(forbidden)
    conn.execute(
        "UPDATE openai_chat_completion SET completion_tokens = 70 WHERE namespace = 'other'"
    )
    with conn.transaction(force_rollback=True):  # what is rolled back is not counted
        conn.execute(f"DELETE FROM {TABLE}")
    conn.execute(
        f"UPDATE {TABLE} SET last_seen_at = now() - interval '100 days' WHERE id = %s",
        [ids["Rome"]],
    )
    assert (
        run(
            db_url, "purge", "locations", "--older-than", "90d", "--include-excluded", "--yes"
        ).exit_code
        == 0
    )
    conn.execute("SELECT curation_create_namespace('later')")
    add_row(conn, "later", "made after the migration")
    assert counted(conn) == truth(conn)
    assert conn.execute("SELECT count(*) AS n FROM curation_counts").fetchone()["n"] > 3  # type: ignore[index]
    conn.execute("SELECT curation_fold_counts()")
    assert counted(conn) == truth(conn)
    conn.execute("DELETE FROM curation_counts WHERE namespace = 'locations'")  # by hand
    assert counted(conn) != truth(conn)
    conn.execute("SELECT curation_recount('locations')")
    assert counted(conn) == truth(conn)
    assert conn.execute("SELECT count(*) AS n FROM curation_counts").fetchone()["n"] == len(
        truth(conn)
    )  # type: ignore[index]


def test_revision_0006_on_a_filled_namespace(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0005")
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        c.execute("SELECT curation_create_namespace('locations')")
        c.execute(
            f"INSERT INTO {TABLE} (namespace, user_prompt, response, model, times_seen, included)"
            " SELECT 'locations', 'prompt ' || g, '{}', 'gpt-4o', 1 + g % 7,"
            " CASE WHEN g % 3 = 0 THEN now() END FROM generate_series(1, 3000) g"
        )
    migrate.upgrade(empty_db_url, "0006")  # its own indexes (0010 adds more of the same names)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        built = c.execute(
            "SELECT count(*) AS n, bool_and(x.indisvalid) AS valid FROM pg_index x"
            " JOIN pg_inherits i ON i.inhrelid = x.indexrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            f" WHERE x.indrelid = '{TABLE}'::regclass AND p.relname ~ '_(seen|pending|included|excluded|trgm)'"
        ).fetchone()
        assert built == {"n": 7, "valid": True}  # built and attached to the parent's indexes
        assert counted(c) == truth(c)
        c.execute("SELECT curation_create_namespace('later')")
        assert prompt_statistics(c) == {1000}  # the partitions made before and after
    assert migrate.downgrade(empty_db_url, "0005") == "0005"
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        assert c.execute("SELECT to_regclass('curation_counts') AS t").fetchone() == {"t": None}
        assert prompt_statistics(c) == {-1}
        left = c.execute(
            f"SELECT count(*) AS n FROM pg_index WHERE indrelid = '{TABLE}'::regclass"
        ).fetchone()
        assert left == {"n": 2}  # the primary and the unique key
    migrate.upgrade(empty_db_url)


def prompt_statistics(c: Conn) -> set[int]:
    """The statistics target of user_prompt on the parent and every partition."""
    found = c.execute(
        "SELECT coalesce(attstattarget, -1) AS t FROM pg_attribute WHERE attname = 'user_prompt'"
        " AND attrelid IN (SELECT 'openai_chat_completion'::regclass UNION ALL"
        " SELECT inhrelid FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass)"
    )
    return {int(r["t"]) for r in found}


def test_an_interrupted_0006_is_picked_up_where_it_stopped(empty_db_url: str) -> None:
    """A build cut off leaves an invalid index behind: the next upgrade builds it again."""
    migrate.upgrade(empty_db_url, "0005")
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        c.execute("SELECT curation_create_namespace('locations')")
        c.execute(
            f"INSERT INTO {TABLE} (namespace, user_prompt, response)"
            " SELECT 'locations', 'p' || g, '{}' FROM generate_series(1, 10) g"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):  # fails half-way, as a cut would
            c.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY locations_openai_chat_completion_seen_idx"
                f" ON {TABLE} (namespace)"
            )
    migrate.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as c:
        seen = c.execute(
            "SELECT x.indisvalid, x.indisunique, i.inhparent::regclass::text AS parent"
            " FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid"
            " WHERE x.indexrelid = 'locations_openai_chat_completion_seen_idx'::regclass"
        ).fetchone()
    assert seen == {
        "indisvalid": True,
        "indisunique": False,
        "parent": "openai_chat_completion_seen_idx",
    }


def fill(conn: Conn, n: int = 3000) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    conn.execute(
        f"INSERT INTO {TABLE} (namespace, user_prompt, response, times_seen, included, excluded)"
        " SELECT 'locations', 'town number ' || g || ' near the river', '{}', 1 + g %% 13,"
        " CASE WHEN g %% 5 = 0 THEN now() END, CASE WHEN g %% 11 = 0 THEN now() END"
        " FROM generate_series(1, %s) g",
        [n],
    )
    conn.execute(f"VACUUM ANALYZE {TABLE}")


def plan(conn: Conn, query: Any, params: dict[str, Any]) -> str:
    """The plan, with the planner told to avoid scans and sorts: one still there means
    no index serves the query."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        found = conn.execute(psycopg.sql.SQL("EXPLAIN ") + query, params).fetchall()
    return "\n".join(str(r["QUERY PLAN"]) for r in found)


@pytest.mark.parametrize("state", [None, "pending", "included", "excluded"])
@pytest.mark.parametrize("sort", ["recent", "seen"])
def test_every_first_page_comes_from_an_index(conn: Conn, state: str | None, sort: str) -> None:
    fill(conn)
    found = plan(conn, *rows.list_query("locations", rows.ListFilter(state=state, sort=sort)))
    assert "Index" in found and "Sort" not in found and "Seq Scan" not in found, found
    if state is None or sort == "recent" or state == "pending":
        # the index holds exactly the rows wanted (the partition's rows are all its namespace's)
        filters = re.findall(r"Filter: (.*)", found)
        assert set(filters) <= {"(namespace = 'locations'::text)"}, found


def test_a_curators_own_query_in_psql_uses_the_indexes_too(conn: Conn) -> None:
    fill(conn)
    pending = psycopg.sql.SQL(
        f"SELECT id FROM {TABLE} WHERE included IS NULL AND excluded IS NULL"
        " ORDER BY times_seen DESC, id LIMIT 20"
    )
    found = plan(conn, pending, {})
    assert "Index" in found and "Sort" not in found and "Filter" not in found, found


def test_review_show_and_decisions_come_from_an_index(conn: Conn) -> None:
    fill(conn)
    ns = {"namespace": "locations"}
    for name, params in (
        ("next_pending", {"skip": [1, 2]}),
        ("get_row", {"id": 7}),
        ("row_states", {"ids": [7, 8]}),
        ("set_state", {"ids": [7], "state": "included", "note": None}),
    ):
        found = plan(conn, queries.for_namespace(name, "locations"), ns | params)
        assert "Index" in found and "Sort" not in found and "Seq Scan" not in found, (name, found)
    found = plan(conn, queries.for_namespace("next_pending", "locations"), ns | {"skip": []})
    used = re.search(r"Index Scan using (\w+)", found)
    assert used, found
    parent = conn.execute(
        "SELECT inhparent::regclass::text AS p FROM pg_inherits WHERE inhrelid = %s::regclass",
        [used.group(1)],
    ).fetchone()
    assert parent == {"p": "openai_chat_completion_pending_next_idx"}


def test_search_uses_the_trigram_index(conn: Conn) -> None:
    fill(conn)
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_indexscan = off")  # leaves the bitmap scans
        query, params = rows.list_query("locations", rows.ListFilter(search="number 42 "))
        found = plan(conn, query, params)
    assert "Bitmap Index Scan" in found and "Index Cond: ((user_prompt)::text ~~*" in found, found
    assert [
        r["user_prompt"]
        for r in rows.list_rows(conn, "locations", rows.ListFilter(search="NUMBER 42 N"))
    ] == ["town number 42 near the river"]


def test_purge_walks_the_ids_once_past_kept_rows(db_url: str, conn: Conn) -> None:
    kept = [add_row(conn, "locations", f"kept {i}", included=True) for i in range(3)]
    gone = [add_row(conn, "locations", f"old {i}", included=False) for i in range(5)]
    conn.execute(f"UPDATE {TABLE} SET last_seen_at = now() - interval '100 days'")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        assert rows.purge(c, "locations", "90d", curator="ops", batch=2) == len(gone)
    left = [r["id"] for r in conn.execute(f"SELECT id FROM {TABLE} ORDER BY id")]
    assert left == kept


def test_stats_prices_what_it_can_and_names_a_missing_prompt(db_url: str, conn: Conn) -> None:
    capture(
        db_url,
        [
            ("locations", "a", "gpt-4o-2024-08-06"),
            ("locations", "b", "gpt-4o-2024-08-06"),
            ("locations", "c", "acme-unknown-1"),
        ],
    )
    conn.execute("SELECT curation_create_namespace('prompted', 'Find places.')")
    [s, p] = run_json(db_url, "stats")
    assert s["namespace"] == "locations" and s["spend_usd"] == pytest.approx(
        2 * (10000 * 2.5 + 1000 * 10.0) / 1e6
    )
    assert s["unpriced_rows"] == 1 and s["unpriced_models"] == ["acme-unknown-1"]
    assert s["training_system_prompt"] is None
    assert any("no training system prompt for locations" in w for w in s["warnings"])
    assert any(
        "leaves out 1 row of models with no known price (acme-unknown-1)" in w
        for w in s["warnings"]
    )
    assert p["training_system_prompt"] == "Find places." and p["warnings"] == []
    table = run(db_url, "stats")
    assert table.exit_code == 0 and "(none)" in table.stdout and "unpriced_rows" in table.stdout
    assert "warning: no training system prompt for locations" in table.stderr
    assert "CURATION_MODELS_FILE" in table.stderr and "prompted" not in table.stderr
    assert json.loads(run(db_url, "stats", "prompted", "--json").stdout)[0]["distinct_prompts"] == 0

"""Curation in psql and in the CLI: snippets, the curator role, audit, commands."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests import pg
from tests.cli import run, run_json, spawn
from tests.factories import add_row
from tests.harness import query

Conn = psycopg.Connection[dict[str, object]]
SNIPPETS = pg.ROOT / "sql" / "curate.sql"


def snippets() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\s*$", SNIPPETS.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def psql(db_url: str, sql: str, user: str | None = None, **variables: str) -> str:
    url = db_url if user is None else make_conninfo(**{**conninfo_to_dict(db_url), "user": user})  # type: ignore[arg-type]
    args = [
        pg.psql_binary(),
        url,
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "t=locations_openai_chat_completion",
    ]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    done = subprocess.run(args, input=sql, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


def states(conn: Conn) -> dict[str, str]:
    found = conn.execute(
        "SELECT user_prompt::text AS p, CASE WHEN excluded IS NOT NULL THEN 'excluded' WHEN included IS NOT NULL"
        " THEN 'included' ELSE 'pending' END AS s FROM locations_openai_chat_completion"
    ).fetchall()
    return {str(r["p"]): str(r["s"]) for r in found}


def test_every_psql_snippet(db_url: str, conn: Conn) -> None:
    ids = {
        p: add_row(conn, "locations", p, f"answer {p}", included=False)
        for p in ("Paris", "near paris", "Lyon", "Berlin", "Rome")
    }
    s = snippets()
    assert set(s) == {
        "pending",
        "include_ids",
        "include_pattern",
        "exclude_with_reason",
        "correct",
        "undo",
        "counts",
        "history",
    }
    assert "Paris" in psql(db_url, s["pending"])
    psql(db_url, s["include_ids"], ids=str(ids["Lyon"]))
    psql(db_url, s["include_pattern"], pattern="%paris%")
    psql(db_url, s["exclude_with_reason"], ids=str(ids["Berlin"]), reason="not a location question")
    psql(db_url, s["correct"], id=str(ids["Rome"]), answer='["Rome"]')
    assert states(conn) == {
        "Paris": "included",
        "near paris": "included",
        "Lyon": "included",
        "Berlin": "excluded",
        "Rome": "included",
    }
    assert conn.execute(
        "SELECT note FROM locations_openai_chat_completion WHERE id = %s", [ids["Berlin"]]
    ).fetchone() == {"note": "not a location question"}
    counts = psql(db_url, s["counts"])
    assert re.search(r"\b0 \|\s+4 \|\s+1 \|\s+1 \|\s+5\b", counts), counts
    psql(db_url, s["undo"], ids=f"{ids['Lyon']},{ids['Rome']}")
    assert states(conn)["Lyon"] == "pending" and states(conn)["Rome"] == "pending"
    history = psql(db_url, s["history"], id=str(ids["Rome"]))
    header, *entries = [
        [c.strip() for c in line.split("|")] for line in history.splitlines() if "|" in line
    ]
    assert header[1:4] == ["changed_by", "login", "column_name"]
    assert sorted(e[3] for e in entries) == ["corrected_response"] * 2 + ["included"] * 2
    login = conn.execute("SELECT session_user AS u").fetchone()
    assert login is not None  # no curator claimed: changed_by is the login too
    assert {(e[1], e[2]) for e in entries} == {(login["u"], login["u"])}


@pytest.fixture
def curator_login(pg_server: str) -> Iterator[str]:
    name = f"curator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE curation_curator")
    yield name
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        for db in [
            r[0]
            for r in c.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'curation_test_%'"
            )
        ]:
            try:
                with psycopg.connect(pg.with_dbname(pg_server, db), autocommit=True) as d:
                    d.execute(f"DROP OWNED BY {name}")
            except psycopg.Error:
                pass
        c.execute(f"DROP ROLE {name}")


def test_curator_role_can_curate_but_not_destroy(
    db_url: str, conn: Conn, curator_login: str
) -> None:
    row = add_row(conn, "locations", "Paris", included=False)
    psql(
        db_url,
        f"UPDATE locations_openai_chat_completion SET included = now(), note = 'ok' WHERE id = {row}",
        user=curator_login,
    )
    assert states(conn) == {"Paris": "included"}
    for forbidden in (
        f"DELETE FROM locations_openai_chat_completion WHERE id = {row}",
        f"UPDATE locations_openai_chat_completion SET response = '{{}}' WHERE id = {row}",
        f"UPDATE locations_openai_chat_completion SET user_prompt = 'x' WHERE id = {row}",
        "DELETE FROM fine_tune_job",
        "INSERT INTO curation_audit (namespace, row_id, column_name, changed_by) VALUES ('x', 1, 'y', 'z')",
    ):
        with pytest.raises(RuntimeError, match="permission denied"):
            psql(db_url, forbidden, user=curator_login)
    audit = query(
        db_url,
        "SELECT column_name, changed_by FROM curation_audit WHERE row_id = %s ORDER BY id",
        [row],
    )
    assert audit == [
        {"column_name": "included", "changed_by": curator_login},
        {"column_name": "note", "changed_by": curator_login},
    ]
    # a namespace created later is curatable too
    conn.execute("SELECT curation_create_namespace('later')")
    add_row(conn, "later", "x", included=False)
    psql(db_url, "UPDATE later_openai_chat_completion SET included = now()", user=curator_login)


def test_cli_decisions_audit_and_errors(db_url: str, conn: Conn) -> None:
    a = add_row(conn, "locations", "Paris", included=False)
    b = add_row(conn, "locations", "Lyon", included=False)
    assert run(db_url, "include", "locations", str(a), "--curator", "ana").exit_code == 0
    again = run(db_url, "include", "locations", str(a), str(b))
    assert again.exit_code == 7 and f"row {a} is already included" in again.stderr
    assert states(conn)["Lyon"] == "pending"  # nothing half-applied
    assert (
        run(
            db_url, "exclude", "locations", str(b), "--reason", "duplicate", "--curator", "bo"
        ).exit_code
        == 0
    )
    missing = run(db_url, "include", "locations", "999999")
    assert missing.exit_code == 3 and "no row 999999" in missing.stderr
    assert run(db_url, "reset", "locations", str(a), "--curator", "ana").exit_code == 0
    history = run_json(db_url, "history", "locations", str(a))
    assert [(h["column_name"], h["changed_by"]) for h in history] == [
        ("included", "ana"),
        ("included", "ana"),
    ]
    shown = run_json(db_url, "show", "locations", str(b))
    assert (
        shown["state"] == "excluded"
        and shown["note"] == "duplicate"
        and shown["reviewed_by"] == "bo"
    )
    assert run(db_url, "include", "nope", "1").exit_code == 3


def test_bulk_search_asks_first(db_url: str, conn: Conn) -> None:
    for p in ("Paris", "PARIS suburbs", "Lyon"):
        add_row(conn, "locations", p, included=False)
    declined = run(db_url, "include", "locations", "--search", "paris", input="n\n")
    assert declined.exit_code == 1 and "include 2 rows of locations?" in declined.output
    assert set(states(conn).values()) == {"pending"}
    assert run(db_url, "include", "locations", "--search", "paris", "--yes").exit_code == 0
    assert states(conn) == {"Paris": "included", "PARIS suburbs": "included", "Lyon": "pending"}


def test_list_filters_and_json(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "Paris", '["Paris"]', included=True)
    add_row(conn, "locations", "Lyon", included=False)
    add_row(conn, "locations", "Rome", excluded=True, included=False)
    assert [r["user_prompt"] for r in run_json(db_url, "list", "locations", "--pending")] == [
        "Lyon"
    ]
    assert [r["answer"] for r in run_json(db_url, "list", "locations", "--included")] == [
        '["Paris"]'
    ]
    assert [r["state"] for r in run_json(db_url, "list", "locations", "--search", "ROM")] == [
        "excluded"
    ]
    table = run(db_url, "list", "locations")
    assert table.exit_code == 0 and "(3 rows)" in table.stdout


def editor_script(tmp_path: Path, *contents: str) -> str:
    """An $EDITOR that writes each given content in turn (one per opening)."""
    for i, content in enumerate(contents):
        (tmp_path / f"edit{i}").write_text(content)
    script = tmp_path / "editor.py"
    script.write_text(
        "import sys, pathlib\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "n = len(list(d.glob('opened*')))\n"
        "(d / f'opened{n}').write_text(pathlib.Path(sys.argv[1]).read_text())\n"
        "src = d / f'edit{n}'\n"
        "if src.exists(): pathlib.Path(sys.argv[1]).write_text(src.read_text())\n"
    )
    return f"{sys.executable} {script}"


def test_edit_refuses_invalid_json_then_stores(db_url: str, conn: Conn, tmp_path: Path) -> None:
    row = add_row(conn, "locations", "Pariss", '["Pariss"]', included=False)
    editor = editor_script(tmp_path, '["Paris"', '["Paris"]')
    result = run(db_url, "edit", "locations", str(row), "--curator", "ana", env={"EDITOR": editor})
    assert result.exit_code == 0, result.output
    assert "not valid JSON" in result.stderr
    assert (tmp_path / "opened1").read_text().rstrip(
        "\n"
    ) == '["Paris"'  # reopened with the curator's text
    fixed = query(
        db_url, "SELECT corrected_response, response FROM locations_openai_chat_completion"
    )[0]
    assert fixed["corrected_response"] == {"role": "assistant", "content": '["Paris"]'}
    assert (
        fixed["response"]["choices"][0]["message"]["content"] == '["Pariss"]'
    )  # the original stays


def test_edit_unchanged_and_no_editor(db_url: str, conn: Conn, tmp_path: Path) -> None:
    row = add_row(conn, "locations", "Paris", "fine", included=False)
    same = run(db_url, "edit", "locations", str(row), env={"EDITOR": editor_script(tmp_path)})
    assert same.exit_code == 0 and "unchanged" in same.stderr
    assert query(db_url, "SELECT count(*) AS n FROM curation_audit")[0]["n"] == 0
    none = run(db_url, "edit", "locations", str(row), env={"EDITOR": "", "VISUAL": ""})
    assert none.exit_code == 2 and "set EDITOR" in none.stderr


def test_stats(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "a", included=True)
    add_row(conn, "locations", "b", included=False, corrected={"role": "assistant", "content": "x"})
    conn.execute(
        "UPDATE locations_openai_chat_completion SET times_seen = 3, prompt_tokens = 1000,"
        " completion_tokens = 100, model = 'gpt-4o-2024-08-06'"
    )
    [s] = run_json(db_url, "stats", "locations")
    assert (s["calls"], s["distinct_prompts"], s["included"], s["pending"], s["corrected"]) == (
        6,
        2,
        1,
        1,
        1,
    )
    assert s["tokens_in"] == 6000 and s["new_since_last_job"] == 1
    assert s["spend_usd"] == pytest.approx((6000 * 2.5 + 600 * 10.0) / 1e6)


def test_purge(db_url: str, conn: Conn) -> None:
    old_pending = add_row(conn, "locations", "old", included=False)
    add_row(conn, "locations", "old included", included=True)
    old_excluded = add_row(conn, "locations", "old excluded", included=False, excluded=True)
    add_row(conn, "locations", "new", included=False)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET last_seen_at = now() - interval '100 days'"
        " WHERE user_prompt::text LIKE 'old%%'"
    )
    result = run(db_url, "purge", "locations", "--older-than", "90d", "--yes", "--curator", "ops")
    assert result.exit_code == 0 and "deleted 1 rows" in result.stdout
    assert set(states(conn)) == {"old included", "old excluded", "new"}
    assert (
        run(
            db_url, "purge", "locations", "--older-than", "90d", "--include-excluded", "--yes"
        ).exit_code
        == 0
    )
    assert set(states(conn)) == {"old included", "new"}
    audit = query(
        db_url,
        "SELECT row_id, changed_by FROM curation_audit WHERE column_name = 'row' ORDER BY id",
    )
    assert [a["row_id"] for a in audit] == [old_pending, old_excluded] and audit[0][
        "changed_by"
    ] == "ops"
    bad = run(db_url, "purge", "locations", "--older-than", "soon", "--yes")
    assert bad.exit_code == 2 and "90d" in bad.stderr


def review(db_url: str, curator: str = "rev", env: dict[str, str] | None = None) -> Any:
    return spawn(db_url, "review", "locations", "--curator", curator, env=env, timeout=30)


def test_review_interactively(db_url: str, conn: Conn) -> None:
    for p, seen in (("most seen", 5), ("second", 3), ("third", 2), ("fourth", 1)):
        add_row(conn, "locations", p, f"answer to {p}", included=False)
        conn.execute(
            "UPDATE locations_openai_chat_completion SET times_seen = %s WHERE user_prompt = %s",
            [seen, p],
        )
    child = review(db_url)
    child.expect(r"0/4 reviewed")
    child.expect("most seen")
    child.expect(r"\[q\]uit\? ")
    child.send("i")
    child.expect("second")
    child.expect(r"\[q\]uit\? ")
    child.send("e")
    child.expect("third")
    child.expect(r"\[q\]uit\? ")
    child.send("u")
    child.expect("row \\d+ is pending again")
    child.expect("1/4 reviewed")  # the undone exclusion no longer counts
    child.expect("second")  # undone: back in the queue, most seen first after the included one
    child.expect(r"\[q\]uit\? ")
    child.send("s")
    child.expect("third")
    child.expect(r"\[q\]uit\? ")
    child.send("q")
    child.expect(pexpect_eof())
    assert states(conn) == {
        "most seen": "included",
        "second": "pending",
        "third": "pending",
        "fourth": "pending",
    }
    assert query(db_url, "SELECT DISTINCT changed_by FROM curation_audit") == [
        {"changed_by": "rev"}
    ]


def pexpect_eof() -> Any:
    import pexpect

    return pexpect.EOF


def test_two_curators_never_see_the_same_row(db_url: str, conn: Conn) -> None:
    for p, seen in (("alpha", 3), ("beta", 2)):
        add_row(conn, "locations", p, included=False)
        conn.execute(
            "UPDATE locations_openai_chat_completion SET times_seen = %s WHERE user_prompt = %s",
            [seen, p],
        )
    first = review(db_url, "one")
    first.expect("alpha")
    first.expect(r"\[q\]uit\? ")
    second = review(db_url, "two")
    second.expect("beta")  # alpha is locked by the first curator
    second.expect(r"\[q\]uit\? ")
    second.send("i")
    second.expect("nothing left to review")
    first.send("e")
    first.expect("nothing left to review")
    assert states(conn) == {"alpha": "excluded", "beta": "included"}
    who = {
        r["row_id"]: r["changed_by"]
        for r in query(db_url, "SELECT row_id, changed_by FROM curation_audit")
    }
    assert sorted(who.values()) == ["one", "two"]


TITLE_AND_CLEAR = "look\u001b]0;title\u0007\u001b[2J here"
SHOWN = "look\\x1b]0;title\\x07\\x1b[2J here"


def test_captured_control_characters_are_shown_not_obeyed(db_url: str, conn: Conn) -> None:
    row = add_row(conn, "locations", TITLE_AND_CLEAR, "red\u001b[31m answer", included=False)
    for args in (("show", "locations", str(row)), ("list", "locations")):
        out = run(db_url, *args).stdout
        assert SHOWN in out and "red\\x1b[31m answer" in out
        assert "\x1b" not in out and "\x07" not in out
    assert run_json(db_url, "show", "locations", str(row))["user_prompt"] == TITLE_AND_CLEAR
    c1 = add_row(conn, "locations", "del\x7f csi\x9b bidi\u202e", "ok", included=False)
    raw = run(db_url, "show", "locations", str(c1), "--json").stdout  # exact data, inert text
    assert not any(ch in raw for ch in "\x7f\x9b\u202e") and "\\u009b" in raw
    assert (
        run_json(db_url, "show", "locations", str(c1))["user_prompt"]
        == "del\x7f csi\x9b bidi\u202e"
    )
    child = review(db_url)  # on a real terminal: only click's own styling may reach it
    child.logfile_read = seen = io.StringIO()
    child.expect(r"\[q\]uit\? ")
    child.send("q")
    child.expect(pexpect_eof())
    assert SHOWN in seen.getvalue()
    assert "\x1b]0;" not in seen.getvalue() and "\x07" not in seen.getvalue()


def test_stats_of_an_unknown_namespace_exits_like_list(db_url: str) -> None:
    listed, stats = run(db_url, "list", "nosuchns"), run(db_url, "stats", "nosuchns")
    assert stats.exit_code == listed.exit_code == 3
    assert "unknown namespace 'nosuchns'" in stats.stderr

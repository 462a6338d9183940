"""The foundation commands as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run, run_json


def test_create_list_show_set(db_url: str) -> None:
    result = run(
        db_url,
        "ns",
        "create",
        "locations",
        "--system-prompt",
        "Parse user input and return mentions of geographical locations.",
    )
    assert result.exit_code == 0, result.output
    assert "locations_openai_chat_completion" in result.stdout
    again = run(db_url, "ns", "create", "locations")
    assert again.exit_code == 0 and "exists already" in again.stdout
    listed = run_json(db_url, "ns", "list")
    assert [n["name"] for n in listed] == ["locations"]
    assert listed[0]["table"] == "locations_openai_chat_completion"
    assert (
        run(db_url, "ns", "set", "locations", "--base-model", "gpt-4o-mini-2024-07-18").exit_code
        == 0
    )
    shown = run_json(db_url, "ns", "show", "locations")
    assert shown["base_model"] == "gpt-4o-mini-2024-07-18"
    assert shown["training_system_prompt"].startswith("Parse user input")
    assert shown["rows"] == 0


def test_bad_name_exits_2_with_one_line_and_creates_nothing(db_url: str) -> None:
    result = run(db_url, "ns", "create", "Bad-Name;drop table x")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid namespace name" in result.stderr
    assert run_json(db_url, "ns", "list") == []


def test_unknown_namespace(db_url: str) -> None:
    result = run(db_url, "ns", "show", "nope")
    assert result.exit_code == 3
    assert "unknown namespace 'nope'" in result.stderr


def test_unreachable_database_is_one_masked_line() -> None:
    result = run("postgresql://alice:s3cret@127.0.0.1:1/prod", "ns", "list")
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "postgresql://alice:****@127.0.0.1:1/prod" in lines[0]
    assert "s3cret" not in result.output


def test_schema_behind_says_run_upgrade(empty_db_url: str) -> None:
    result = run(empty_db_url, "ns", "list")
    assert result.exit_code == 5
    assert "run: curation db upgrade" in result.stderr
    assert run(empty_db_url, "db", "current").stdout.startswith("empty (behind")
    assert run(empty_db_url, "db", "upgrade").exit_code == 0
    assert "up to date" in run(empty_db_url, "db", "current").stdout


def test_downgrade_unknown_revision(empty_db_url: str) -> None:
    result = run(empty_db_url, "db", "downgrade", "nonsense")
    assert result.exit_code == 2 and "unknown revision" in result.stderr


def test_config_masks_secrets() -> None:
    env = {
        "OPENAI_API_KEY": "sk-proj-abcdefghijklmnop1234",
        "DATABASE_URL": "postgresql://bob:hunter2@db:5432/curation",
        "CURATION_PROXY_KEYS": "client-key-aaaaaaaaaaaa,client-key-bbbbbbbbbbbb",
    }
    result = run(None, "config", "--json", env=env)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["openai_api_key"] == "****1234"
    assert data["database_url"] == "postgresql://bob:****@db:5432/curation"
    for secret in ("hunter2", "abcdefghijklmnop", "client-key-a"):
        assert secret not in result.stdout


def test_bad_env_value_is_one_line() -> None:
    result = run(None, "config", env={"CURATION_SPOOL_MAX_BYTES": "lots"})
    assert result.exit_code == 2
    assert "CURATION_SPOOL_MAX_BYTES='lots' is not valid" in result.stderr


def test_failed_migration_is_one_line_and_changes_nothing(empty_db_url: str) -> None:
    import psycopg

    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute("CREATE TABLE namespace (x int)")  # in the way of revision 0001
    result = run(empty_db_url, "db", "upgrade")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "migration failed" in result.stderr
    assert 'relation "namespace" already exists' in result.stderr
    assert run(empty_db_url, "db", "current").stdout.startswith("empty")


def test_db_psql_opens_the_configured_database(db_url: str) -> None:
    import subprocess
    import sys

    from tests.harness import ROOT

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation",
            "--database-url",
            db_url,
            "db",
            "psql",
            "-XAtc",
            "SELECT count(*) FROM namespace",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert db_url not in done.stdout + done.stderr


def test_flags_override_the_environment() -> None:
    env = {"OPENAI_BASE_URL": "https://env.example/v1", "CURATION_LOG_LEVEL": "DEBUG"}
    result = run(
        None,
        "--openai-base-url",
        "https://flag.example/v1",
        "--log-level",
        "WARNING",
        "config",
        "--json",
        env=env,
    )
    data = json.loads(result.stdout)
    assert data["openai_base_url"] == "https://flag.example/v1" and data["log_level"] == "WARNING"


def test_bad_size_flag_is_a_usage_error() -> None:
    result = run(None, "proxy", "--spool-max-bytes", "lots")
    assert result.exit_code == 2
    assert "'--spool-max-bytes': 'lots' is not valid: expected a size" in result.stderr


PASSWORD_FORMS = [
    ("postgresql://u@db/prod?password=X1secret", "postgresql://u@db/prod?password=****"),
    (
        "postgresql://u:X1secret@db/prod?sslmode=require&sslpassword=X1secret",
        "postgresql://u:****@db/prod?sslmode=require&sslpassword=****",
    ),
    ("postgresql://u@db/prod?pass%77ord=X1secret", "postgresql://u@db/prod?pass%77ord=****"),
    ("host=db password=X1secret dbname=prod", "host=db password=**** dbname=prod"),
    ("host=db password = 'X1 secret\\' x' dbname=prod", "host=db password = **** dbname=prod"),
    ("host=db sslpassword=X1secret", "host=db sslpassword=****"),
]


@pytest.mark.parametrize(("url", "masked"), PASSWORD_FORMS)
def test_config_masks_every_password_form(url: str, masked: str) -> None:
    from curation.config import mask_url

    assert mask_url(url) == masked
    shown = run(None, "config", "--json", env={"DATABASE_URL": url})
    assert json.loads(shown.stdout)["database_url"] == masked
    assert "X1" not in shown.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:1/prod?password=X1secret",
        "postgresql://u@127.0.0.1:1/prod?sslpassword=X1secret&password=X1secret",
        "host=127.0.0.1 port=1 password=X1secret",
        "host=127.0.0.1 port=1 password='X1secret'",
        "http://u:X1secret@127.0.0.1:1/prod",
    ],
)
def test_cannot_connect_masks_every_password_form(url: str) -> None:
    result = run(url, "ns", "list")
    assert result.exit_code in (2, 4)  # 2: not a PostgreSQL URL at all
    assert len(result.stderr.strip().splitlines()) == 1
    assert "X1secret" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:X1secret@db.example:5433/prod",
        "postgresql://alice@db.example:5433/prod?password=X1secret&sslmode=require",
        "host=db.example port=5433 user=alice password=X1secret dbname=prod",
    ],
)
def test_psql_gets_the_password_in_its_environment_not_its_argv(url: str) -> None:
    from psycopg import conninfo

    from curation.cli.db_cmd import psql_command

    argv, env = psql_command("/usr/bin/psql", url, ("-c", "SELECT 1"))
    assert not any("X1secret" in arg for arg in argv)
    assert env == {"PGPASSWORD": "X1secret"}
    target = conninfo.conninfo_to_dict(argv[1])
    assert (target["host"], target["port"], target["user"], target["dbname"]) == (
        "db.example",
        "5433",
        "alice",
        "prod",
    )
    assert argv[0] == "/usr/bin/psql" and argv[2:] == ["-c", "SELECT 1"]


def test_psql_running_shows_no_password_in_ps(db_url: str) -> None:
    """The real thing: psql's command line (what ps shows) against its environment."""
    import os
    import subprocess
    import sys
    import time

    from psycopg import conninfo

    from tests.harness import ROOT

    url = conninfo.make_conninfo(db_url, password="X1secret")  # trust auth: ignored
    child = subprocess.Popen(
        [sys.executable, "-m", "curation", "db", "psql", "-XAtc", "SELECT pg_sleep(3)"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc = Path(f"/proc/{child.pid}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(b"psql"):
            break
        time.sleep(0.05)  # still python, until it execs psql in the same process
    cmdline, environ = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.strip() == b""  # pg_sleep returns void
    assert cmdline.split(b"\0")[0].endswith(b"psql") and b"X1secret" not in cmdline
    assert b"PGPASSWORD=X1secret" in environ.split(b"\0")


def test_visible_escapes_control_characters_and_keeps_text() -> None:
    from curation.cli.output import cell, visible

    hostile = "a\u001b]0;title\u0007\u001b[2J\tb\nc\u202ed\x9b é中"
    assert visible(hostile) == "a\\x1b]0;title\\x07\\x1b[2J\tb\nc\\u202ed\\x9b é中"
    assert cell(hostile) == "a\\x1b]0;title\\x07\\x1b[2J b c\\u202ed\\x9b é中"
    assert visible(None) == "None" and visible(3) == "3"

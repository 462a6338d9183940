"""The foundation commands as a user types them."""

from __future__ import annotations

import json

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
    assert result.exit_code == 2 and "'lots' is not a size" in result.stderr

"""`curation doctor` against a real database, real spool files and the fake OpenAI server:
a healthy deployment passes, and each check that can fail here fails with what to do."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from curation import doctor
from curation.proxy import spool
from tests.cli import run, spawn
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import free_port

Conn = psycopg.Connection[dict[str, object]]
ORDER = [
    "database",
    "citext",
    "roles",
    "spool",
    "prompts",
    "corrections",
    "export",
    "tokenizer",
    "provider",
]


@pytest.fixture
def env(fake_openai: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-doctor",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def diagnose(
    db_url: str | None, env: dict[str, str], *args: str
) -> tuple[int, dict[str, Any], str]:
    """(exit code, {name: check}, stderr) of `curation doctor --json`."""
    done = run(db_url, "doctor", "--json", *args, env=env)
    report = json.loads(done.stdout)
    assert report["ok"] == (done.exit_code == 0)
    checks = {c["name"]: c for c in report["checks"]}
    return done.exit_code, checks, done.stderr


def healthy_rows(conn: Conn) -> None:
    for i in range(3):
        add_row(conn, "locations", f"I was born in town {i}", f'{{"locations":["town {i}"]}}')
    add_row(
        conn,
        "locations",
        "Lyon then Rome",
        '{"locations":["Lyon"]}',
        corrected={"role": "assistant", "content": '{"locations":["Lyon","Rome"]}'},
    )
    conn.execute("UPDATE namespace SET training_system_prompt = 'List the places.'")


def test_a_healthy_deployment_exits_0(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    healthy_rows(conn)
    code, checks, stderr = diagnose(db_url, env)
    assert code == 0 and stderr == "", stderr
    assert list(checks) == ORDER
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert "schema at the head revision" in checks["database"]["message"]
    assert "4 included rows in 1 namespaces build valid examples" in checks["export"]["message"]
    assert "1 corrections are written as their originals are" in checks["corrections"]["message"]
    assert any(s.path == "/v1/models" for s in fake_openai.seen)  # really asked, with the key
    text = run(db_url, "doctor", env=env)
    assert text.exit_code == 0
    assert [line.split()[:2] for line in text.stdout.splitlines()] == [["ok", n] for n in ORDER]


def test_curation_data_problems_are_warnings_with_the_command_to_run(
    db_url: str, conn: Conn, env: dict[str, str]
) -> None:
    healthy_rows(conn)
    spaced = add_row(
        conn,
        "locations",
        "Paris",
        '{"locations":["Paris"]}',
        corrected={"role": "assistant", "content": '{"locations": ["Paris", "Nice"]}'},
    )
    add_row(conn, "locations", "empty answer", None)
    add_row(conn, "locations", "empty too", "")
    add_row(conn, "weather", "sunny?", "yes")  # a namespace with no training prompt
    code, checks, _ = diagnose(db_url, env)
    assert code == 0  # warnings only
    assert checks["prompts"]["status"] == "warn"
    assert "no training system prompt for weather" in checks["prompts"]["message"]
    assert "curation ns set NS --system-prompt" in checks["prompts"]["message"]
    corrections = checks["corrections"]
    assert corrections["status"] == "warn" and f"locations rows {spaced}" in corrections["message"]
    assert corrections["message"].startswith("1 corrections are JSON written differently")
    export = checks["export"]
    assert (
        export["status"] == "warn"
        and "2 of 8 included rows cannot be exported" in export["message"]
    )
    assert "1 the answer has no content and no tool calls" in export["message"]
    assert "1 missing_content" in export["message"]
    assert "curation export NS --out DIR" in export["message"]


def test_database_unreachable_and_schema_behind_fail(
    env: dict[str, str], empty_db_url: str
) -> None:
    url = f"postgresql://alice:s3cret@127.0.0.1:{free_port()}/prod"
    code, checks, stderr = diagnose(url, env)
    assert code == 1 and checks["database"]["status"] == "fail"
    assert "alice:****@" in checks["database"]["message"] and "s3cret" not in json.dumps(checks)
    assert checks["export"]["message"] == "not checked: no database"
    assert checks["provider"]["status"] == "ok"  # the rest still ran
    assert stderr.strip().splitlines() == ["Error: 1 of 9 checks failed: database"]

    code, checks, _ = diagnose(empty_db_url, env)
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert "schema at none, this curation needs" in checks["database"]["message"]
    assert checks["database"]["message"].endswith("run: curation db upgrade")
    assert (
        checks["citext"]["status"] == "fail"
        and "run: curation db upgrade" in checks["citext"]["message"]
    )
    assert checks["prompts"]["message"] == "not checked: the schema is behind"


def test_grants_that_differ_fail_and_the_printed_fix_works(
    db_url: str, conn: Conn, env: dict[str, str]
) -> None:
    healthy_rows(conn)
    table = "locations_openai_chat_completion"
    conn.execute(f"REVOKE UPDATE (note) ON {table} FROM curation_curator")
    conn.execute(f"GRANT DELETE ON {table} TO curation_curator")
    code, checks, _ = diagnose(db_url, env)
    assert code == 1
    roles = checks["roles"]["message"]
    assert checks["roles"]["status"] == "fail"
    assert f"{table} (UPDATE (note), extra DELETE)" in roles
    conn.execute(roles.split("in psql: ", 1)[1])  # the fix, as printed
    assert diagnose(db_url, env)[1]["roles"]["status"] == "ok"


def test_spool_not_writable_fails_and_a_stale_backlog_warns(
    db_url: str, conn: Conn, env: dict[str, str], tmp_path: Path
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, checks, _ = diagnose(db_url, env, "--spool-dir", str(a_file))
    assert code == 1 and checks["spool"]["status"] == "fail"
    assert "is not a folder" in checks["spool"]["message"]
    assert "CURATION_SPOOL_DIR" in checks["spool"]["message"]

    directory = tmp_path / "spool"
    appender = spool.Spool(directory, max_bytes=64 << 20)
    appender.open()
    frames = [spool.encode({"namespace": "locations"}, b"{}" * 50, b"{}") for _ in range(3)]
    for frame in frames:
        appender.append(frame)
    appender.close()
    first = min(spool.segment_sizes(directory))
    conn.execute(
        "INSERT INTO spool_checkpoint (spool_id, segment, byte_offset) VALUES (%s, %s, %s)",
        [appender.id, first, len(frames[0])],
    )
    fresh = diagnose(db_url, env, "--spool-dir", str(directory))[1]["spool"]
    assert fresh["status"] == "ok" and f"{2 * len(frames[0])} bytes waiting" in fresh["message"]

    old = time.time() - 3600
    for segment in spool.segment_sizes(directory):
        os.utime(directory / f"{segment:012d}{spool.SUFFIX}", (old, old))
    stale = diagnose(db_url, env, "--spool-dir", str(directory))[1]["spool"]
    assert stale["status"] == "warn"
    assert f"{2 * len(frames[0])} bytes of captures are not in PostgreSQL" in stale["message"]
    assert f"curation proxy --spool-dir {directory}" in stale["message"]

    conn.execute("UPDATE spool_checkpoint SET byte_offset = %s", [sum(map(len, frames))])
    (directory / "rejected.jsonl").write_text('{"reason": "x"}\n')
    caught_up = diagnose(db_url, env, "--spool-dir", str(directory))[1]["spool"]
    assert caught_up["status"] == "warn" and "set aside in" in caught_up["message"]
    assert "not in PostgreSQL" not in caught_up["message"]


def test_unknown_base_model_fails_the_tokenizer_check(
    db_url: str, conn: Conn, env: dict[str, str]
) -> None:
    healthy_rows(conn)
    conn.execute("UPDATE namespace SET base_model = 'acme-9'")
    code, checks, _ = diagnose(db_url, env)
    assert code == 1 and checks["tokenizer"]["status"] == "fail"
    assert "no known token limit for model 'acme-9'" in checks["tokenizer"]["message"]
    assert (
        checks["export"]["status"] == "warn"
        and "not checked: locations" in checks["export"]["message"]
    )


class KeyCheckingFake(FakeOpenAI):
    """Answers /v1/models only with a key it knows, as OpenAI does."""

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-good":
            return self.error(
                401,
                "Incorrect API key provided: sk-***.",
                "invalid_request_error",
                "invalid_api_key",
                "req_1",
            )
        return await super().models(request)


@pytest.fixture
def key_checking() -> Iterator[str]:
    with Running(KeyCheckingFake()) as running:
        yield running.url


def test_provider_key_refused_unreachable_or_missing(
    db_url: str, env: dict[str, str], key_checking: str
) -> None:
    good = {**env, "OPENAI_BASE_URL": f"{key_checking}/v1", "OPENAI_API_KEY": "sk-good"}
    assert diagnose(db_url, good)[1]["provider"]["status"] == "ok"
    code, checks, _ = diagnose(db_url, {**good, "OPENAI_API_KEY": "sk-bad"})
    assert code == 1 and checks["provider"]["status"] == "fail"
    assert "answered 401: Incorrect API key" in checks["provider"]["message"]
    assert checks["provider"]["message"].endswith("check OPENAI_API_KEY and OPENAI_BASE_URL")
    down = {**good, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    code, checks, _ = diagnose(db_url, down)
    assert code == 1 and "cannot reach the provider" in checks["provider"]["message"]
    code, checks, _ = diagnose(db_url, {**good, "OPENAI_API_KEY": ""})
    assert code == 0 and checks["provider"]["status"] == "warn"
    assert "OPENAI_API_KEY is not set" in checks["provider"]["message"]


def test_doctor_on_a_terminal_without_tokenizer_files(
    db_url: str, conn: Conn, env: dict[str, str], tmp_path: Path
) -> None:
    """As a user runs it: its own process, a real terminal, the tokenizer files out of reach."""
    import pexpect

    healthy_rows(conn)
    offline = {
        **env,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    child = spawn(db_url, "doctor", env=offline, timeout=120)
    child.expect(r"ok    database +reachable")
    child.expect(r"ok    roles")
    child.expect(
        r"fail  tokenizer +gpt-4o-mini-2024-07-18: cannot load the tiktoken encoding o200k_base"
    )
    child.expect(r"export TIKTOKEN_CACHE_DIR=")
    child.expect(r"ok    provider")
    child.expect(r"Error: 1 of 9 checks failed: tokenizer")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_checks_are_plain_functions_with_typed_results(tmp_path: Path) -> None:
    from curation import config

    settings = config.load(
        {"data_dir": tmp_path, "database_url": f"postgresql://u@127.0.0.1:{free_port()}/d"}, env={}
    )
    checks = doctor.check_all(settings)
    assert all(isinstance(c, doctor.Check) for c in checks)
    assert [c.name for c in checks] == ORDER
    assert not doctor.healthy(checks) and checks[0].status == "fail"

"""Automatic flags: each reason with a row that has it and a near miss that does not;
flags set on record through the real proxy; list, stats, include and export honour them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation.capture.flags import REASONS, flags, for_row
from tests import pg
from tests.cli import run, run_json
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, wait_for

Conn = psycopg.Connection[dict[str, object]]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat(
    content: Any = "Paris.",
    *,
    finish: str = "stop",
    model: str = "gpt-4o-2024-08-06",
    **message: Any,
) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
    }


def ask(**request: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}], **request}


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    # (reason, request, flagged response, near miss)
    ("truncated", ask(), chat("Par", finish="length"), chat("Paris.", finish="stop")),
    (
        "content_filter",
        ask(),
        chat("", finish="content_filter"),
        chat("The filter on my coffee machine is clogged."),
    ),
    (
        "empty",
        ask(tools=[WEATHER]),
        chat("  "),
        chat(None, tool_calls=[call("weather", '{"city": "Oslo"}')]),
    ),
    ("refusal", ask(), chat(None, refusal="I can't help with that."), chat("Here you go.")),
    (
        "refusal",
        ask(),
        chat("I'm sorry, but I can't help with that request."),
        chat("I'm sorry, but I can't find a city in this text."),
    ),
    ("invalid_json", ask(response_format={"type": "json_object"}), chat("Sure! {"), chat("{}")),
    ("invalid_json", ask(response_format=SCHEMA), chat('{"town": 1}'), chat('{"city": "Oslo"}')),
    (
        "tool_args",
        ask(tools=[WEATHER]),
        chat(None, tool_calls=[call("weather", '{"city": ')]),
        chat(None, tool_calls=[call("weather", '{"city": "Oslo"}')]),
    ),
    (
        "tool_args",
        ask(tools=[WEATHER]),
        chat(None, tool_calls=[call("weather", '{"town": "Oslo"}')]),
        chat(None, tool_calls=[call("weather", '{"city": "Oslo", "days": 3}')]),
    ),
    (
        "tool_args",
        ask(tools=[WEATHER]),
        chat(None, tool_calls=[call("launch_rockets", "{}")]),
        chat(None, tool_calls=[call("weather", '{"city": "Rome"}')]),
    ),
    (
        "model_mismatch",
        ask(model="gpt-4o-mini"),
        chat(model="gpt-4o"),
        chat(model="gpt-4o-mini-2024-07-18"),
    ),
]


@pytest.mark.parametrize(("reason", "request_", "flagged", "near_miss"), CASES)
def test_each_reason_and_its_near_miss(
    reason: str, request_: dict[str, Any], flagged: dict[str, Any], near_miss: dict[str, Any]
) -> None:
    if reason == "model_mismatch":
        assert flags(request_, flagged) == [reason]
        assert flags(request_, near_miss) == []
        return
    assert reason in flags(request_, flagged)
    assert flags(request_, near_miss) == []


def test_responses_api_rows_are_flagged_too() -> None:
    request = {"model": "gpt-4o-mini", "input": "q", "text": {"format": {"type": "json_object"}}}
    incomplete = {
        "object": "response",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [{"type": "message", "content": [{"type": "output_text", "text": '{"a"'}]}],
    }
    assert flags(request, incomplete) == ["truncated", "invalid_json"]
    refused = {
        "object": "response",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}],
    }
    assert flags(request, refused) == ["refusal"]
    fine = {**incomplete, "status": "completed", "incomplete_details": None}
    fine["output"] = [{"type": "message", "content": [{"type": "output_text", "text": "{}"}]}]
    assert flags(request, fine) == []


def test_a_served_students_answer_is_no_model_mismatch() -> None:
    request, response = ask(model="gpt-4o"), chat(model="ft:gpt-4o-mini:org::abc")
    assert flags(request, response) == ["model_mismatch"]
    assert for_row(request, response, rewritten=True) == []


def test_a_schema_it_cannot_read_is_no_evidence() -> None:
    odd = {"type": "json_schema", "json_schema": {"schema": {"$ref": "https://example.com/s"}}}
    assert flags(ask(response_format=odd), chat('{"city": 1}')) == []
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": 12}}}
    assert flags(ask(response_format=bad), chat('{"city": 1}')) == []


def test_a_catastrophic_pattern_cannot_stall_the_recorder() -> None:
    import time

    evil = {"type": "string", "pattern": "^(a+)+$"}
    schema = {"type": "object", "properties": {"a": evil}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    answer = json.dumps({"a": "a" * 40 + "b"})
    started = time.perf_counter()
    assert flags(ask(response_format=fmt), chat(answer)) == []  # pattern violations: unflagged
    assert flags(ask(tools=[tool]), chat(None, tool_calls=[call("f", answer)])) == []
    assert time.perf_counter() - started < 0.05
    # the rest of the schema still counts; a property named "pattern" is kept
    named = {
        "type": "object",
        "properties": {"pattern": {"type": "string"}},
        "required": ["pattern"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": named}}
    assert flags(ask(response_format=fmt), chat('{"pattern": 1}')) == ["invalid_json"]
    keyed = {"type": "object", "patternProperties": {"^(a+)+$": {}}, "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": keyed}}
    assert flags(ask(response_format=fmt), chat(json.dumps({"a" * 30 + "b": 1}))) == []


def test_a_huge_answer_is_parsed_but_not_schema_checked() -> None:
    big = json.dumps({"town": "x" * 70_000})  # fails the schema, but over 64 KiB
    assert flags(ask(response_format=SCHEMA), chat(big)) == []
    assert flags(ask(response_format=SCHEMA), chat(big[:-1])) == ["invalid_json"]


@pytest.mark.parametrize(
    "item",
    [
        {"type": "computer_call", "call_id": "c", "action": {"type": "screenshot"}},
        {"type": "custom_tool_call", "call_id": "c", "name": "grammar", "input": "x"},
        {"type": "local_shell_call", "call_id": "c", "action": {"type": "exec"}},
        {"type": "mcp_approval_request", "id": "m", "name": "t", "server_label": "s"},
        {"type": "image_generation_call", "id": "i", "result": "aGk="},
    ],
)
def test_responses_output_of_other_kinds_is_an_answer(item: dict[str, Any]) -> None:
    response = {"object": "response", "status": "completed", "output": [item]}
    assert flags({"model": "gpt-4o", "input": "q"}, response) == []
    reasoning = {**response, "output": [{"type": "reasoning", "summary": []}]}
    assert flags({"model": "gpt-4o", "input": "q"}, reasoning) == ["empty"]


def test_an_audio_answer_is_its_transcript() -> None:
    audio = {"id": "a", "data": "UklG", "transcript": "Paris."}
    assert flags(ask(), chat(None, audio=audio)) == []
    assert flags(ask(), chat(None, audio={**audio, "transcript": ""})) == ["empty"]


def test_a_custom_tools_call_is_no_bad_tool_call() -> None:
    custom = {"type": "custom", "custom": {"name": "grammar", "description": "d"}}
    custom_call = {"id": "c", "type": "custom", "custom": {"name": "grammar", "input": "x y"}}
    assert flags(ask(tools=[custom]), chat(None, tool_calls=[custom_call])) == []


@pytest.mark.parametrize(
    ("requested", "answered", "mismatch"),
    [
        ("gpt-4-turbo-preview", "gpt-4-0125-preview", False),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022", False),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", False),
        ("claude-3-opus", "claude-3-opus-20240229", False),
        ("gpt-4o", "gpt-4o-mini", True),
        ("gpt-4o", "gpt-4o-mini-2024-07-18", True),
        ("gpt-4.1", "gpt-4o", True),
        ("gpt-4.1", "gpt-4o-2024-08-06", True),
        ("claude-3-5-sonnet-latest", "claude-3-haiku-20240307", True),
        ("gpt-4-turbo-preview", "gpt-4o-2024-08-06", True),
    ],
)
def test_aliases_are_their_snapshots(requested: str, answered: str, mismatch: bool) -> None:
    found = flags(ask(model=requested), chat(model=answered))
    assert found == (["model_mismatch"] if mismatch else [])


def test_a_bug_in_a_check_costs_the_flags_never_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.capture import flags as auto_flags
    from curation.capture import row
    from tests.factories import spooled

    def broken(*args: Any, **kw: Any) -> list[str]:
        raise RuntimeError("a bug")

    capture = spooled(request=orjson.dumps(ask()), response=orjson.dumps(chat(finish="length")))
    assert row.build(capture).flags == ["truncated"]
    monkeypatch.setattr(auto_flags, "for_row", broken)
    built = row.build(capture)
    assert built.flags == ["check_failed"] and built.user_prompt == "q"  # recorded, held back


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
KEYS = st.sampled_from(
    ["choices", "message", "content", "tool_calls", "function", "arguments", "name", "tools",
     "response_format", "json_schema", "schema", "type", "model", "output", "status",
     "finish_reason", "refusal", "parameters", "text", "format"]
)  # fmt: skip
SHAPED = st.recursive(
    JSON | st.sampled_from(["length", "json_schema", "json_object", "function", "{", "[]"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(SHAPED, SHAPED)
def test_flags_are_total_over_any_json(request: Any, response: Any) -> None:
    found = flags(request, response)
    assert isinstance(found, list) and set(found) <= set(REASONS)


# -- through the proxy and the CLI ------------------------------------------

KEY = "sk-flags-test"


def recorded(db_url: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as c:
        found = c.execute("SELECT user_prompt::text, flags FROM openai_chat_completion").fetchall()
    return {p: f for p, f in found}


def test_the_proxy_flags_rows_as_it_records_them(
    start_proxy: Any, db_url: str, fake_openai: FakeOpenAI
) -> None:
    cut = chat("The cap", finish="length", model="gpt-4o-mini-2024-07-18")
    fake_openai.raw["cut"] = ("application/json", orjson.dumps(cut))
    fake_openai.raw["broken"] = ("application/json", b"{not json")
    proxy: ProxyProcess = start_proxy()
    for prompt, raw in (("cut short", "cut"), ("fine", ""), ("broken body", "broken")):
        answer = httpx.post(
            f"{proxy.url}/ns/flagged/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
            headers={"Authorization": f"Bearer {KEY}", "X-Fake-Raw": raw},
            timeout=10,
        )
        assert answer.status_code == 200
    got = wait_for(lambda: (r := recorded(db_url)) and len(r) == 2 and r, timeout=15)
    # gpt-4o-mini answered as gpt-4o-mini-2024-07-18: a snapshot, no mismatch
    assert got == {"cut short": ["truncated"], "fine": []}


def flagged_rows(conn: Conn) -> dict[str, int]:
    """Five included rows: three flagged in ways export must not miss, two fine."""
    ids = {p: add_row(conn, "locations", p) for p in ("ok 1", "ok 2", "cut", "sorry", "json")}
    answers = {
        "cut": chat("Par", finish="length"),
        "sorry": chat("I cannot help with that."),
        "json": chat("not json"),
    }
    for prompt, response in answers.items():
        conn.execute(
            "UPDATE locations_openai_chat_completion SET response = %s WHERE id = %s",
            [json.dumps(response), ids[prompt]],
        )
    conn.execute(
        "UPDATE locations_openai_chat_completion SET request = jsonb_set(request,"
        " '{response_format}', '{\"type\": \"json_object\"}') WHERE id = %s",
        [ids["json"]],
    )
    return ids


def test_backfill_list_stats_include_and_export(db_url: str, conn: Conn, tmp_path: Path) -> None:
    ids = flagged_rows(conn)
    first = run_json(db_url, "flags", "locations", "--backfill")
    assert first["backfilled"]["rows"] == 5
    assert first["flags"] == {"truncated": 1, "refusal": 1, "invalid_json": 1}
    assert run_json(db_url, "flags", "locations", "--backfill")["backfilled"]["rows"] == 0

    listed = run_json(db_url, "list", "locations", "--flag", "truncated")
    assert [(r["id"], r["flags"]) for r in listed] == [(ids["cut"], ["truncated"])]
    assert {r["id"] for r in run_json(db_url, "list", "locations", "--flag", "any")} == {
        ids["cut"],
        ids["sorry"],
        ids["json"],
    }
    assert "truncated" in run(db_url, "list", "locations", "--flag", "any").stdout
    [stats] = run_json(db_url, "stats", "locations")
    assert stats["flags"] == {"invalid_json": 1, "refusal": 1, "truncated": 1}
    assert "truncated 1" in run(db_url, "stats", "locations").stdout
    shown = run(db_url, "show", "locations", str(ids["cut"])).stdout
    assert "flags: truncated" in shown

    # the rows were included before they were flagged: export skips them, saying why
    out = tmp_path / "out"
    manifest = run_json(db_url, "export", "locations", "--out", str(out), "--model", "gpt-4o-mini")
    skipped = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert skipped == {
        ids["cut"]: "flagged: truncated",
        ids["sorry"]: "flagged: refusal",
        ids["json"]: "flagged: invalid_json",
    }
    assert manifest["counts"]["examples"] == 2 and manifest["counts"]["rows"] == 5
    assert any("--accept-flags" in w for w in manifest["warnings"])
    text = run(db_url, "export", "locations", "--out", str(out), "--model", "gpt-4o-mini")
    assert f"skipped row {ids['cut']}: flagged: truncated" in text.stdout

    # include without --accept-flags: one line naming the flags and the option, nothing changed
    run(db_url, "reset", "locations", str(ids["cut"]), str(ids["ok 1"]))
    refused = run(db_url, "include", "locations", str(ids["ok 1"]), str(ids["cut"]))
    assert refused.exit_code != 0
    [line] = refused.stderr.strip().splitlines()
    assert "truncated" in line and "--accept-flags" in line
    assert run_json(db_url, "show", "locations", str(ids["ok 1"]))["state"] == "pending"

    accepted = run(
        db_url, "include", "locations", str(ids["cut"]), str(ids["sorry"]), "--accept-flags"
    )
    assert accepted.exit_code == 0, accepted.output  # sorry was included: its flags accepted
    row = run_json(db_url, "show", "locations", str(ids["cut"]))
    assert row["state"] == "included" and row["flags_accepted_by"]
    manifest = run_json(db_url, "export", "locations", "--out", str(out), "--model", "gpt-4o-mini")
    assert [s["id"] for s in manifest["skipped"]] == [ids["json"]]
    assert manifest["counts"]["examples"] == 3


def test_flags_never_block_other_states(db_url: str, conn: Conn) -> None:
    ids = flagged_rows(conn)
    run_json(db_url, "flags", "locations", "--backfill")
    assert run(db_url, "exclude", "locations", str(ids["cut"])).exit_code == 0
    assert run(db_url, "reset", "locations", str(ids["cut"])).exit_code == 0
    assert run(db_url, "include", "locations", str(ids["ok 2"])).exit_code != 0  # still included


def test_review_shows_the_flags_and_its_include_accepts_them(db_url: str, conn: Conn) -> None:
    import pexpect

    from tests.cli import spawn

    row = add_row(conn, "locations", "cut", included=False)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET flags = '{truncated}' WHERE id = %s", [row]
    )
    child = spawn(db_url, "review", "locations", "--curator", "rev", timeout=30)
    child.expect_exact("flags: truncated")
    child.expect(r"\[q\]uit\? ")
    child.send("i")
    child.expect_exact(f"row {row} included")
    child.expect(pexpect.EOF)
    shown = run_json(db_url, "show", "locations", str(row))
    assert shown["state"] == "included" and shown["flags_accepted_by"] == "rev"


@pytest.mark.parametrize("flag", ["any", "refusal"])
def test_flagged_rows_come_from_their_partial_index(conn: Conn, flag: str) -> None:
    from curation.curate import rows
    from curation.db import queries
    from tests.test_curate_scale import fill, plan

    fill(conn, 20_000)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET flags = CASE WHEN id % 1000 = 0"
        " THEN '{refusal}'::text[] ELSE '{}' END"
    )
    conn.execute("ANALYZE locations_openai_chat_completion")
    [index] = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'locations_openai_chat_completion'"
        " AND indexdef LIKE '%flags <>%'"
    ).fetchall()
    listed = plan(conn, *rows.list_query("locations", rows.ListFilter(flag=flag)))
    assert f"using {index['indexname']} " in listed, listed
    counted = plan(conn, queries.get("flag_counts"), {"namespace": "locations"})
    assert f"using {index['indexname']} " in counted, counted


def test_backfill_walks_in_batches(db_url: str, conn: Conn) -> None:
    from curation.curate import flagged
    from curation.db.connect import connection

    flagged_rows(conn)
    batches: list[int] = []
    with connection(db_url, autocommit=True) as c:
        done = flagged.backfill(c, "locations", batch=2, on_batch=batches.append)
    assert batches == [2, 2, 1] and done == {
        "rows": 5, "truncated": 1, "refusal": 1, "invalid_json": 1
    }  # fmt: skip


def test_backfill_marks_a_row_its_check_fails_on_and_moves_on(
    db_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.capture import flags as auto_flags
    from curation.curate import flagged
    from curation.db.connect import connection

    ids = flagged_rows(conn)
    real = auto_flags.for_row

    def broken_on_cut(request: Any, response: Any, *, rewritten: bool) -> list[str]:
        if obj_text(response) == "Par":
            raise RuntimeError("a bug")
        return real(request, response, rewritten=rewritten)

    monkeypatch.setattr(auto_flags, "for_row", broken_on_cut)
    with connection(db_url, autocommit=True) as c:
        done = flagged.backfill(c, "locations", batch=2)
        assert flagged.backfill(c, "locations")["rows"] == 0  # not tried again
    assert done == {"rows": 5, "check_failed": 1, "refusal": 1, "invalid_json": 1}
    listed = run_json(db_url, "list", "locations", "--flag", "check_failed")
    assert [(r["id"], r["flags"]) for r in listed] == [(ids["cut"], ["check_failed"])]


def obj_text(response: Any) -> Any:
    return response["choices"][0]["message"]["content"]


def test_accepting_a_proposal_on_a_flagged_row_needs_its_flags_accepted(
    db_url: str, conn: Conn
) -> None:
    """`accept` includes the row, so it asks for --accept-flags as `include` does."""
    ids = flagged_rows(conn)
    run_json(db_url, "flags", "locations", "--backfill")
    proposal = json.dumps({"role": "assistant", "content": "Paris."})
    conn.execute(
        "UPDATE locations_openai_chat_completion SET included = NULL, proposed_response = %s,"
        " proposed_by = 'teacher', proposed_at = now() WHERE id = ANY(%s)",
        [proposal, [ids["cut"], ids["ok 1"]]],
    )
    refused = run(db_url, "accept", "locations", str(ids["ok 1"]), str(ids["cut"]))
    assert refused.exit_code != 0
    [line] = refused.stderr.strip().splitlines()
    assert "truncated" in line and "--accept-flags" in line
    assert run_json(db_url, "show", "locations", str(ids["ok 1"]))["state"] == "pending"

    done = run(db_url, "accept", "locations", str(ids["cut"]), "--accept-flags", "--curator", "ann")
    assert done.exit_code == 0, done.output
    shown = run_json(db_url, "show", "locations", str(ids["cut"]))
    assert shown["state"] == "included" and shown["flags_accepted_by"] == "ann"
    clean = run(db_url, "accept", "locations", str(ids["ok 1"]))  # no flags: nothing to accept
    assert clean.exit_code == 0, clean.output
    assert run_json(db_url, "show", "locations", str(ids["ok 1"]))["flags_accepted_by"] is None


@pytest.fixture
def curator_url(pg_server: str, db_url: str) -> Iterator[str]:
    """db_url as a login granted only curation_curator (roles are cluster-wide: unique)."""
    name = f"curator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE curation_curator")
    yield make_conninfo(**{**conninfo_to_dict(db_url), "user": name})  # type: ignore[arg-type]
    with psycopg.connect(db_url, autocommit=True) as d:
        d.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP ROLE {name}")


def curation(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`curation ARGS` in its own process, the database given as DATABASE_URL."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "curation", *args],
        env={**env, "DATABASE_URL": url, "CURATION_CURATOR": "cara"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_curator_login_uses_the_cli(conn: Conn, curator_url: str) -> None:
    """A login that is only curation_curator lists, shows, includes, accepts and clusters (the schema
    check reads alembic_version: 0012 grants it), flagged rows included."""
    ids = flagged_rows(conn)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET included = NULL, flags = %s WHERE id = %s",
        [["truncated"], ids["cut"]],
    )
    listed = curation(curator_url, "list", "locations", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["id"] for r in json.loads(listed.stdout)} == set(ids.values())
    shown = curation(curator_url, "show", "locations", str(ids["cut"]))
    assert shown.returncode == 0 and "flags: truncated" in shown.stdout, shown.stderr
    done = curation(curator_url, "include", "locations", str(ids["cut"]), "--accept-flags")
    assert done.returncode == 0, done.stderr
    row = conn.execute(
        "SELECT included IS NOT NULL AS inc, flags_accepted_by"
        " FROM locations_openai_chat_completion WHERE id = %s",
        [ids["cut"]],
    ).fetchone()
    assert row is not None and row["inc"]
    assert row["flags_accepted_by"] == "cara"
    conn.execute(
        "UPDATE locations_openai_chat_completion SET included = NULL, proposed_response = %s,"
        " proposed_by = 'teacher', proposed_at = now() WHERE id = %s",
        [json.dumps({"role": "assistant", "content": "Paris."}), ids["ok 1"]],
    )
    accepted = curation(curator_url, "accept", "locations", str(ids["ok 1"]))
    assert accepted.returncode == 0, accepted.stderr
    covered = curation(curator_url, "coverage", "locations", "--json")
    assert covered.returncode == 0, covered.stderr
    assert sum(c["size"] for c in json.loads(covered.stdout)["clusters"]) == len(ids)


def test_reviews_accept_key_accepts_the_flags_on_screen(db_url: str, conn: Conn) -> None:
    import pexpect

    from tests.cli import spawn

    row = add_row(conn, "locations", "cut", included=False)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET flags = '{truncated}', proposed_response = %s,"
        " proposed_by = 'teacher', proposed_at = now() WHERE id = %s",
        [json.dumps({"role": "assistant", "content": "Paris."}), row],
    )
    child = spawn(db_url, "review", "locations", "--curator", "rev", timeout=30)
    child.expect_exact("flags: truncated")
    child.expect(r"\[q\]uit\? ")
    child.send("a")
    child.expect_exact(f"row {row} included with the proposal accepted")
    child.expect(pexpect.EOF)
    shown = run_json(db_url, "show", "locations", str(row))
    assert shown["state"] == "included" and shown["flags_accepted_by"] == "rev"

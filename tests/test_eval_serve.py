"""Evaluate, relabel and serve, against the fake upstream and a real proxy."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from openai import OpenAI

from tests.cli import run, spawn
from tests.factories import LONG_PROMPT, add_row
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, query, wait_for

FT = "ft:gpt-4o-mini-2024-07-18:org-fake:locations:abc123"
BASE = "gpt-4o-2024-08-06"
SHORT = "List the cities, as JSON."
Conn = psycopg.Connection[dict[str, object]]


def city_rows(conn: Conn, n: int) -> dict[str, int]:
    ids = {}
    for i in range(n):
        ids[f"city{i}"] = add_row(
            conn, "locations", f"I live in city{i}", json.dumps({"city": f"city{i}", "n": i})
        )
    conn.execute(
        "UPDATE namespace SET training_system_prompt = %s WHERE name = 'locations'", [SHORT]
    )
    return ids


def last_user(request: dict[str, Any]) -> str:
    return str([m for m in request["messages"] if m["role"] == "user"][-1]["content"])


def student(request: dict[str, Any]) -> str:
    """Right on even-numbered cities, wrong on odd ones."""
    i = int(last_user(request).removeprefix("I live in city"))
    return json.dumps({"city": f"city{i}" if i % 2 == 0 else "Atlantis", "n": i})


def teacher_reordered(request: dict[str, Any]) -> str:
    i = int(last_user(request).removeprefix("I live in city"))
    return '{ "n": ' + str(i) + ',   "city": "city' + str(i) + '" }'


def env_for(fake: FakeOpenAI) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-eval", "OPENAI_BASE_URL": f"{fake.url}/v1"}  # type: ignore[attr-defined]


def test_eval_agreement_prompts_and_history(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI
) -> None:
    city_rows(conn, 12)
    fake_openai.answers[FT] = student
    fake_openai.answers[BASE] = teacher_reordered
    env = env_for(fake_openai)
    result = run(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--baseline",
        BASE,
        "--rows",
        "all-included",
        "--compare",
        "json",
        "--json",
        env=env,
    )
    assert result.exit_code == 0, result.output
    report = {m["model"]: m for m in json.loads(result.stdout)["models"]}
    assert report[FT]["agreement_pct"] == 50.0 and report[BASE]["agreement_pct"] == 100.0
    assert len(report[FT]["mismatches"]) == 6 and report[FT]["errors"] == 0
    assert report[FT]["cost_per_1k_calls_usd"] < report[BASE]["cost_per_1k_calls_usd"]
    assert report[FT]["savings_vs_baseline"]["cost_pct"] > 0
    sent = [json.loads(s.body) for s in fake_openai.seen if s.path == "/v1/chat/completions"]
    to_ft = [r for r in sent if r["model"] == FT]
    to_base = [r for r in sent if r["model"] == BASE]
    assert len(to_ft) == len(to_base) == 12
    assert all(r["messages"][0] == {"role": "system", "content": SHORT} for r in to_ft)
    assert all(LONG_PROMPT not in json.dumps(r) for r in to_ft)
    assert all(r["messages"][0] == {"role": "system", "content": LONG_PROMPT} for r in to_base)

    exact = run(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--baseline",
        BASE,
        "--rows",
        "all-included",
        "--json",
        env=env,
    )
    assert {m["model"]: m["agreement_pct"] for m in json.loads(exact.stdout)["models"]}[BASE] == 0.0

    checker = f"{sys.executable} -c \"import json,sys; d=json.load(sys.stdin); sys.exit(d['expected']['n'] != d['actual']['n'])\""
    custom = run(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--rows",
        "all-included",
        "--compare",
        checker,
        "--json",
        env=env,
    )
    assert json.loads(custom.stdout)["models"][0]["agreement_pct"] == 100.0  # n is always right

    history = run(db_url, "eval", "history", "locations", "--json", env=env)
    assert len(json.loads(history.stdout)) == 3
    assert query(db_url, "SELECT count(*) AS n FROM eval_result")[0]["n"] == 24 + 24 + 12
    table = run(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--baseline",
        BASE,
        "--rows",
        "all-included",
        env=env,
    )
    assert table.exit_code == 0 and "agreement_pct" in table.stdout and FT in table.stdout


def test_eval_defaults_to_validation_rows(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI, tmp_path: Any
) -> None:
    city_rows(conn, 40)
    assert (
        run(
            db_url,
            "export",
            "locations",
            "--out",
            str(tmp_path),
            "--model",
            "gpt-4o-mini",
            "--validation-fraction",
            "0.3",
        ).exit_code
        == 0
    )
    validation = set(
        json.loads((tmp_path / "manifest.json").read_text())["rows"]["validation"]["ids"]
    )
    fake_openai.answers[FT] = student
    result = run(db_url, "eval", "locations", "--model", FT, "--json", env=env_for(fake_openai))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == len(validation) > 0
    asked = {last_user(json.loads(s.body)) for s in fake_openai.seen}
    expected = {
        r["p"]
        for r in query(
            db_url,
            "SELECT user_prompt::text AS p FROM locations_openai_chat_completion"
            " WHERE id = ANY(%s)",
            [list(validation)],
        )
    }
    assert asked == expected


def test_eval_errors_are_one_line(db_url: str, conn: Conn, fake_openai: FakeOpenAI) -> None:
    city_rows(conn, 2)
    none = run(db_url, "eval", "locations", "--model", FT, env=env_for(fake_openai))
    assert none.exit_code == 3 and "no dataset yet" in none.stderr


def test_eval_with_a_compare_command_that_cannot_run_fails(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI
) -> None:
    city_rows(conn, 2)
    args = ("eval", "locations", "--model", FT, "--rows", "all-included")
    result = run(db_url, *args, "--compare", "/nonexistent/cmd", env=env_for(fake_openai))
    assert result.exit_code == 2, result.output  # not "0% agreement"
    assert "cannot run (exit 127" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert query(db_url, "SELECT count(*) AS n FROM eval_run")[0]["n"] == 0
    works = run(db_url, *args, "--compare", "false", env=env_for(fake_openai))
    assert works.exit_code == 0, works.output  # a command that runs and says "no" is a mismatch


def test_relabel_proposes_and_curator_decides(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI
) -> None:
    a = add_row(conn, "locations", "I live in city1", "old answer", included=False)
    b = add_row(conn, "locations", "I live in city2", "old answer", included=False)
    fake_openai.answers["gpt-4.1-2025-04-14"] = lambda req: "teacher says " + last_user(req)
    result = run(
        db_url, "relabel", "locations", "--model", "gpt-4.1-2025-04-14", env=env_for(fake_openai)
    )
    assert result.exit_code == 0 and "2 proposals" in result.stdout
    seen = [json.loads(s.body) for s in fake_openai.seen]
    assert all(
        r["messages"][0]["content"] == LONG_PROMPT for r in seen
    )  # the teacher gets the production prompt
    rows = {r["id"]: r for r in query(db_url, "SELECT * FROM locations_openai_chat_completion")}
    assert rows[a]["proposed_response"] == {
        "role": "assistant",
        "content": "teacher says I live in city1",
    }
    assert (
        rows[a]["corrected_response"] is None and rows[a]["included"] is None
    )  # nothing replaced silently
    assert run(db_url, "accept", "locations", str(a), "--curator", "ana").exit_code == 0
    assert run(db_url, "reject", "locations", str(b), "--curator", "ana").exit_code == 0
    rows = {r["id"]: r for r in query(db_url, "SELECT * FROM locations_openai_chat_completion")}
    assert (
        rows[a]["corrected_response"]["content"] == "teacher says I live in city1"
        and rows[a]["included"]
    )
    assert rows[b]["proposed_response"] is None and rows[b]["corrected_response"] is None
    again = run(db_url, "accept", "locations", str(b))
    assert again.exit_code == 7 and "has no proposal" in again.stderr
    audit = query(
        db_url, "SELECT column_name FROM curation_audit WHERE row_id = %s ORDER BY id", [a]
    )
    assert {r["column_name"] for r in audit} >= {
        "corrected_response",
        "proposed_response",
        "included",
    }


def chat(proxy: ProxyProcess, text: str) -> None:
    OpenAI(
        base_url=f"{proxy.url}/ns/locations/v1", api_key="sk-test-serve", max_retries=0
    ).chat.completions.create(
        model=BASE,
        messages=[{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": text}],
    )


def test_serve_on_percent_off_through_proxy(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    start_proxy: Callable[..., ProxyProcess],
    tmp_path: Any,
) -> None:
    city_rows(conn, 12)
    proxy = start_proxy()
    refused = run(db_url, "serve", "locations", "--model", FT)
    assert refused.exit_code == 7 and "no clean eval" in refused.stderr
    assert run(db_url, "serve", "locations", "--model", FT, "--force").exit_code == 0
    n = iter(range(10_000))

    def served() -> bool:
        chat(proxy, f"served call {next(n)}")
        return json.loads(fake_openai.seen[-1].body)["model"] == FT

    wait_for(served, timeout=15, interval=0.2)
    body = json.loads(fake_openai.seen[-1].body)
    assert body["messages"][0] == {"role": "system", "content": SHORT}
    assert LONG_PROMPT not in fake_openai.seen[-1].body.decode()
    row = wait_for(
        lambda: query(db_url, "SELECT * FROM locations_openai_chat_completion WHERE rewritten"),
        timeout=10,
    )[0]
    assert (
        row["model"] == FT and row["request"]["model"] == BASE
    )  # the client's own request is what is kept
    assert "served" in run(db_url, "serve", "locations").stdout

    assert (
        run(db_url, "serve", "locations", "--model", FT, "--percent", "50", "--force").exit_code
        == 0
    )
    wait_for(lambda: not served(), timeout=15, interval=0.1)  # the proxy has the 50% setting
    before = len(fake_openai.seen)
    for i in range(60):
        chat(proxy, f"half {i}")
    models = [json.loads(s.body)["model"] for s in fake_openai.seen[before:]]
    assert 5 < models.count(FT) < 55 and models.count(BASE) > 5

    assert run(db_url, "serve", "locations", "--off").exit_code == 0
    wait_for(
        lambda: not any([served() for _ in range(8)]), timeout=20, interval=0.2
    )  # off, not luck
    calls = sum(1 for s in fake_openai.seen if s.path == "/v1/chat/completions")
    wait_for(
        lambda: (
            query(db_url, "SELECT count(*) AS n FROM locations_openai_chat_completion")[0]["n"]
            == 12 + calls
        )
    )
    # served answers are never training data
    assert (
        run(
            db_url, "export", "locations", "--out", str(tmp_path), "--model", "gpt-4o-mini"
        ).exit_code
        == 0
    )
    rewritten = query(
        db_url, "SELECT count(*) AS n FROM locations_openai_chat_completion WHERE rewritten"
    )[0]["n"]
    query(db_url, "UPDATE locations_openai_chat_completion SET included = now()")
    assert (
        run(
            db_url,
            "export",
            "locations",
            "--out",
            str(tmp_path),
            "--model",
            "gpt-4o-mini",
            "--json",
        ).exit_code
        == 0
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    total = query(db_url, "SELECT count(*) AS n FROM locations_openai_chat_completion")[0]["n"]
    assert manifest["counts"]["rows"] == total - rewritten and rewritten > 0
    assert 'curation_served_total{answered_by="fine_tuned",namespace="locations"}' in _metrics(
        proxy
    )


def _metrics(proxy: ProxyProcess) -> str:
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def test_eval_on_a_terminal_shows_progress(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI
) -> None:

    import pexpect

    city_rows(conn, 6)
    fake_openai.answers[FT] = student
    child = spawn(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--rows",
        "all-included",
        "--compare",
        "json",
        env=env_for(fake_openai),
    )
    child.expect("evaluating")
    child.expect(r"\b(16|17|33|50|66|67|83)%")  # a bar that knows its length passes through these
    child.expect("100%")
    child.expect("agreement_pct")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_eval_retries_rate_limits(db_url: str, conn: Conn, fake_openai: FakeOpenAI) -> None:
    city_rows(conn, 4)
    fake_openai.answers[FT] = student
    fake_openai.fail["chat"] = 2  # 429 twice (retry-after: 0): within the SDK's two retries
    result = run(
        db_url,
        "eval",
        "locations",
        "--model",
        FT,
        "--rows",
        "all-included",
        "--compare",
        "json",
        "--concurrency",
        "1",
        "--json",
        env=env_for(fake_openai),
    )
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["models"]
    assert report["errors"] == 0 and report["agreement_pct"] == 50.0
    assert len(fake_openai.seen) == 4 + 2


def test_savings_read_as_a_cut_or_a_rise() -> None:
    """A student cheaper than the baseline shows -70%; a slower one +50%, never '--50%'."""
    from curation.cli.eval_cmd import _printable

    row = {"model": "s", "savings_vs_baseline": {"cost_pct": 70.0, "latency_p50_pct": -50.0}}
    assert _printable(row)["savings"] == "cost -70% latency +50%"


def test_a_compare_command_that_hangs_or_is_killed_fails_the_eval() -> None:
    """Scoring such rows as mismatches would report 0% agreement as if the models were
    wrong; a grandchild holding the pipes open must not hang the eval either."""
    from curation.errors import InvalidInput
    from curation.evaluate import compare

    assert compare.command("grep -q '\"actual\": 1'")("1", "1") is True
    assert compare.command("exit 1")("1", "2") is False
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="ran past"):
        compare.command("sh -c 'sleep 1000'", timeout=0.5)("1", "1")
    assert time.monotonic() - started < 10
    with pytest.raises(InvalidInput, match="signal 9"):
        compare.command("kill -9 $$")("1", "1")

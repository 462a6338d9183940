"""curation serve's options, history and state; ns set --compare; list/review --disagreements."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.cli import run, run_json, spawn
from tests.factories import add_row

FT = "ft:gpt-4o-mini-2024-07-18:org-fake:locations:abc123"
TEACHER = "gpt-4o-2024-08-06"
Conn = psycopg.Connection[dict[str, Any]]


def ok(db_url: str, *args: str) -> str:
    result = run(db_url, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_rollout_auto_starts_in_shadow_and_is_recorded(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "seed")
    ok(
        db_url,
        "serve",
        "locations",
        "--model",
        FT,
        "--rollout",
        "auto",
        "--steps",
        "10,100",
        "--promote-at",
        "0.97",
        "--min-samples",
        "50",
        "--demote-below",
        "0.9",
        "--max-error-rate",
        "0.05",
        "--watch-percent",
        "3",
        "--shadow",
        "40",
        "--per-minute",
        "120",
    )
    state = run_json(db_url, "serve", "locations")
    assert state["stage"] == "shadow" and state["automatic"] and state["serve_percent"] == 0
    assert state["shadow_percent"] == 40 and state["per_minute"] == 120
    assert state["policy"]["steps"] == [10, 100] and state["policy"]["watch_percent"] == 3
    assert state["policy"]["promote_at"] == 0.97 and state["policy"]["min_samples"] == 50
    [step] = run_json(db_url, "serve", "locations", "--history")
    assert (step["from_stage"], step["to_stage"]) == ("off", "shadow")
    assert step["reason"].startswith("rollout started by ")


def test_shadow_by_hand_off_and_history(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "seed")
    ok(db_url, "serve", "locations", "--model", FT, "--shadow", "25")
    state = run_json(db_url, "serve", "locations")
    assert (state["stage"], state["serve_percent"], state["shadow_percent"]) == ("shadow", 0, 25)
    assert not state["automatic"]
    ok(db_url, "serve", "locations", "--percent", "30", "--watch-percent", "5", "--force")
    state = run_json(db_url, "serve", "locations")
    assert (state["stage"], state["serve_percent"], state["watch_percent"]) == ("30%", 30, 5)
    assert state["model"] == FT  # the served model stays when only the share changes
    ok(db_url, "serve", "locations", "--off")
    assert "not served" in ok(db_url, "serve", "locations")
    history = run_json(db_url, "serve", "locations", "--history")
    assert [(h["from_stage"], h["to_stage"]) for h in reversed(history)] == [
        ("off", "shadow"),
        ("shadow", "30%"),
        ("30%", "off"),
    ]
    assert history[1]["reason"].startswith("by hand (") and history[0]["reason"].startswith("off")
    text = ok(db_url, "serve", "locations", "--history")
    assert "from_stage" in text and "by hand" in text


def test_state_shows_live_agreement_latency_and_cost(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "seed")
    ok(db_url, "serve", "locations", "--model", FT, "--shadow", "100")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow_comparison (call_id, namespace, kind, teacher_model, student_model,"
            " agreed, teacher_ms, student_ms, teacher_prompt_tokens, teacher_completion_tokens,"
            " student_prompt_tokens, student_completion_tokens)"
            " VALUES (%s, 'locations', 'shadow', %s, %s, %s, %s, %s, 1000, 20, 100, 20)",
            [(uuid.uuid4(), TEACHER, FT, i % 4 != 0, 800 + i, 90 + i) for i in range(8)]
            + [(uuid.uuid4(), TEACHER, FT, None, 800, None)],
        )
    conn.execute(
        "INSERT INTO serving_tally VALUES ('locations', 'p:1', date_trunc('minute', now()), 9, 1, 9, 4)"
    )
    state = run_json(db_url, "serve", "locations", "--last", "4")
    live = state["live"]
    assert live["last"] == {"agreement": 0.75, "samples": 4}
    assert live["hour"] == {"agreement": 0.75, "samples": 8, "failed": 1}
    assert live["student"]["latency_p50_ms"] == 93.5 and live["teacher"]["model"] == TEACHER
    assert live["student"]["cost_per_1k_calls_usd"] < live["teacher"]["cost_per_1k_calls_usd"]
    assert live["tally_hour"]["background_dropped"] == 4
    text = ok(db_url, "serve", "locations")
    assert "agreement: 0.750 over the last 8, 0.750 over the last hour" in text
    assert "dropped over budget 4" in text and "served by" in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--rollout", "auto"), "give --model"),
        (("--model", FT, "--rollout", "auto", "--percent", "5"), "leave out --percent"),
        (("--model", FT, "--rollout", "auto", "--steps", "50,25"), "--steps must increase"),
        (("--model", FT, "--rollout", "auto", "--steps", "5,x"), "comma-separated"),
        (("--model", FT, "--rollout", "auto", "--steps", "0,100"), "between 1 and 100"),
        (
            ("--model", FT, "--rollout", "auto", "--promote-at", "0.8", "--demote-below", "0.9"),
            "must not exceed --promote-at",
        ),
        (("--model", FT, "--steps", "5,100"), "add --rollout auto"),
        (("--off", "--model", FT), "--off stops serving"),
        (("--history", "--off"), "--history only shows"),
        (("--percent", "5"), "serves no model yet"),
        (("--model", FT, "--percent", "5"), "no clean eval"),
    ],
)
def test_bad_options_are_one_line(
    db_url: str, conn: Conn, args: tuple[str, ...], says: str
) -> None:
    add_row(conn, "locations", "seed")
    result = run(db_url, "serve", "locations", *args)
    assert result.exit_code != 0 and says in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_ns_set_compare(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "seed")
    assert run_json(db_url, "ns", "show", "locations")["compare"] == "exact"
    ok(db_url, "ns", "set", "locations", "--compare", "json")
    assert run_json(db_url, "ns", "show", "locations")["compare"] == "json"
    assert "compare: json" in ok(db_url, "ns", "show", "locations")
    ok(db_url, "ns", "set", "locations", "--compare", "")
    assert run_json(db_url, "ns", "show", "locations")["compare"] == "exact"
    bad = run(db_url, "ns", "set", "locations", "--compare", "  ")
    assert bad.exit_code == 2 and "--compare" in bad.stderr


def disagree(conn: Conn, row_id: int, agreed: bool, minutes_ago: int) -> None:
    call = uuid.uuid4()
    conn.execute(
        "INSERT INTO recorded_call (id, namespace, row_id) VALUES (%s, 'locations', %s)",
        [call, row_id],
    )
    conn.execute(
        "INSERT INTO shadow_comparison (call_id, namespace, kind, teacher_model, student_model,"
        " teacher_answer, student_answer, agreed, created_at) VALUES (%s, 'locations', 'shadow',"
        " %s, %s, %s, %s, %s, now() - make_interval(mins => %s))",
        [
            call,
            TEACHER,
            FT,
            json.dumps({"role": "assistant", "content": f"teacher {row_id}"}),
            json.dumps({"role": "assistant", "content": f"student {row_id}"}),
            agreed,
            minutes_ago,
        ],
    )


def test_list_and_show_disagreements(db_url: str, conn: Conn) -> None:
    a, b, c, d = (add_row(conn, "locations", f"p{i}", included=False) for i in range(4))
    disagree(conn, a, False, 30)
    disagree(conn, b, False, 5)
    disagree(conn, c, True, 1)  # agreed: not review work
    disagree(conn, a, True, 0)
    found = run_json(db_url, "list", "locations", "--disagreements")
    assert [r["id"] for r in found] == [b, a]  # the latest disagreement first
    pending = run_json(db_url, "list", "locations", "--disagreements", "--pending")
    assert [r["id"] for r in pending] == [b, a]
    shown = ok(db_url, "show", "locations", str(b))
    assert "disagreement (shadow" in shown and f"student {FT}: student {b}" in shown
    assert f"teacher: teacher {b}" in shown
    assert run_json(db_url, "show", "locations", str(d))["disagreement"] is None
    assert conn.execute("SELECT count(*) AS n FROM shadow_disagreement").fetchone() == {"n": 2}


def test_review_disagreements_first(db_url: str, conn: Conn) -> None:
    seen_most = add_row(conn, "locations", "popular", included=False)
    conn.execute(
        "UPDATE locations_openai_chat_completion SET times_seen = 50 WHERE id = %s", [seen_most]
    )
    disagreed = add_row(conn, "locations", "tricky", included=False)
    disagree(conn, disagreed, False, 1)
    child = spawn(db_url, "review", "locations", "--disagreements")
    child.expect("tricky")
    child.expect("student " + FT.replace("+", r"\+"))
    child.expect(r"\[i\]nclude")
    child.send("s")
    child.expect("popular")
    child.expect(r"\[i\]nclude")
    child.send("q")
    child.expect(pytest.importorskip("pexpect").EOF)

"""Issue 14's "done when", end to end: a real proxy, its decider, a student behind a fake API.

A rollout started with --rollout auto reaches 100% on a student that agrees,
steps back by itself within seconds once the student disagrees, every step is
in --history, and no client call fails meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import OpenAI

from tests.cli import run, run_json
from tests.factories import LONG_PROMPT
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import ProxyProcess, query

STUDENT = "locations-student"
BASE = "gpt-4o-2024-08-06"
KEY = "sk-student-secret-e2e"


@pytest.fixture
def student_api() -> Iterator[Running]:
    with Running(FakeOpenAI(api_key_prefix=KEY)) as running:
        yield running


def stage(db_url: str) -> str | None:
    rows = query(
        db_url, "SELECT rollout->>'stage' AS stage FROM namespace WHERE name = 'locations'"
    )
    return rows[0]["stage"] if rows else None


def drive(db_url: str, proxy: ProxyProcess, until: str, timeout: float) -> tuple[float, int]:
    """Client calls until the rollout is at ``until``: (seconds taken, calls made); any
    failed call fails the test."""
    client = OpenAI(base_url=f"{proxy.url}/ns/locations/v1", api_key="sk-client", max_retries=0)
    t0, calls = time.monotonic(), 0
    while stage(db_url) != until:
        assert time.monotonic() - t0 < timeout, f"not at {until} after {timeout}s: {stage(db_url)}"
        for _ in range(5):
            text = f"I live in city{calls}"
            reply = client.chat.completions.create(
                model=BASE,
                messages=[
                    {"role": "system", "content": LONG_PROMPT},
                    {"role": "user", "content": text},
                ],
            )
            assert reply.choices[0].message.content  # the client always gets an answer
            calls += 1
        time.sleep(0.05)
    return time.monotonic() - t0, calls


def test_rollout_reaches_100_and_steps_back_by_itself(
    db_url: str,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    assert run(db_url, "ns", "create", "locations", "--system-prompt", "Cities.").exit_code == 0
    started = run(
        db_url, "serve", "locations", "--model", STUDENT, "--endpoint", f"{student_api.url}/v1",
        "--endpoint-key-env", "STUDENT_KEY", "--rollout", "auto", "--min-samples", "10",
        "--watch-percent", "100",
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    query(
        db_url,
        "UPDATE namespace SET rollout = jsonb_set(jsonb_set(rollout, '{policy,window}', '10'),"
        " '{policy,min_window}', '5') WHERE name = 'locations' RETURNING name",
    )
    proxy = start_proxy(STUDENT_KEY=KEY, CURATION_ROLLOUT_INTERVAL="0.2")

    climbed, calls = drive(db_url, proxy, "100%", timeout=120)
    state = run_json(db_url, "serve", "locations")
    assert state["serve_percent"] == 100 and state["live"]["last"]["agreement"] == 1.0

    student_api.fake.answers[STUDENT] = lambda request: "Somewhere else"
    fell, _ = drive(db_url, proxy, "shadow", timeout=30)
    assert fell < 15, f"stepped back after {fell:.1f}s"
    history: list[dict[str, Any]] = run_json(db_url, "serve", "locations", "--history")
    assert [(h["from_stage"], h["to_stage"]) for h in reversed(history)] == [
        ("off", "shadow"),
        ("shadow", "5%"),
        ("5%", "25%"),
        ("25%", "50%"),
        ("50%", "100%"),
        ("100%", "shadow"),
    ]
    assert history[0]["reason"].startswith("demote: agreement")
    assert all(":" in h["decided_by"] for h in history[:-1])  # host:pid of the proxy
    print(f"climbed to 100% in {climbed:.1f}s ({calls} calls); stepped back in {fell:.1f}s")

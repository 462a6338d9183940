"""A job that never reached its provider, and ``--seed``: the CLI against the fake
OpenAI jobs API, the job rows in a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from curation.jobs.backends import JobSpec
from curation.jobs.backends.openai import job_params
from tests.cli import run
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI
from tests.harness import free_port, query

MODEL = "gpt-4o-mini-2024-07-18"
Conn = psycopg.Connection[dict[str, object]]


@pytest.fixture
def env(fake_openai: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-jobs",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def curated(conn: Conn, n: int) -> None:
    for i in range(n):
        add_row(conn, "locations", f"I was born in town {i}", f'["town {i}"]')


def submit(db_url: str, env: dict[str, str], *extra: str) -> int:
    result = run(
        db_url,
        "finetune",
        "submit",
        "locations",
        "--model",
        MODEL,
        "--validation-fraction",
        "0",
        *extra,
        env=env,
    )
    return result.exit_code


def test_wait_and_cancel_of_a_job_that_never_reached_the_provider(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 12)
    fake_openai.fail["create_job"] = 10  # more than the SDK's retries
    assert submit(db_url, env) == 12
    [job] = query(db_url, "SELECT id, status, provider_job_id FROM fine_tune_job")
    assert job["status"] == "create_failed" and job["provider_job_id"] is None
    # the provider is not asked again: wait and cancel must not even try to reach it
    away = {**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    waited = run(db_url, "finetune", "wait", str(job["id"]), "--interval", "0.01", env=away)
    assert waited.exit_code == 7, waited.output
    assert waited.stderr.strip().splitlines() == [
        f"Error: job {job['id']} never reached the openai backend (create_failed): submit it again"
    ]
    cancelled = run(db_url, "finetune", "cancel", str(job["id"]), env=away)
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.stdout and "finetune wait" not in cancelled.stdout
    [after] = query(db_url, "SELECT status, provider_job_id FROM fine_tune_job")
    assert after == {"status": "cancelled", "provider_job_id": None}
    assert fake_openai.jobs == {}
    again = run(db_url, "finetune", "wait", str(job["id"]), env=away)
    assert again.exit_code == 7 and "(cancelled)" in again.stderr


def test_a_seed_reaches_the_provider_and_the_job_row(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 12)
    assert submit(db_url, env, "--seed", "7") == 0
    [remote] = fake_openai.jobs.values()
    assert remote["seed"] == 7
    [job] = query(db_url, "SELECT hyperparameters FROM fine_tune_job")
    assert job["hyperparameters"]["seed"] == 7


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_a_seed_is_sent_only_when_given(seed: int | None) -> None:
    """0 is a seed like any other; only "none given" leaves the provider to choose."""
    params = job_params(JobSpec(base_model=MODEL, training_file="file-1", seed=seed))
    assert ("seed" in params) is (seed is not None)
    assert params.get("seed") == seed

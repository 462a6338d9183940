"""Fine-tuning jobs and the nightly retrain, through the real openai SDK and a fake provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from curation import config
from curation.jobs.provider import Provider
from tests.cli import run
from tests.factories import LONG_PROMPT, add_row
from tests.fake_openai import FakeOpenAI
from tests.harness import ROOT, free_port, query

MODEL = "gpt-4o-mini-2024-07-18"
Conn = psycopg.Connection[dict[str, object]]


@pytest.fixture
def env(fake_openai: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-jobs",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def curated(conn: Conn, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        add_row(conn, "locations", f"I was born in town {i}", f'["town {i}"]')
    conn.execute(
        "UPDATE namespace SET training_system_prompt = 'List the places.' WHERE name = 'locations'"
    )


def test_retrain_end_to_end_then_nothing_new(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 40)
    first = run(
        db_url, "retrain", "locations", "--model", MODEL, "--wait", "--interval", "0.01", env=env
    )
    assert first.exit_code == 0, first.output
    [job] = query(db_url, "SELECT * FROM fine_tune_job")
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith(
        f"ft:{MODEL}:org-fake:locations:"
    )
    assert job["fine_tuned_model"] in first.stdout and job["trained_tokens"] > 0
    [remote] = fake_openai.jobs.values()
    assert (
        remote["metadata"]["namespace"] == "locations" and remote["method"]["type"] == "supervised"
    )
    uploaded = b"".join(f["_content"] for f in fake_openai.files.values())
    assert b"List the places." in uploaded and LONG_PROMPT[:40].encode() not in uploaded
    assert "Fine-tuning job started" in first.stderr  # events shown while waiting
    lineage = query(
        db_url, "SELECT count(*) AS n FROM dataset_row WHERE dataset_id = %s", [job["dataset_id"]]
    )
    assert lineage[0]["n"] == 40

    again = run(db_url, "retrain", "locations", "--model", MODEL, env=env)
    assert again.exit_code == 10, again.output
    assert "nothing new" in again.stdout and len(fake_openai.jobs) == 1

    curated(conn, 1, start=40)
    third = run(db_url, "retrain", "locations", "--model", MODEL, env=env)
    assert third.exit_code == 0 and len(fake_openai.jobs) == 2


def test_too_few_examples(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 4)
    result = run(
        db_url, "retrain", "locations", "--model", MODEL, "--validation-fraction", "0", env=env
    )
    assert result.exit_code == 11
    assert "include 6 more" in result.stderr and fake_openai.files == {}


def test_job_failing_at_provider_is_reported(db_url: str, conn: Conn, env: dict[str, str]) -> None:
    curated(conn, 12)
    result = run(
        db_url,
        "finetune",
        "submit",
        "locations",
        "--model",
        MODEL,
        "--suffix",
        "please-fail",
        "--wait",
        "--interval",
        "0.01",
        env=env,
    )
    assert result.exit_code == 12
    assert "Training failed: the fake was told to fail." in result.stderr
    [job] = query(db_url, "SELECT status, error FROM fine_tune_job")
    assert job == {"status": "failed", "error": "Training failed: the fake was told to fail."}


def test_create_failure_recorded_and_retry_reuses_upload(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 12)
    fake_openai.fail["create_job"] = 10  # more than the SDK's retries
    failed = run(
        db_url, "retrain", "locations", "--model", MODEL, "--validation-fraction", "0", env=env
    )
    assert failed.exit_code == 12 and "answered 500" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) <= 3  # the export summary and one error line
    [job] = query(db_url, "SELECT status, training_file_id, provider_job_id FROM fine_tune_job")
    assert (
        job["status"] == "create_failed"
        and job["training_file_id"]
        and job["provider_job_id"] is None
    )
    uploads = len(fake_openai.files)
    fake_openai.fail.clear()
    retry = run(
        db_url, "retrain", "locations", "--model", MODEL, "--validation-fraction", "0", env=env
    )
    assert retry.exit_code == 0, retry.output
    assert len(fake_openai.files) == uploads  # the file was reused
    [job] = query(db_url, "SELECT status, training_file_id, provider_job_id FROM fine_tune_job")
    assert job["provider_job_id"] and job["status"] == "validating_files"


def test_two_concurrent_retrains_submit_once(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 300)
    cmd = [
        sys.executable,
        "-m",
        "curation",
        "--database-url",
        db_url,
        "retrain",
        "locations",
        "--model",
        MODEL,
    ]
    procs = [
        subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    codes = sorted(p.wait(120) for p in procs)
    assert codes in ([0, 10], [0, 13]), [p.stderr.read() for p in procs if p.stderr]  # type: ignore[union-attr]
    assert len(fake_openai.jobs) == 1
    assert (
        query(db_url, "SELECT count(*) AS n FROM fine_tune_job WHERE provider_job_id IS NOT NULL")[
            0
        ]["n"]
        == 1
    )


def test_status_list_cancel(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    curated(conn, 12)
    assert run(db_url, "finetune", "submit", "locations", "--model", MODEL, env=env).exit_code == 0
    [job] = query(db_url, "SELECT id, provider_job_id FROM fine_tune_job")
    status = run(db_url, "finetune", "status", job["provider_job_id"], "--json", env=env)
    assert status.exit_code == 0
    data = json.loads(status.stdout)
    assert data["status"] == "queued" and any(
        "Validating training file" in e["message"] for e in data["events"]
    )
    listed = run(db_url, "finetune", "list", "locations", "--json", env=env)
    assert [j["provider_job_id"] for j in json.loads(listed.stdout)] == [job["provider_job_id"]]
    cancelled = run(db_url, "finetune", "cancel", str(job["id"]), env=env)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    waited = run(db_url, "finetune", "wait", str(job["id"]), "--interval", "0.01", env=env)
    assert waited.exit_code == 12 and "cancelled" in waited.stderr
    assert run(db_url, "finetune", "status", "ftjob-nope", env=env).exit_code == 3


def test_one_line_errors(db_url: str, conn: Conn, env: dict[str, str], tmp_path: Path) -> None:
    curated(conn, 12)
    no_key = run(
        db_url, "retrain", "locations", "--model", MODEL, env={**env, "OPENAI_API_KEY": ""}
    )
    assert no_key.exit_code == 2 and "OPENAI_API_KEY is not set" in no_key.stderr
    down = run(
        db_url,
        "retrain",
        "locations",
        "--model",
        MODEL,
        env={**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"},
    )
    assert down.exit_code == 12 and "cannot reach the provider" in down.stderr
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            {
                "models": {
                    "acme-small": {
                        "encoding": "o200k_base",
                        "max_example_tokens": 8192,
                        "default_epochs": 2,
                        "training_per_1m": 1,
                        "input_per_1m": 0.1,
                        "output_per_1m": 0.2,
                        "ft_input_per_1m": 0.1,
                        "ft_output_per_1m": 0.2,
                    }
                }
            }
        )
    )
    refused = run(
        db_url,
        "retrain",
        "locations",
        "--model",
        "acme-small",
        env={**env, "CURATION_MODELS_FILE": str(models)},
    )
    assert refused.exit_code == 12 and "not available for fine-tuning" in refused.stderr


def test_provider_list_follows_pagination(fake_openai: FakeOpenAI) -> None:
    fake_openai.page_cap = 10
    for i in range(25):
        fake_openai.jobs[f"ftjob-{i:08d}"] = {
            "object": "fine_tuning.job",
            "id": f"ftjob-{i:08d}",
            "model": MODEL,
            "created_at": 1,
            "status": "succeeded",
            "_events": [],
        }
    provider = Provider(
        config.load({"openai_api_key": "sk-x", "openai_base_url": f"{fake_openai.url}/v1"}, env={})
    )  # type: ignore[attr-defined]
    listed: list[dict[str, Any]] = provider.list_jobs(limit=100)
    assert len(listed) == 25 and listed[0]["id"] == "ftjob-00000024"

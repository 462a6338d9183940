"""Fine-tuning jobs and the nightly retrain, through the real openai SDK and a fake provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation import config
from curation.errors import UpstreamError
from curation.jobs.backends import STATUSES, JobSpec
from curation.jobs.backends.openai import OpenAIBackend, job_params, to_event
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
    endpoint = f"--endpoint {env['OPENAI_BASE_URL']} --endpoint-key-env OPENAI_API_KEY"
    assert f"serve it: curation serve locations --model {job['fine_tuned_model']} {endpoint}" in (
        first.stdout
    )
    assert job["backend"] == "openai" and job["result_location"] == env["OPENAI_BASE_URL"]
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
    backend = OpenAIBackend(
        config.load({"openai_api_key": "sk-x", "openai_base_url": f"{fake_openai.url}/v1"}, env={})
    )  # type: ignore[attr-defined]
    listed = backend.list(limit=100)
    assert len(listed) == 25 and listed[0].id == "ftjob-00000024"
    assert {j.status for j in listed} == {"succeeded"}


def test_retrain_local_wait_trains_in_a_child_worker(
    db_url: str, conn: Conn, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No worker running: `retrain --backend local --wait` starts one and follows it to the end."""
    curated(conn, 12)
    env = {"CURATION_DATA_DIR": str(tmp_path / "data"), "OPENAI_API_KEY": ""}
    args = ["--model", str(tiny_model_dir), "--epochs", "1", "--validation-fraction", "0"]
    result = run(db_url, "retrain", "locations", "--backend", "local", *args, "--wait", env=env)
    assert result.exit_code == 0, result.output
    [job] = query(db_url, "SELECT * FROM fine_tune_job")
    assert job["backend"] == "local" and job["status"] == "succeeded", job
    assert job["provider_job_id"] == f"local-{job['id']}" and job["fine_tuned_model"]
    assert Path(job["result_location"]).is_dir()
    assert Path(job["training_file_id"]).is_file()  # the export outlives the command
    assert f"serve it: curation student start {job['id']}" in result.stdout
    events = [line for line in result.stderr.splitlines() if " info: " in line]
    assert len(events) >= 3  # one line per event off a terminal: queued, trained, succeeded

    chosen = run(
        db_url, "ns", "set", "locations", "--backend", "local", "--model", str(tiny_model_dir)
    )
    assert chosen.exit_code == 0, chosen.output
    again = run(db_url, "retrain", "locations", *args[2:], env=env)  # the namespace's defaults
    assert again.exit_code == 10 and "local job" in again.stdout, again.output


def test_providers_needing_one_more_call_say_what_to_run() -> None:
    def backend(url: str) -> OpenAIBackend:
        return OpenAIBackend(config.load({"openai_api_key": "k", "openai_base_url": url}, env={}))

    model = "gpt-4.1-mini-2025-04-14.ft-b044a9d3cf9c"
    azure = backend("https://myres.openai.azure.com/openai/v1/")
    step = azure.next_step("ftjob-1", model, "gpt-4.1-mini-2025-04-14")
    assert step is not None and "az cognitiveservices account deployment create" in step
    assert "--name myres " in step and f"--model-name {model} " in step
    deployment = azure.served_model(model)
    assert (
        deployment == "gpt-4-1-mini-2025-04-14-ft-b044a9d3cf9c"
        and f"--deployment-name {deployment}" in step
    )

    nebius = backend("https://api.tokenfactory.nebius.com/v1/")
    step = nebius.next_step("ftjob-9", "meta-llama/x:ft", "meta-llama/Meta-Llama-3.1-8B-Instruct")
    assert step is not None and "https://api.tokenfactory.nebius.com/v0/models" in step
    assert "/v1/fine_tuning/jobs/ftjob-9/checkpoints" in step and '"source": "ftjob-9:' in step
    spec = JobSpec(base_model="meta-llama/Meta-Llama-3.1-8B-Instruct", training_file="file-1")
    assert job_params(spec, lora_flag=True)["method"]["supervised"]["hyperparameters"] == {
        "lora": True
    }

    plain = backend("https://api.openai.com/v1")
    assert plain.next_step("ftjob-2", model, "gpt-4.1-mini") is None
    assert plain.served_model(model) == model and "lora" not in str(job_params(spec))


OFFLINE = OpenAIBackend(
    config.load({"openai_api_key": "k", "openai_base_url": "http://127.0.0.1:9/v1"}, env={})
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "id",
        "status",
        "fine_tuned_model",
        "trained_tokens",
        "error",
        "created_at",
        "message",
        "level",
        "data",
    ]
)


@given(st.dictionaries(KEYS | st.text(max_size=4), JSON, max_size=8))
def test_reading_an_openai_shaped_answer_is_total(answer: dict[str, object]) -> None:
    """Whatever JSON an OpenAI-shaped provider sends for a job or an event: a record or the one error."""
    try:
        job = OFFLINE._remote(answer)
    except UpstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert job.status in STATUSES and (job.model is None or isinstance(job.model, str))
        assert job.trained_tokens is None or isinstance(job.trained_tokens, int)
    event = to_event(answer)
    assert isinstance(event.created_at, float) and "\n" not in event.message


def test_hyperparameters_and_merge_reach_the_job(
    db_url: str, conn: Conn, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`-H KEY=VALUE` (JSON values) and `--merge` are stored on the job and checked at submit."""
    curated(conn, 12)
    env = {"CURATION_DATA_DIR": str(tmp_path / "data"), "OPENAI_API_KEY": ""}
    base = ["finetune", "submit", "locations", "--backend", "local", "--model", str(tiny_model_dir)]
    result = run(db_url, *base, "-H", "lora_r=8", "-H", "learning_rate=1e-4", "--merge", env=env)
    assert result.exit_code == 0, result.output
    [job] = query(db_url, "SELECT hyperparameters FROM fine_tune_job")
    assert {"lora_r": 8, "learning_rate": 1e-4, "merge": True}.items() <= job[
        "hyperparameters"
    ].items()
    for bad in ("lora_r", "lora_r=-1", "=3"):  # the export's summary may come first
        refused = run(db_url, *base, "-H", bad, env=env)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
        assert refused.exit_code == 2 and len(errors) == 1, refused.output
        assert "Traceback" not in refused.output and errors[0] == refused.stderr.splitlines()[-1]

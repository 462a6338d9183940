"""The together backend through the real ``together`` SDK against a fake of Together's HTTP API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation import config
from curation.errors import InvalidInput, UpstreamError
from curation.jobs.backends import STATUSES, TERMINAL, JobSpec, RemoteJob
from curation.jobs.backends.together import (
    STATUS_MAP,
    TogetherBackend,
    error_message,
    for_together,
    to_event,
)
from tests.cli import run, spawn
from tests.factories import add_row
from tests.fake_together import FakeTogether, Running
from tests.harness import free_port, query

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
Conn = psycopg.Connection[dict[str, object]]


@pytest.fixture
def fake() -> Iterator[FakeTogether]:
    with Running(FakeTogether(tunable=(MODEL, "acme/tiny-chat"))) as running:
        yield running


def backend(fake: FakeTogether, key: str = "tg-test") -> TogetherBackend:
    settings = config.load({"together_api_key": key, "together_base_url": fake.url}, env={})
    return TogetherBackend(settings, max_retries=0)


def chat_file(tmp_path: Path, n: int = 12, name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    lines = [
        {
            "messages": [
                {"role": "system", "content": "List the places."},
                {"role": "user", "content": f"I was born in town {i}"},
                {"role": "assistant", "content": f'["town {i}"]'},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def dpo_file(tmp_path: Path, n: int = 12) -> Path:
    """OpenAI's preference shape, exactly as `curation export --format dpo` writes it."""
    path = tmp_path / "dpo.jsonl"
    lines = [
        {
            "input": {
                "messages": [
                    {"role": "system", "content": "List the places."},
                    {"role": "user", "content": f"I was born in Pariss {i}"},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": '["Paris"]'}],
            "non_preferred_output": [{"role": "assistant", "content": "[]"}],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def until_done(tg: TogetherBackend, job_id: str) -> list[RemoteJob]:
    seen = [tg.status(job_id)]
    while seen[-1].status not in TERMINAL:
        assert len(seen) < 20, seen
        seen.append(tg.status(job_id))
    return seen


def created(fake: FakeTogether) -> dict[str, Any]:
    bodies: list[dict[str, Any]] = [b for m, p, b in fake.requests if p == "/v1/fine-tunes"]
    return bodies[-1]


def test_sft_lifecycle_events_and_model_name(fake: FakeTogether, tmp_path: Path) -> None:
    tg = backend(fake)
    train = tg.upload(chat_file(tmp_path))
    valid = tg.upload(chat_file(tmp_path, 3, "validation.jsonl"))
    assert fake.files[train]["Processed"] and fake.files[train]["_content"].count(b"\n") == 12
    spec = JobSpec(
        base_model=MODEL,
        training_file=train,
        validation_file=valid,
        epochs=2,
        seed=7,
        suffix="locations-" + "x" * 60,
    )
    job = tg.submit(spec)
    assert job.status == "queued" and job.model is None  # Together's "pending"
    body = created(fake)
    assert body["training_type"]["type"] == "Lora"  # LoRA by default
    assert body["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert body["n_epochs"] == 2 and body["random_seed"] == 7 and body["n_evals"] > 0
    assert len(body["suffix"]) == 40 and body["validation_file"] == valid

    statuses = [j.status for j in until_done(tg, job.id)]
    assert statuses == ["queued", "running", "running", "succeeded"]
    done = tg.status(job.id)
    assert done.model == fake.jobs[job.id]["model_output_name"]
    assert done.model is not None and done.model.startswith(
        "fakeuser/Meta-Llama-3.1-8B-Instruct-Reference-locations-"
    )
    assert done.result_location == f"{fake.url}/v1" and done.trained_tokens
    events = tg.events(job.id)
    assert [e.data["type"] for e in events][:2] == ["job_pending", "job_start"]
    assert [e.data["step"] for e in events if "step" in e.data] == [5, 10]
    assert all(e.data.get("total_steps") == 10 for e in events if "step" in e.data)
    assert len({e.id for e in events}) == len(events)  # distinct without an id from Together
    assert tg.events(job.id, limit=2) == events[-2:]
    assert [j.id for j in tg.list()] == [job.id]


def test_dpo_file_uploads_as_exported(fake: FakeTogether, tmp_path: Path) -> None:
    tg = backend(fake)
    train = tg.upload(dpo_file(tmp_path))
    assert fake.files[train]["validation_report"]["dataset_format"] == "PREFERENCE_OPENAI"
    job = tg.submit(JobSpec(base_model=MODEL, training_file=train, method="dpo"))
    assert created(fake)["training_method"]["method"] == "dpo"
    assert until_done(tg, job.id)[-1].status == "succeeded"
    with pytest.raises(UpstreamError, match="sft training needs CONVERSATION"):
        tg.submit(JobSpec(base_model=MODEL, training_file=train))


def test_tool_examples_lose_only_what_together_refuses(fake: FakeTogether, tmp_path: Path) -> None:
    """OpenAI's top-level parallel_tool_calls is dropped at upload; tools stay."""
    tools = [{"type": "function", "function": {"name": "find", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "find", "arguments": "{}"}}
    example = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [call]},
        ],
        "tools": tools,
        "parallel_tool_calls": False,
    }
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(example) + "\n")
    raw = httpx.post(
        f"{fake.url}/v1/files/upload",
        headers={"Authorization": "Bearer tg-test"},
        data={"purpose": "fine-tune", "file_name": "train.jsonl"},
        files={"file": path.read_bytes()},
    ).json()
    assert raw["validation_report"]["error"] == 'Line 1: Found extra column "parallel_tool_calls"'

    file_id = backend(fake).upload(path)
    sent = json.loads(fake.files[file_id]["_content"])
    assert sent == {"messages": example["messages"], "tools": tools}
    assert fake.files[file_id]["Processed"] and json.loads(path.read_text()) == example
    (tmp_path / "clean").mkdir()
    clean = chat_file(tmp_path / "clean")
    assert for_together(clean) == clean  # already Together's: no copy
    assert [f.name for f in clean.parent.iterdir()] == ["train.jsonl"]


def test_cancel(fake: FakeTogether, tmp_path: Path) -> None:
    tg = backend(fake)
    job = tg.submit(JobSpec(base_model=MODEL, training_file=tg.upload(chat_file(tmp_path))))
    asked = tg.cancel(job.id)
    assert asked.status == "running" and asked.raw["status"] == "cancel_requested"
    assert tg.status(job.id).status == "cancelled"
    assert any(e.data["type"] == "cancel_requested" for e in tg.events(job.id))
    with pytest.raises(UpstreamError, match="answered 400: Cannot cancel a job with status"):
        tg.cancel(job.id)


def test_failed_job_reason_comes_from_its_events(fake: FakeTogether, tmp_path: Path) -> None:
    tg = backend(fake)
    spec = JobSpec(base_model=MODEL, training_file=tg.upload(chat_file(tmp_path)), suffix="fail")
    final = until_done(tg, tg.submit(spec).id)[-1]
    assert final.status == "failed" and final.error == "Training failed: the fake was told to fail."


def test_errors_are_one_line(fake: FakeTogether, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="TOGETHER_API_KEY is not set"):
        TogetherBackend(config.load({}, env={}))
    with pytest.raises(UpstreamError, match=r"answered 401: Invalid API key provided$"):
        backend(fake, key="wrong").list()
    tg = backend(fake)
    with pytest.raises(UpstreamError, match="answered 404: Model acme/nope is not supported"):
        tg.submit(JobSpec(base_model="acme/nope", training_file=tg.upload(chat_file(tmp_path))))
    with pytest.raises(UpstreamError, match="answered 404: Fine-tune job not found"):
        tg.status("ft-nope")
    fake.fail["create"] = 1
    with pytest.raises(UpstreamError, match="creating the job: Together answered 500"):
        tg.submit(JobSpec(base_model=MODEL, training_file=tg.upload(chat_file(tmp_path))))
    down = config.load(
        {"together_api_key": "tg-x", "together_base_url": f"http://127.0.0.1:{free_port()}"},
        env={},
    )
    with pytest.raises(UpstreamError, match=r"cannot reach Together at http://127\.0\.0\.1"):
        TogetherBackend(down, max_retries=0).list()


def test_every_status_maps_to_ours() -> None:
    assert set(STATUS_MAP.values()) <= set(STATUSES)
    assert STATUS_MAP["completed"] == "succeeded" and STATUS_MAP["error"] == "failed"
    odd = to_event({"created_at": "not a time", "type": "warning", "level": "legacy_iwarning"})
    assert odd.level == "warn" and odd.created_at == 0.0 and odd.message == "warning"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
WIRE_KEYS = st.sampled_from(
    [
        "id",
        "status",
        "model_output_name",
        "token_count",
        "created_at",
        "type",
        "message",
        "level",
        "hash",
        "step",
        "total_steps",
        "checkpoint_path",
        "error",
    ]
)
ANSWERS = st.dictionaries(WIRE_KEYS | st.text(max_size=4), JSON, max_size=8)
OFFLINE = TogetherBackend(
    config.load({"together_api_key": "tg-x", "together_base_url": "http://127.0.0.1:9"}, env={})
)


@given(ANSWERS)
def test_reading_togethers_answers_is_total(answer: dict[str, Any]) -> None:
    """Whatever JSON Together sends for a job or an event: a record or the one error."""
    try:
        job = OFFLINE._remote(answer)
    except UpstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert job.status in STATUSES and job.id == answer["id"]
        assert job.trained_tokens is None or isinstance(job.trained_tokens, int)
    event = to_event(answer)
    assert "\n" not in event.message and isinstance(event.created_at, float)
    assert "\n" not in error_message(answer, "fallback")


def test_config_masks_the_together_key() -> None:
    env = {
        "TOGETHER_API_KEY": "tgp_v1_secretsecretsecret9876",
        "TOGETHER_BASE_URL": "https://t.example",
    }
    result = run(None, "config", "--json", env=env)
    data = json.loads(result.stdout)
    assert data["together_api_key"] == "****9876" and "secretsecret" not in result.stdout
    assert data["together_base_url"] == "https://t.example"


# -- through the CLI and the database ----------------------------------------


@pytest.fixture
def env(fake: FakeTogether, tmp_path: Path) -> dict[str, str]:
    models = tmp_path / "models.json"
    tiny = {
        "backend": "together",
        "encoding": "o200k_base",
        "max_example_tokens": 8192,
        "default_epochs": 2,
        "training_per_1m": 0.48,
    }
    models.write_text(json.dumps({"models": {"acme/tiny-chat": tiny}}))
    return {
        "TOGETHER_API_KEY": "tg-test-cli",
        "TOGETHER_BASE_URL": fake.url,
        "OPENAI_API_KEY": "",
        "CURATION_MODELS_FILE": str(models),
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def curated(conn: Conn, n: int, start: int = 0, corrected: bool = False) -> None:
    for i in range(start, start + n):
        fix = {"role": "assistant", "content": f'["town {i}"]'} if corrected else None
        add_row(conn, "locations", f"I was born in town {i}", "[]", corrected=fix)
    conn.execute(
        "UPDATE namespace SET training_system_prompt = 'List the places.' WHERE name = 'locations'"
    )


def test_retrain_on_together_end_to_end(
    db_url: str, conn: Conn, env: dict[str, str], fake: FakeTogether
) -> None:
    curated(conn, 20)
    first = run(
        db_url,
        "retrain",
        "locations",
        "--model",
        "acme/tiny-chat",
        "--wait",
        "--interval",
        "0.01",
        env=env,
    )
    assert first.exit_code == 0, first.output
    [job] = query(db_url, "SELECT * FROM fine_tune_job")
    [remote] = fake.jobs.values()
    assert (
        job["backend"] == "together" and job["provider_job_id"] == remote["id"]
    )  # from the catalogue
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == remote["model_output_name"]
    assert job["result_location"] == f"{fake.url}/v1" and job["trained_tokens"] > 0
    assert job["training_file_id"] in fake.files and job["validation_file_id"] in fake.files
    assert "Step 10/10" in first.stderr and "Job finished" in first.stderr  # events while waiting
    assert remote["model_output_name"] in first.stdout and "tg endpoints deploy" in first.stdout
    assert (
        f"serve it: curation serve locations --model {remote['model_output_name']} "
        f"--endpoint {fake.url}/v1 --endpoint-key-env TOGETHER_API_KEY"
    ) in first.stdout

    again = run(db_url, "retrain", "locations", "--model", "acme/tiny-chat", env=env)
    assert again.exit_code == 10 and "together job" in again.stdout, again.output

    listed = run(db_url, "finetune", "list", "--json", env=env)
    assert [(j["backend"], j["status"]) for j in json.loads(listed.stdout)] == [
        ("together", "succeeded")
    ]
    status = run(db_url, "finetune", "status", remote["id"], "--json", env=env)
    data = json.loads(status.stdout)
    assert data["backend"] == "together" and any(
        e["data"].get("type") == "job_complete" for e in data["events"]
    )


def test_namespace_default_backend_dpo_and_cancel(
    db_url: str, conn: Conn, env: dict[str, str], fake: FakeTogether
) -> None:
    curated(conn, 12, corrected=True)
    bad = run(db_url, "ns", "set", "locations", "--backend", "nope", env=env)
    assert bad.exit_code == 2 and "use one of local, openai, together" in bad.stderr
    chosen = run(
        db_url, "ns", "set", "locations", "--backend", "together", "--model", MODEL, env=env
    )
    assert chosen.exit_code == 0, chosen.output
    shown = json.loads(run(db_url, "ns", "show", "locations", "--json", env=env).stdout)
    assert shown["backend"] == "together" and shown["base_model"] == MODEL

    models = json.loads(Path(env["CURATION_MODELS_FILE"]).read_text())
    models["models"][MODEL] = {"encoding": "o200k_base", "tokenizer": None}  # no download in tests
    Path(env["CURATION_MODELS_FILE"]).write_text(json.dumps(models))
    submitted = run(
        db_url,
        "finetune",
        "submit",
        "locations",
        "--method",
        "dpo",
        "--validation-fraction",
        "0",
        env=env,
    )
    assert submitted.exit_code == 0, submitted.output
    [job] = query(db_url, "SELECT id, backend, method, provider_job_id FROM fine_tune_job")
    assert job["backend"] == "together" and job["method"] == "dpo"
    assert created(fake)["training_method"]["method"] == "dpo" and created(fake)["model"] == MODEL

    cancelled = run(db_url, "finetune", "cancel", str(job["id"]), env=env)
    assert cancelled.exit_code == 0 and "cancel requested" in cancelled.stdout, cancelled.output
    waited = run(db_url, "finetune", "wait", str(job["id"]), "--interval", "0.01", env=env)
    assert waited.exit_code == 12 and "cancelled" in waited.stderr
    assert len(waited.stderr.strip().splitlines()) >= 2  # the events, then one error line


def test_unknown_backend_and_missing_key(db_url: str, conn: Conn, env: dict[str, str]) -> None:
    curated(conn, 12)
    unknown = run(
        db_url, "retrain", "locations", "--model", "acme/tiny-chat", "--backend", "nope", env=env
    )
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().endswith(
        "unknown backend 'nope': use one of local, openai, together"
    )
    no_key = run(
        db_url,
        "retrain",
        "locations",
        "--model",
        "acme/tiny-chat",
        env={**env, "TOGETHER_API_KEY": ""},
    )
    assert no_key.exit_code == 2 and "TOGETHER_API_KEY is not set" in no_key.stderr
    assert len(no_key.stderr.strip().splitlines()) == 1


def test_wait_on_a_terminal_draws_a_progress_bar(
    db_url: str, conn: Conn, env: dict[str, str], fake: FakeTogether
) -> None:
    curated(conn, 12)
    submitted = run(db_url, "finetune", "submit", "locations", "--model", "acme/tiny-chat", env=env)
    assert submitted.exit_code == 0, submitted.output
    [job] = query(db_url, "SELECT id FROM fine_tune_job")
    child = spawn(db_url, "finetune", "wait", str(job["id"]), "--interval", "0.01", env=env)
    child.expect(r"training .*100%")
    child.expect("succeeded, model fakeuser/tiny-chat-locations-")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

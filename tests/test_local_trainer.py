"""The local backend: TRL + PEFT LoRA training in a worker, its state in PostgreSQL.

Unit tests (no torch) cover the data conversion, the hyperparameters and the
checkpoint choice; queue tests cover claiming, liveness and cancel on the
real database; the slow tests train the tiny model of ``tests/tinymodel.py``
through the real ``curation train-worker`` process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from curation import config
from curation.db import local_jobs
from curation.errors import InvalidInput
from curation.jobs.backends import JobSpec
from curation.jobs.backends.local import LocalBackend
from curation.jobs.worker import worker_name
from curation.train import checkpoints, data, progress
from curation.train import config as train_config
from tests.cli import run
from tests.factories import add_row
from tests.harness import ROOT

Conn = psycopg.Connection[dict[str, Any]]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CITIES = ["Paris", "Berlin", "London", "Madrid", "Rome", "Lisbon"]


def chat_example(i: int, city: str) -> dict[str, Any]:
    user = {"role": "user", "content": f"What is the weather in {city} today?"}
    if i % 2:
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        return {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                user,
                {"role": "assistant", "tool_calls": [call]},
            ],
            "tools": TOOLS,
            "parallel_tool_calls": False,
        }
    return {"messages": [user, {"role": "assistant", "content": f"It is sunny in {city}."}]}


def preference(city: str) -> dict[str, Any]:
    return {
        "input": {
            "messages": [{"role": "user", "content": f"What is the weather in {city} today?"}],
            "tools": TOOLS,
        },
        "preferred_output": [{"role": "assistant", "content": f"It is sunny in {city}."}],
        "non_preferred_output": [{"role": "assistant", "content": "Sorry, I cannot help."}],
    }


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


# --- the data, pure ---------------------------------------------------------


def test_sft_row_keeps_the_conversation_and_hands_tools_over_as_json() -> None:
    row = data.sft_row(chat_example(1, "Paris"))
    assistant = row["messages"][-1]
    assert assistant["content"] == ""  # templates concatenate content: never missing
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert json.loads(row["tools"]) == TOOLS
    assert "parallel_tool_calls" not in row
    assert data.sft_row(chat_example(0, "Rome"))["tools"] is None


def test_arguments_take_the_form_the_template_wants() -> None:
    row = data.sft_row(chat_example(1, "Paris"), "dict")
    assert row["messages"][-1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    # what is not a JSON object stays the teacher's exact text
    assert data.argument_form("not json", "dict") == "not json"
    assert data.argument_form("[1, 2]", "dict") == "[1, 2]"
    assert data.argument_form({"a": 1}, "string") == '{"a": 1}'


def test_text_parts_become_one_string() -> None:
    message = data.message(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert message == {"role": "user", "content": "ab"}


def test_dpo_row_is_trls_conversational_preference_shape() -> None:
    row = data.dpo_row(preference("Oslo"))
    assert row["prompt"] == [{"role": "user", "content": "What is the weather in Oslo today?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "It is sunny in Oslo."}]
    assert row["rejected"][0]["content"] == "Sorry, I cannot help."
    assert json.loads(row["tools"]) == TOOLS


def test_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(chat_example(0, "Rome")) + "\n{not json\n")
    with pytest.raises(InvalidInput, match=r"train\.jsonl:2 is not JSON"):
        data.rows(path, "supervised", "string")
    write_jsonl(path, [{"messages": "hello"}])
    with pytest.raises(InvalidInput, match=r"train\.jsonl:1 is not a supervised example"):
        data.rows(path, "supervised", "string")
    write_jsonl(path, [chat_example(0, "Rome")])
    with pytest.raises(InvalidInput, match="not a dpo example"):
        data.rows(path, "dpo", "string")


def test_detect_argument_form() -> None:
    assert data.detect_argument_form('"arguments": {"curation_probe": 1}') == "string"
    assert data.detect_argument_form('"arguments": "{\\"curation_probe\\": 1}"') == "dict"
    assert data.detect_argument_form(None) == "dict"


def test_hyperparameters_are_checked_at_submit() -> None:
    cfg = train_config.parse({"n_epochs": 2, "seed": None, "batch_size": "auto", "merge": "true"})
    assert cfg.n_epochs == 2.0 and cfg.seed == 42 and cfg.batch_size == 4 and cfg.merge
    with pytest.raises(InvalidInput, match=r"unknown hyperparameter 'lr'.*learning_rate"):
        train_config.parse({"lr": 1})
    with pytest.raises(InvalidInput, match="lora_r=0 is not valid: must be positive"):
        train_config.parse({"lora_r": 0})
    with pytest.raises(InvalidInput, match="tool_arguments='json'"):
        train_config.parse({"tool_arguments": "json"})


def test_resume_skips_a_checkpoint_killed_while_being_written(tmp_path: Path) -> None:
    assert checkpoints.last_complete(tmp_path / "none") is None
    for step, state in ((2, "{}"), (4, "{}"), (6, '{"trunc')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.STATE_FILE).write_text(state)
    (tmp_path / "checkpoint-8").mkdir()  # nothing written yet
    assert checkpoints.last_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_each_trainer_log_becomes_one_event() -> None:
    def event(logs: dict[str, float], step: int, rate: float) -> tuple[str, dict[str, Any]]:
        found = progress.describe(logs, step, 10, rate)
        assert found is not None
        return found

    message, numbers = event({"loss": 2.5, "epoch": 0.5}, 3, 1234.56)
    assert message == "step 3/10: train loss 2.5000, 1,235 tokens/s"
    assert numbers["train_loss"] == 2.5 and numbers["max_steps"] == 10
    message, numbers = event({"eval_loss": 2.0}, 4, 0.0)
    assert message == "step 4/10: eval loss 2.0000" and numbers["eval_loss"] == 2.0
    message, _ = event({"train_runtime": 2.0, "train_samples_per_second": 5.0}, 10, 300.0)
    assert message == "trained 10 steps in 2.0s: 5.00 examples/s, 300 tokens/s"
    assert progress.describe({"grad_norm": 1.0}, 1, 10, 0.0) is None


def test_the_commands_never_import_the_training_stack() -> None:
    code = (
        "import sys, curation.cli, curation.jobs.backends.local, curation.jobs.worker\n"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'datasets', 'accelerate'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- the queue, on the real database ----------------------------------------


@pytest.fixture
def backend(db_url: str, tmp_path: Path) -> Iterator[LocalBackend]:
    settings = config.Settings(database_url=db_url, data_dir=tmp_path / "data")
    made = LocalBackend(settings)
    yield made
    for child in made.children.values():  # a test that failed midway leaves no worker behind
        if child.poll() is None:
            child.kill()
            child.wait()


def new_job(conn: Conn, namespace: str = "weather", base_model: str = "some/model") -> int:
    conn.execute("SELECT curation_create_namespace(%s)", [namespace])
    row = conn.execute(
        "INSERT INTO fine_tune_job (namespace, base_model, suffix, method, hyperparameters)"
        " VALUES (%s, %s, %s, 'supervised', '{}') RETURNING id",
        [namespace, base_model, namespace],
    ).fetchone()
    assert row is not None
    return int(row["id"])


def submit(
    conn: Conn,
    backend: LocalBackend,
    train: Path,
    *,
    base_model: str = "some/model",
    validation: Path | None = None,
    method: str = "supervised",
    **hyperparameters: Any,
) -> str:
    """What `finetune submit --backend local` does: record, upload, submit, record."""
    job_id = new_job(conn, base_model=base_model)
    remote = backend.submit(
        JobSpec(
            base_model=base_model,
            training_file=backend.upload(train),
            validation_file=backend.upload(validation) if validation else None,
            method=method,
            hyperparameters=hyperparameters,
            local_job_id=job_id,
        )
    )
    conn.execute(
        "UPDATE fine_tune_job SET provider_job_id = %s, status = %s WHERE id = %s",
        [remote.id, remote.status, job_id],
    )
    return remote.id


def session(db_url: str, worker: str) -> Conn:
    """A connection named as ``worker``'s: the worker is alive while it is open."""
    conn = psycopg.connect(db_url, autocommit=True, row_factory=dict_row)
    local_jobs.name_session(conn, worker)
    return conn


def die(conn: Conn, worker_session: Conn, worker: str) -> None:
    """The worker dies: its session ends with it (the server notices within moments)."""
    worker_session.close()
    deadline = time.monotonic() + 10
    while local_jobs.worker_connected(conn, worker) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_worker_name_always_fits_its_session_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "höst-" + "x" * 80)
    name = worker_name()
    assert name.isascii() and len(local_jobs.SESSION_PREFIX + name) <= 63
    assert name.startswith("h-st-xxx")


def test_one_worker_claims_a_job_and_a_dead_workers_job_is_claimed_again(
    db_url: str, conn: Conn, backend: LocalBackend, tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat_example(0, "Rome")])
    ref = submit(conn, backend, train)
    assert backend.status(ref).status == "queued"
    first, second = session(db_url, "host:1"), session(db_url, "host:2")
    job = local_jobs.claim(first, "host:1", stale_after=60)
    assert job is not None and job.status == "running" and job.attempts == 1
    assert local_jobs.claim(second, "host:2", stale_after=60) is None  # held by a live worker
    assert local_jobs.beat(first, job.id, "host:1") == (True, False)
    die(conn, first, "host:1")
    again = local_jobs.claim(second, "host:2", stale_after=60)
    assert again is not None and again.id == job.id and again.attempts == 2
    assert local_jobs.beat(second, job.id, "host:1") == (False, False)  # no longer host:1's
    assert local_jobs.finish(second, job.id, "host:1", "succeeded") is None
    second.close()


def test_workers_claiming_at_once_never_share_a_job(
    db_url: str, conn: Conn, backend: LocalBackend, tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [chat_example(0, "Rome")])
    for _ in range(3):
        submit(conn, backend, train)
    workers = [session(db_url, f"host:{n}") for n in range(6)]
    start = threading.Barrier(len(workers))

    def claim(n: int) -> int | None:
        start.wait()
        job = local_jobs.claim(workers[n], f"host:{n}", stale_after=60)
        return job.id if job else None

    with ThreadPoolExecutor(len(workers)) as pool:
        claimed = [j for j in pool.map(claim, range(len(workers))) if j is not None]
    assert sorted(claimed) == [1, 2, 3]
    for w in workers:
        w.close()


def test_a_silent_worker_loses_its_job_after_stale_after(
    db_url: str, conn: Conn, backend: LocalBackend, tmp_path: Path
) -> None:
    submit(conn, backend, write_jsonl(tmp_path / "t.jsonl", [chat_example(0, "Rome")]))
    hung, other = session(db_url, "host:1"), session(db_url, "host:2")
    job = local_jobs.claim(hung, "host:1", stale_after=60)
    assert job is not None
    conn.execute(
        "UPDATE fine_tune_job SET heartbeat_at = now() - interval '30 seconds' WHERE id = %s",
        [job.id],
    )
    assert local_jobs.claim(other, "host:2", stale_after=60) is None
    assert local_jobs.claim(other, "host:2", stale_after=10) is not None
    hung.close()
    other.close()


def test_cancel_ends_a_queued_job_at_once_and_flags_a_running_one(
    db_url: str, conn: Conn, backend: LocalBackend, tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [chat_example(0, "Rome")])
    queued, running = submit(conn, backend, train), submit(conn, backend, train)
    assert backend.cancel(queued).status == "cancelled"
    alive = session(db_url, "host:1")
    job = local_jobs.claim(alive, "host:1", stale_after=60)
    assert job is not None and f"local-{job.id}" == running
    assert backend.cancel(running).status == "running"  # its worker stops it
    assert local_jobs.beat(alive, job.id, "host:1") == (True, True)
    die(conn, alive, "host:1")  # before it saw the flag: nobody else will
    assert backend.cancel(running).status == "cancelled"
    assert [j.status for j in backend.list()] == ["cancelled", "cancelled"]


def test_submit_refuses_what_the_local_trainer_cannot_do(
    conn: Conn, backend: LocalBackend, tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [chat_example(0, "Rome")])
    with pytest.raises(InvalidInput, match="unknown hyperparameter 'lr'"):
        submit(conn, backend, train, lr=0.1)
    with pytest.raises(InvalidInput, match="does not exist"):
        backend.upload(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInput, match=r"model directory \./nowhere does not exist"):
        submit(conn, backend, train, base_model="./nowhere")
    with pytest.raises(InvalidInput, match="local jobs are named local-<id>"):
        backend.status("ftjob-abc")


# --- training through the real worker (slow: torch in a subprocess) ----------


# One torch thread: on a small shared CPU, threads spinning at barriers make
# the tiny model's steps ten times slower, not faster.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def worker_env(db_url: str, backend: LocalBackend) -> dict[str, str]:
    return {
        **os.environ,
        **ONE_THREAD,
        "DATABASE_URL": db_url,
        "CURATION_DATA_DIR": str(backend.settings.data_dir),
    }


def start_worker(db_url: str, backend: LocalBackend, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "curation", "train-worker", *args],
        cwd=ROOT,
        env=worker_env(db_url, backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(check: Callable[[], Any], timeout: float = 180.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def event_data(backend: LocalBackend, ref: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in backend.events(ref, limit=1000)]


SMALL = {"max_steps": 4, "logging_steps": 1, "save_steps": 2, "batch_size": 2}


@pytest.mark.slow
def test_sft_job_lifecycle_through_the_worker(
    db_url: str, conn: Conn, backend: LocalBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl", [chat_example(i, c) for i, c in enumerate(CITIES)]
    )
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_example(i, "Oslo") for i in range(2)])
    ref = submit(conn, backend, train, base_model=str(tiny_model_dir), validation=valid, **SMALL)
    assert backend.status(ref).status == "queued"
    worker = start_worker(db_url, backend, "--once", "--job", ref.removeprefix("local-"))
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    job = backend.status(ref)
    assert job.status == "succeeded", (job.error, output)
    assert job.model == f"weather-{ref.removeprefix('local-')}"
    adapter = Path(str(job.result_location))
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "curation.json").read_text())["model"] == job.model
    assert job.trained_tokens and job.trained_tokens > 0
    events = event_data(backend, ref)
    steps = [e for e in events if "train_loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(e["tokens_per_second"] > 0 for e in steps)
    assert any("eval_loss" in e for e in events)
    assert any(e.get("checkpoint_step") == 2 for e in events)
    start = next(e for e in events if "assistant_only_loss" in e)
    assert start["assistant_only_loss"] and start["tool_arguments"] == "string"
    row = conn.execute("SELECT * FROM fine_tune_job").fetchone()
    assert row is not None
    assert row["attempts"] == 1 and row["started_at"] and row["finished_at"] and row["worker"]


@pytest.mark.slow
def test_a_job_that_cannot_train_fails_with_one_line(
    db_url: str, conn: Conn, backend: LocalBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(chat_example(0, "Rome")) + "\n" + '{"messages": []}\n')
    ref = submit(conn, backend, train, base_model=str(tiny_model_dir))
    worker = start_worker(db_url, backend, "--once")
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    job = backend.status(ref)
    assert job.status == "failed"
    assert job.error == (
        f"{train}:2 is not a supervised example as `curation export` writes it:"
        " messages must be a non-empty list"
    )
    assert backend.events(ref)[-1].level == "error"


@pytest.mark.slow
def test_dpo_job_runs_in_a_child_started_by_ensure_worker(
    conn: Conn,
    backend: LocalBackend,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pairs = write_jsonl(tmp_path / "dpo.jsonl", [preference(c) for c in CITIES])
    ref = submit(
        conn, backend, pairs, base_model=str(tiny_model_dir), method="dpo", merge=True, **SMALL
    )
    assert backend.ensure_worker(ref)  # no worker anywhere: start one
    assert not backend.ensure_worker(ref)  # it runs (or is about to)
    job = wait_for(lambda: (j := backend.status(ref)).status in ("succeeded", "failed") and j)
    assert job.status == "succeeded", job.error
    merged = Path(str(job.result_location)).with_name("merged")
    assert (merged / "config.json").is_file()
    losses = [e["train_loss"] for e in event_data(backend, ref) if "train_loss" in e]
    assert len(losses) == 4


def endless_job(
    conn: Conn, backend: LocalBackend, model: Path, tmp_path: Path, *, save_steps: int
) -> str:
    """A job that trains until stopped, one event per step: for kill, stop and cancel tests."""
    train = write_jsonl(
        tmp_path / "train.jsonl", [chat_example(i, c) for i, c in enumerate(CITIES)]
    )
    return submit(
        conn,
        backend,
        train,
        base_model=str(model),
        max_steps=100000,
        logging_steps=1,
        save_steps=save_steps,
        batch_size=1,
    )


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_its_checkpoint_and_cancel_stops_it(
    db_url: str, conn: Conn, backend: LocalBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    ref = endless_job(conn, backend, tiny_model_dir, tmp_path, save_steps=3)
    job_id = ref.removeprefix("local-")
    first = start_worker(db_url, backend, "--once", "--job", job_id)
    try:
        wait_for(
            lambda: any(e.get("checkpoint_step") for e in event_data(backend, ref)),
            what="a checkpoint",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert backend.status(ref).status == "running"  # nobody told the database
    killed_at = max(e.get("step", 0) for e in event_data(backend, ref))

    second = start_worker(db_url, backend, "--once", "--job", job_id)
    try:
        resumed = wait_for(
            lambda: [e for e in event_data(backend, ref) if e.get("resumed_from_step")],
            what="the resumed run",
        )[0]["resumed_from_step"]
        assert 0 < resumed <= killed_at
        wait_for(
            lambda: [
                e for e in event_data(backend, ref) if "train_loss" in e and e["step"] > killed_at
            ],
            what="a step after the kill",
        )
        asked = time.monotonic()
        assert backend.cancel(ref).status == "running"
        output, _ = second.communicate(timeout=30)
        stopped_after = time.monotonic() - asked
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, output
    assert stopped_after < 10, stopped_after
    print(f"cancel: the worker stopped and exited {stopped_after:.2f}s after the request")
    assert backend.status(ref).status == "cancelled"
    row = conn.execute("SELECT attempts FROM fine_tune_job").fetchone()
    assert row is not None and row["attempts"] == 2


@pytest.mark.slow
def test_sigterm_checkpoints_and_hands_the_job_back(
    db_url: str, conn: Conn, backend: LocalBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    ref = endless_job(conn, backend, tiny_model_dir, tmp_path, save_steps=1000)
    worker = start_worker(db_url, backend, "--once", "--job", ref.removeprefix("local-"))
    try:
        wait_for(lambda: any("train_loss" in e for e in event_data(backend, ref)), what="a step")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    job = backend.status(ref)
    assert job.status == "queued" and job.raw["worker"] is None
    saved = [e["checkpoint_step"] for e in event_data(backend, ref) if "checkpoint_step" in e]
    assert saved and saved[-1] < 1000  # saved where it stopped, not on schedule
    assert checkpoints.last_complete(Path(str(job.raw["checkpoint_dir"]))) is not None
    assert backend.cancel(ref).status == "cancelled"  # queued again: nobody holds it


@pytest.mark.slow
def test_retrain_with_the_local_backend_trains_in_a_child_and_records_the_adapter(
    db_url: str, conn: Conn, tiny_model_dir: Path, tmp_path: Path
) -> None:
    for i in range(14):
        add_row(conn, "locations", f"I was born in town {i}", f'["town {i}"]')
    conn.execute("UPDATE namespace SET training_system_prompt = 'List the places.'")
    env = {**ONE_THREAD, "CURATION_DATA_DIR": str(tmp_path / "data")}
    result = run(
        db_url,
        "retrain",
        "locations",
        "--backend",
        "local",
        "--model",
        str(tiny_model_dir),
        "--epochs",
        "1",
        "--wait",
        env=env,
    )
    assert result.exit_code == 0, result.output
    [job] = conn.execute("SELECT * FROM fine_tune_job").fetchall()
    assert job["backend"] == "local" and job["status"] == "succeeded"
    assert job["fine_tuned_model"] == f"locations-{job['id']}"
    assert (Path(job["result_location"]) / "adapter_config.json").is_file()
    assert job["fine_tuned_model"] in result.stdout
    assert "train loss" in result.stderr  # followed: not a terminal, so one line per event

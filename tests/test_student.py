"""Students served from anywhere: the proxy calls them at their endpoint and
falls back to the teacher when they fail; `curation student start` serves a
LoRA adapter with a real engine; `curation eval --endpoint` evaluates one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

from curation.errors import InvalidInput
from curation.jobs import student, student_server
from curation.proxy.serving import serving_of
from tests.cli import run
from tests.factories import LONG_PROMPT, add_row
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import ROOT, ProxyProcess, free_port, query, wait_for

STUDENT = "locations-student"
BASE = "gpt-4o-2024-08-06"
SHORT = "List the cities, as JSON."
KEY = "sk-student-secret-1234"
Conn = psycopg.Connection[dict[str, object]]


@pytest.fixture
def student_api() -> Iterator[Running]:
    """A second fake on its own port, standing in for the student's engine: it
    answers only with the student's key, and shows what it received."""
    with Running(FakeOpenAI(api_key_prefix=KEY)) as running:
        yield running


def served_namespace(db_url: str, conn: Conn, endpoint: str) -> None:
    add_row(conn, "locations", "I live in Paris", json.dumps({"city": "Paris"}))
    conn.execute(
        "UPDATE namespace SET training_system_prompt = %s WHERE name = 'locations'", [SHORT]
    )
    result = run(
        db_url,
        "serve",
        "locations",
        "--model",
        STUDENT,
        "--endpoint",
        endpoint,
        "--endpoint-key-env",
        "STUDENT_KEY",
        "--force",
        env={"STUDENT_KEY": KEY},
    )
    assert result.exit_code == 0, result.output
    assert f"at {endpoint.rstrip('/')}" in result.stdout


def client(proxy: ProxyProcess) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/ns/locations/v1", api_key="sk-client-key", max_retries=0)


def ask(proxy: ProxyProcess, text: str, stream: bool = False) -> tuple[str, str]:
    """(the answer's model, its text) of one call through the proxy, as a client sees it."""
    messages: Any = [
        {"role": "system", "content": LONG_PROMPT},
        {"role": "user", "content": text},
    ]
    if not stream:
        reply = client(proxy).chat.completions.create(model=BASE, messages=messages, max_tokens=8)
        return reply.model, reply.choices[0].message.content or ""
    chunks = list(
        client(proxy).chat.completions.create(
            model=BASE,
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks[0].model, text_out


def bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [json.loads(s.body) for s in fake.seen if s.path == "/v1/chat/completions"]


def metrics(proxy: ProxyProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def row_of(db_url: str, prompt: str) -> dict[str, Any]:
    rows = wait_for(
        lambda: query(
            db_url,
            "SELECT * FROM locations_openai_chat_completion WHERE user_prompt = %s",
            [prompt],
        ),
        timeout=15,
    )
    return dict(rows[0])


def test_a_served_namespace_is_answered_by_the_student_at_its_endpoint(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    student_api: Running,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    served_namespace(db_url, conn, f"{student_api.url}/v1/")
    proxy = start_proxy(STUDENT_KEY=KEY)
    wait_for(lambda: ask(proxy, "warm up")[0] == STUDENT, timeout=15, interval=0.2)

    model, text = ask(proxy, "I live in Lyon")
    assert (model, text) == (STUDENT, "Answer to: I live in Lyon")
    model, text = ask(proxy, "I live in Nice", stream=True)
    assert (model, text) == (STUDENT, "Answer to: I live in Nice")

    sent = [
        s
        for s in student_api.fake.seen
        if json.loads(s.body)["messages"][-1]["content"] in ("I live in Lyon", "I live in Nice")
    ]
    assert len(sent) == 2
    for seen in sent:
        body = json.loads(seen.body)
        assert body["model"] == STUDENT
        assert body["messages"][0] == {"role": "system", "content": SHORT}
        assert LONG_PROMPT not in seen.body.decode()
        assert seen.headers["Authorization"] == f"Bearer {KEY}"  # never the client's key
    assert not [b for b in bodies(fake_openai) if b["messages"][-1]["content"] != "warm up"]

    row = row_of(db_url, "I live in Nice")
    assert row["rewritten"] and row["model"] == STUDENT and row["fallback_from"] is None
    assert row["request"]["messages"][0]["content"] == LONG_PROMPT  # the client's own call is kept


def test_a_failing_student_costs_the_client_nothing_but_time(
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    fake = FakeOpenAI(api_key_prefix=KEY)
    running = Running(fake).__enter__()
    served_namespace(db_url, conn, f"{running.url}/v1")
    proxy = start_proxy(STUDENT_KEY=KEY, CURATION_STUDENT_TIMEOUT="0.5")
    wait_for(lambda: ask(proxy, "warm up")[0] == STUDENT, timeout=15, interval=0.2)

    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("the student crashed")

    fake.answers[STUDENT] = broken  # the fake's handler raises: a 500
    fake.delay = 0.0
    cases: list[tuple[str, Callable[[], None]]] = [
        ("status_5xx", lambda: None),
        ("timeout", lambda: setattr(fake, "delay", 3.0)),
        ("connect", lambda: running.__exit__(None, None, None)),
    ]
    for reason, make_it_fail in cases:
        make_it_fail()
        before = len(bodies(fake_openai))
        for stream in (False, True):
            prompt = f"I live in {reason} {'streamed' if stream else 'plain'}"
            started = time.monotonic()
            model, text = ask(proxy, prompt, stream=stream)
            assert (model, text) == (BASE, f"Answer to: {prompt}")  # the teacher, no error
            if reason == "timeout":
                assert time.monotonic() - started < 2.5  # the budget, not the student's delay
            row = row_of(db_url, prompt)
            assert row["fallback_from"] == STUDENT and not row["rewritten"]
            assert row["model"] == BASE
        to_teacher = bodies(fake_openai)[before:]
        assert len(to_teacher) == 2
        assert all(b["model"] == BASE for b in to_teacher)  # the original call, untouched
        assert all(b["messages"][0]["content"] == LONG_PROMPT for b in to_teacher)
        line = f'curation_student_fallbacks_total{{namespace="locations",reason="{reason}"}} 2.0'
        assert line in metrics(proxy)


def test_serve_endpoint_options_are_checked_and_shown(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "I live in Paris")
    bad = [
        (["--endpoint", "localhost:8000"], "base URL"),
        (["--endpoint", "http://u:pw@host/v1"], "credentials"),
        (["--endpoint", "http://h/v1", "--endpoint-key-env", "sk-abc-123"], "NAME of an"),
        (["--endpoint-key-env", "VAR"], "give both"),
    ]
    for args, said in bad:
        result = run(db_url, "serve", "locations", "--model", STUDENT, "--force", *args)
        assert result.exit_code == 2 and said in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    no_model = run(db_url, "serve", "locations", "--endpoint", "http://h/v1")
    assert no_model.exit_code == 2 and "--model" in no_model.stderr

    ok = run(
        db_url,
        *("serve", "locations", "--model", STUDENT, "--force", "--percent", "40"),
        *("--endpoint", "https://api.together.xyz/v1/", "--endpoint-key-env", "TOGETHER_API_KEY"),
        env={"TOGETHER_API_KEY": ""},
    )
    assert ok.exit_code == 0 and "TOGETHER_API_KEY is not set here" in ok.stderr
    [stored] = query(db_url, "SELECT * FROM namespace WHERE name = 'locations'")
    assert stored["serve_endpoint"] == "https://api.together.xyz/v1"
    assert stored["serve_endpoint_key_env"] == "TOGETHER_API_KEY"
    assert "at https://api.together.xyz/v1 for 40%" in run(db_url, "serve", "locations").stdout

    off = run(db_url, "serve", "locations", "--off")
    assert off.exit_code == 0
    [stored] = query(db_url, "SELECT * FROM namespace WHERE name = 'locations'")
    assert stored["serve_endpoint"] is None and stored["serve_endpoint_key_env"] is None


def test_serving_settings_read_the_key_from_the_named_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = {
        "name": "locations",
        "serve_model": STUDENT,
        "serve_percent": 100,
        "training_system_prompt": SHORT,
        "serve_endpoint": "http://127.0.0.1:8000/v1",
        "serve_endpoint_key_env": "STUDENT_KEY",
    }
    monkeypatch.setenv("STUDENT_KEY", KEY)
    served = serving_of(row)
    assert served.endpoint == "http://127.0.0.1:8000/v1" and served.api_key == KEY
    assert KEY not in repr(served)
    monkeypatch.delenv("STUDENT_KEY")
    assert serving_of(row).api_key is None
    assert serving_of({**row, "serve_endpoint": None}).endpoint is None


def test_student_timeout_is_validated(db_url: str) -> None:
    for value in ("0", "-1", "soon", "nan"):
        result = run(db_url, "config", env={"CURATION_STUDENT_TIMEOUT": value})
        assert result.exit_code == 2 and "CURATION_STUDENT_TIMEOUT" in result.stderr


def test_eval_with_endpoint_asks_the_student_there(
    db_url: str, conn: Conn, fake_openai: FakeOpenAI, student_api: Running
) -> None:
    for city in ("Paris", "Lyon", "Nice"):
        add_row(conn, "locations", f"I live in {city}", f"Answer to: I live in {city}")
    conn.execute(
        "UPDATE namespace SET training_system_prompt = %s WHERE name = 'locations'", [SHORT]
    )
    result = run(
        db_url,
        *("eval", "locations", "--model", STUDENT, "--baseline", BASE, "--rows", "all-included"),
        *("--endpoint", f"{student_api.url}/v1", "--endpoint-key-env", "STUDENT_KEY", "--json"),
        env={
            "STUDENT_KEY": KEY,
            "OPENAI_API_KEY": "sk-teacher",
            "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        },
    )
    assert result.exit_code == 0, result.output
    report = {m["model"]: m for m in json.loads(result.stdout)["models"]}
    assert report[STUDENT]["agreement_pct"] == 100.0 and report[STUDENT]["errors"] == 0
    to_student = bodies(student_api.fake)
    assert len(to_student) == 3
    assert all(b["model"] == STUDENT for b in to_student)
    assert all(b["messages"][0] == {"role": "system", "content": SHORT} for b in to_student)
    to_teacher = bodies(fake_openai)
    assert len(to_teacher) == 3 and all(b["model"] == BASE for b in to_teacher)
    assert all(b["messages"][0]["content"] == LONG_PROMPT for b in to_teacher)

    missing = run(
        db_url,
        *("eval", "locations", "--model", STUDENT, "--rows", "all-included"),
        *("--endpoint", f"{student_api.url}/v1", "--endpoint-key-env", "NOT_SET_ANYWHERE"),
    )
    assert missing.exit_code == 2 and "NOT_SET_ANYWHERE is not set" in missing.stderr


# -- curation student start ------------------------------------------------------


def test_engine_choice_and_command_lines(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12}))
    s = student.Student(
        job_id=7, name=STUDENT, base_model="Qwen/Qwen2.5-0.5B-Instruct", adapter=tmp_path
    )
    assert student.choose("auto", {"vllm": True, "transformers": True, "builtin": True}) == "vllm"
    assert (
        student.choose("auto", {"vllm": False, "transformers": False, "builtin": True}) == "builtin"
    )
    with pytest.raises(InvalidInput, match="not available"):
        student.choose("vllm", {"vllm": False})
    vllm = student.plan(s, "vllm", "0.0.0.0", 8001, None)
    assert vllm.argv[1:] == [
        *("serve", "Qwen/Qwen2.5-0.5B-Instruct", "--enable-lora"),
        *("--lora-modules", f"{STUDENT}={tmp_path}", "--max-lora-rank", "16"),
        *("--host", "0.0.0.0", "--port", "8001"),
    ]
    assert vllm.base_url == "http://127.0.0.1:8001/v1" and vllm.model == STUDENT
    with pytest.raises(InvalidInput):
        student.workdir(
            student.Student(job_id=1, name="a@b", base_model="x", adapter=tmp_path), tmp_path
        )


def test_student_start_explains_what_it_cannot_serve(db_url: str, conn: Conn) -> None:
    add_row(conn, "locations", "I live in Paris")
    ids = []
    for backend, status, model, where in (
        ("together", "succeeded", "org/Qwen-ft-abc", "https://api.together.xyz/v1"),
        ("local", "running", None, None),
        ("local", "succeeded", STUDENT, "/nowhere/adapter"),
    ):
        row = conn.execute(
            "INSERT INTO fine_tune_job (namespace, base_model, status, backend, fine_tuned_model,"
            " result_location) VALUES ('locations', 'base', %s, %s, %s, %s) RETURNING id",
            [status, backend, model, where],
        ).fetchone()
        assert row is not None
        ids.append(str(row["id"]))
    together = run(db_url, "student", "start", ids[0])
    assert together.exit_code == 7
    assert (
        "--endpoint https://api.together.xyz/v1 --endpoint-key-env TOGETHER_API_KEY"
        in together.stderr
    )
    running = run(db_url, "student", "start", ids[1])
    assert running.exit_code == 7 and "is running" in running.stderr
    gone = run(db_url, "student", "start", ids[2])
    assert gone.exit_code == 3 and "/nowhere/adapter" in gone.stderr
    unknown = run(db_url, "student", "start", "99999")
    assert unknown.exit_code == 3


def make_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter on the tiny model, as the local trainer leaves one (untrained)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    get_peft_model(model, config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


class StudentProcess:
    """``curation student start`` in its own process, as a user runs it."""

    def __init__(self, db_url: str, job: str, engine: str, data_dir: Path) -> None:
        self.port = free_port()
        cli = [sys.executable, "-m", "curation", "--database-url", db_url, "--data-dir"]
        start = ["student", "start", job, "--port", str(self.port), "--engine", engine]
        self.proc = subprocess.Popen(
            [*cli, str(data_dir), *start],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def announced(self, timeout: float = 180) -> dict[str, str]:
        """The base URL and model it prints once the engine answers."""
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        assert self.proc.stdout is not None
        while "model" not in found:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError("student start never answered:\n" + "".join(self.lines))
            self.lines.append(line)
            for key in ("base URL", "model"):
                if line.startswith(f"{key}:"):
                    found[key] = line.split(":", 1)[1].strip()
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


ENGINES = [e for e in ("builtin", "transformers") if student.available().get(e)] or ["builtin"]


@pytest.mark.parametrize("engine", ENGINES)
def test_student_start_serves_the_adapter_through_the_proxy_and_stops(
    engine: str,
    db_url: str,
    conn: Conn,
    fake_openai: FakeOpenAI,
    start_proxy: Callable[..., ProxyProcess],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    conn.execute("SELECT curation_create_namespace('locations')")
    job = conn.execute(
        "INSERT INTO fine_tune_job (namespace, base_model, status, backend, fine_tuned_model,"
        " result_location) VALUES ('locations', %s, 'succeeded', 'local', %s, %s) RETURNING id",
        [str(tiny_model_dir), STUDENT, str(adapter)],
    ).fetchone()
    assert job is not None
    served = StudentProcess(db_url, str(job["id"]), engine, tmp_path / "data")
    try:
        said = served.announced()
        assert said["model"] == STUDENT and said["base URL"] == f"http://127.0.0.1:{served.port}/v1"
        direct = OpenAI(base_url=said["base URL"], api_key="unused", max_retries=0)
        reply = direct.chat.completions.create(
            model=STUDENT,
            messages=[{"role": "system", "content": SHORT}, {"role": "user", "content": "Paris?"}],
            max_tokens=5,
            temperature=0,
        )
        assert reply.choices[0].message.role == "assistant"
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        streamed = direct.chat.completions.create(
            model=STUDENT,
            messages=[{"role": "user", "content": "Paris?"}],
            max_tokens=5,
            stream=True,
        )
        assert any(c.choices and c.choices[0].finish_reason for c in streamed)

        served_namespace(db_url, conn, said["base URL"])
        proxy = start_proxy(STUDENT_KEY=KEY, CURATION_STUDENT_TIMEOUT="60")
        wait_for(lambda: ask(proxy, "warm up")[0].startswith(STUDENT), timeout=30, interval=0.2)
        model, _ = ask(proxy, "I live in Lyon")
        assert model.startswith(STUDENT)  # transformers serve answers as "<name>@main"
        row = row_of(db_url, "I live in Lyon")
        assert row["rewritten"] and row["fallback_from"] is None
    finally:
        code = served.stop()
    assert code == 0, "".join(served.lines) + (
        served.proc.stdout.read() if served.proc.stdout else ""
    )

    model, text = ask(proxy, "I live in Nice")  # the student is gone: the teacher answers
    assert (model, text) == (BASE, "Answer to: I live in Nice")
    assert row_of(db_url, "I live in Nice")["fallback_from"] == STUDENT
    assert 'reason="connect"' in metrics(proxy)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = ["model", "messages", "n", "tools", "stream", "stream_options", "max_tokens", "temperature"]


@given(
    st.binary(max_size=40)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(st.sampled_from(KEYS), JSON).map(lambda v: json.dumps(v).encode())
)
def test_the_builtin_server_reads_any_request_or_refuses_it(body: bytes) -> None:
    try:
        ask = student_server.parse(body, STUDENT)
    except student_server.BadRequest:
        return
    assert 1 <= ask.max_tokens <= student_server.MAX_TOKENS and 0 <= ask.temperature <= 2


@given(st.text(max_size=40) | st.sampled_from(["http://h:99999/v1", "http://[::1/v1", "https://"]))
def test_any_endpoint_is_taken_or_refused_in_one_line(url: str) -> None:
    try:
        checked = student.check_endpoint(url)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        return
    assert checked.startswith(("http://", "https://")) and not checked.endswith("/")


def test_student_start_refuses_a_port_in_use(db_url: str, conn: Conn, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    conn.execute("SELECT curation_create_namespace('locations')")
    job = conn.execute(
        "INSERT INTO fine_tune_job (namespace, base_model, status, backend, fine_tuned_model,"
        " result_location) VALUES ('locations', 'base', 'succeeded', 'local', %s, %s) RETURNING id",
        [STUDENT, str(tmp_path)],
    ).fetchone()
    assert job is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run(db_url, "student", "start", str(job["id"]), "--port", port)
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr

"""Serving a locally trained student: which engine, how it is started and stopped.

    vllm          a GPU and vllm installed: the base model with the LoRA adapter,
                  ``vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER``
    transformers  ``transformers serve`` (needs ``transformers[serving]``: fastapi,
                  uvicorn), on a merged copy of base + adapter, offline
    builtin       ``curation.jobs.student_server``: transformers generate behind
                  the same API; the CPU fallback when neither is installed

``auto`` takes the first one available. Every engine answers the OpenAI API
at ``http://HOST:PORT/v1`` under the student's model name, so what it prints
goes straight into ``curation serve NS --model NAME --endpoint URL``. This
module only plans and runs processes: torch stays in the engines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from curation.errors import Conflict, CurationError, InvalidInput, NotFound

if TYPE_CHECKING:
    from curation.db.jobs import Job

ENGINES = ("auto", "vllm", "transformers", "builtin")
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
KEY_VARS = {"openai": "OPENAI_API_KEY", "together": "TOGETHER_API_KEY"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- what the user names -------------------------------------------------------


def check_endpoint(url: str) -> str:
    """A student endpoint: an http(s) base URL, without its /chat/completions."""
    if not url.isprintable() or " " in url:
        raise InvalidInput(f"--endpoint {url!r} holds spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidInput(f"--endpoint {url!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"--endpoint {url!r}: give the base URL of an OpenAI-compatible API, "
            "e.g. http://127.0.0.1:8000/v1"
        )
    if parts.username or parts.password:
        raise InvalidInput(
            "--endpoint must not hold credentials: put the key in a variable and name it "
            "with --endpoint-key-env"
        )
    base = url.rstrip("/")
    return base.removesuffix("/chat/completions")


def check_key_env(var: str) -> str:
    if not _ENV_NAME.match(var):
        raise InvalidInput(
            f"--endpoint-key-env {var!r}: give the NAME of an environment variable "
            "(e.g. TOGETHER_API_KEY), never the key itself"
        )
    return var


# -- the student of a job ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Student:
    job_id: int
    name: str  # the model name clients call
    base_model: str
    adapter: Path

    @property
    def rank(self) -> int:
        try:
            config = json.loads((self.adapter / "adapter_config.json").read_text())
            return int(config.get("r") or 8)
        except (OSError, ValueError, TypeError):
            return 8

    @classmethod
    def of_job(cls, job: Job) -> Student:
        """The job's student, or the one-line reason it cannot be started here."""
        job_id, backend = job.id, job.backend or "openai"
        model = job.fine_tuned_model
        if backend != "local":
            if not model:
                raise Conflict(f"job {job_id} ({backend}) has no model yet: wait for it to succeed")
            raise Conflict(
                f"job {job_id} was trained by {backend}, which serves it as {model}: point a "
                f"namespace at it with curation serve NS --model {model} --endpoint "
                f"{job.result_location or 'URL'} --endpoint-key-env "
                f"{KEY_VARS.get(backend, 'VAR')}"
            )
        if job.status != "succeeded":
            raise Conflict(
                f"job {job_id} is {job.status}: only a succeeded job has an adapter to "
                f"serve; see: curation finetune status {job_id}"
            )
        adapter = Path(job.result_location or "")
        if not (adapter / "adapter_config.json").is_file():
            raise NotFound(
                f"job {job_id}'s adapter is not at {adapter}: was it trained on another machine? "
                "copy the directory here, or retrain"
            )
        return cls(
            job_id=job_id,
            name=model or f"{job.namespace}-job-{job_id}",
            base_model=job.base_model,
            adapter=adapter,
        )


# -- which engine --------------------------------------------------------------


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gpu_present() -> bool:
    """An NVIDIA GPU that the driver lists (asked without importing torch)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def available() -> dict[str, bool]:
    torch_stack = all(_installed(m) for m in ("torch", "transformers", "peft"))
    return {
        "vllm": _installed("vllm") and gpu_present(),
        "transformers": torch_stack and _installed("fastapi") and _installed("uvicorn"),
        "builtin": torch_stack,
    }


def choose(requested: str, found: Mapping[str, bool]) -> str:
    """The engine to run, or why none can: ``auto`` takes the first one found."""
    if requested == "auto":
        for engine in ENGINES[1:]:
            if found.get(engine):
                return engine
        raise InvalidInput(
            "no engine can serve the student here: install the training extra "
            "(pip install 'curation[train]'), or vllm on a GPU machine"
        )
    if not found.get(requested):
        needs = {
            "vllm": "pip install vllm, on a machine with an NVIDIA GPU",
            "transformers": "pip install 'transformers[serving]' 'curation[train]'",
            "builtin": "pip install 'curation[train]'",
        }
        raise InvalidInput(f"--engine {requested} is not available here: {needs[requested]}")
    return requested


# -- how it is started -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Launch:
    engine: str
    argv: list[str]
    base_url: str
    model: str
    health: str
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def vllm_rank(rank: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def plan(student: Student, engine: str, host: str, port: int, workdir: Path | None) -> Launch:
    """The command line of ``engine`` serving ``student`` (``workdir``: transformers' models)."""
    root = base_url(host, port)
    listen = ["--host", host, "--port", str(port)]
    cwd, env = None, {}
    if engine == "vllm":
        argv = [
            _bin("vllm"),
            "serve",
            student.base_model,
            "--enable-lora",
            "--lora-modules",
            f"{student.name}={student.adapter}",
            "--max-lora-rank",
            str(vllm_rank(student.rank)),
        ]
    elif engine == "transformers":
        # the model is named by its directory, relative to cwd: clients call the student's name
        argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", student.name]
        cwd, env = workdir, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if workdir is not None:  # its /v1/models lists this cache, and fails when it is missing
            env["HF_HUB_CACHE"] = str(workdir / "hub-cache")
    else:
        argv = [
            *(sys.executable, "-m", "curation.jobs.student_server"),
            *("--base", student.base_model, "--adapter", str(student.adapter)),
            *("--name", student.name),
        ]
    return Launch(
        engine=engine,
        argv=[*argv, *listen],
        base_url=f"{root}/v1",
        model=student.name,
        health=f"{root}/health",
        cwd=cwd,
        env=env,
    )


def workdir(student: Student, data_dir: Path) -> Path:
    """Where transformers serve finds the merged student: ``<cwd>/<student name>``."""
    name = student.name
    if name.startswith("/") or "@" in name or ".." in Path(name).parts or not name.strip():
        raise InvalidInput(
            f"the student's name {name!r} cannot name a directory for transformers serve: "
            "use --engine builtin"
        )
    return data_dir / "students" / f"job-{student.job_id}"


def prepare(student: Student, launch: Launch) -> None:
    """Make what the engine loads: transformers serve takes a merged copy, made once."""
    if launch.engine != "transformers":
        return
    from curation.jobs.student_server import merged_copy

    assert launch.cwd is not None
    target = launch.cwd / student.name
    target.parent.mkdir(parents=True, exist_ok=True)
    (launch.cwd / "hub-cache").mkdir(exist_ok=True)
    merged_copy(student.base_model, student.adapter, target)


# -- running it until stopped -------------------------------------------------------


def ready(url: str) -> bool:
    import urllib.error  # with urllib.request: http.client, email, ssl, not for every command
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(200 <= reply.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_port(host: str, port: int) -> None:
    """Refuse a port in use now, rather than after minutes of loading a model."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as exc:
        raise InvalidInput(
            f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port or --host"
        ) from exc


def run(launch: Launch, say: Callable[[str], None], stop_timeout: float = 30.0) -> None:
    """Start the engine, say where it answers once it does, and run until stopped.

    SIGTERM or Ctrl-C stops the engine (SIGTERM to its process group, then
    SIGKILL after ``stop_timeout``). An engine that ends on its own has failed.
    """
    proc = subprocess.Popen(
        launch.argv, cwd=launch.cwd, env={**os.environ, **launch.env}, start_new_session=True
    )
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None and not stopping and not ready(launch.health):
            time.sleep(0.5)
        answered = proc.poll() is None and not stopping
        if answered:
            say(f"base URL: {launch.base_url}")
            say(f"model:    {launch.model}")
            say(
                f"use it:   curation serve NAMESPACE --model {launch.model} --endpoint {launch.base_url}"
            )
        while proc.poll() is None and not stopping:
            time.sleep(0.2)
        if stopping:
            _wait(proc, stop_timeout)
            return
        raise CurationError(
            f"{launch.engine} exited with code {proc.returncode}"
            f"{'' if answered else ' before it answered'}; its output is above"
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

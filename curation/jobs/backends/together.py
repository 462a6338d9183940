"""The ``together`` backend: Together AI's fine-tuning API through its own SDK.

Together's jobs API is not OpenAI's: jobs live at ``/v1/fine-tunes``, their
statuses are its own (``STATUS_MAP`` normalises them), the trained model is
``model_output_name``, a failed job's reason is in its events, and an event
has no id. Our DPO files are already Together's ``preference_openai`` format
(``input``/``preferred_output``/``non_preferred_output``, tools inside
``input``) and our chat files its conversational one (``messages`` and
``tools``), except for one key: OpenAI's top-level ``parallel_tool_calls``,
which Together does not take, so ``for_together`` drops it at upload time.
LoRA is the default; ``train_on_inputs=False`` trains on the assistant turns
only, as OpenAI does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import together

from curation.config import Settings
from curation.errors import InvalidInput, UpstreamError
from curation.jobs.backends import JobEvent, JobSpec, RemoteJob, wire

T = TypeVar("T")

STATUS_MAP = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    "cancel_requested": "running",
    "cancelled": "cancelled",
    "error": "failed",
    "completed": "succeeded",
}
# Together's event levels in ours (OpenAI's info/warn/error).
LEVELS = {
    "info": "info",
    "warning": "warn",
    "error": "error",
    "legacy_info": "info",
    "legacy_iwarning": "warn",
    "legacy_ierror": "error",
}
# The top-level keys Together takes, per dataset format.
CONVERSATION_KEYS = frozenset({"messages", "tools"})
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
EVALS_WITH_VALIDATION = 5  # evaluations on the validation file during a job
SUFFIX_MAX = 40  # Together's limit on the model name suffix


class TogetherBackend:
    name = "together"
    key_env = "TOGETHER_API_KEY"  # what the student's endpoint is called with

    def __init__(self, settings: Settings, *, max_retries: int = 2) -> None:
        if not settings.together_api_key:
            raise InvalidInput(
                "TOGETHER_API_KEY is not set: export it (your Together AI key) and run again"
            )
        # the SDK's paths start with /v1; a URL copied from inference settings ends with it
        self.base_url = settings.together_base_url.rstrip("/").removesuffix("/v1")
        self.client = together.Together(
            api_key=settings.together_api_key,
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=120,
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; its failure becomes one UpstreamError line."""
        try:
            return fn()
        except together.APIStatusError as exc:
            raise UpstreamError(
                f"{what}: Together answered {exc.status_code}: {error_message(exc.body, exc.message)}"
            ) from exc
        except together.APIConnectionError as exc:
            raise UpstreamError(
                f"{what}: cannot reach Together at {self.base_url} ({exc.__cause__ or exc})"
            ) from exc
        except (together.TogetherError, ValueError) as exc:  # the SDK's own checks
            raise UpstreamError(f"{what}: {wire.text(str(exc))}") from exc
        except OSError as exc:  # the training file, here
            raise InvalidInput(f"{what}: {exc.strerror}: {exc.filename}") from exc

    def upload(self, path: Path) -> str:
        file = self.call(
            f"uploading {path.name}",
            lambda: self.client.files.upload(file=for_together(path), purpose="fine-tune"),
        )
        return file.id

    def submit(self, spec: JobSpec) -> RemoteJob:
        params = job_params(spec)
        job = self.call("creating the job", lambda: self.client.fine_tuning.create(**params))
        return self._remote(dump(job))

    def status(self, job_id: str) -> RemoteJob:
        job = self.call(f"reading job {job_id}", lambda: self.client.fine_tuning.retrieve(job_id))
        remote = self._remote(dump(job))
        if remote.status == "failed":
            errors = [e for e in self.events(job_id) if e.level == "error"]
            reason = errors[-1].message if errors else "Together gave no reason"
            return replace(remote, error=reason)
        return remote

    def events(self, job_id: str, limit: int = 50) -> list[JobEvent]:
        page = self.call(
            f"reading events of {job_id}", lambda: self.client.fine_tuning.list_events(job_id)
        )
        events = sorted((to_event(dump(e)) for e in page.data), key=lambda e: e.created_at)
        return events[-limit:]

    def cancel(self, job_id: str) -> RemoteJob:
        job = self.call(f"cancelling job {job_id}", lambda: self.client.fine_tuning.cancel(job_id))
        return self._remote(dump(job))

    def list(self, limit: int = 100) -> list[RemoteJob]:
        """Jobs newest first (Together answers them all in one page)."""
        page = self.call("listing jobs", lambda: self.client.fine_tuning.list())
        jobs = sorted(
            (dump(j) for j in page.data), key=lambda j: wire.text(j.get("created_at")), reverse=True
        )
        return [self._remote(j) for j in jobs[:limit]]

    def next_step(self, job_id: str, model: str | None, base_model: str) -> str | None:
        if model is None:
            return None
        return (
            f"Together serves LoRA fine-tunes of its serverless base models at {self.base_url}/v1 "
            f"as model {model}; for other base models start a dedicated endpoint first: "
            f"tg endpoints deploy --model {model}"
        )

    def _remote(self, job: dict[str, Any]) -> RemoteJob:
        status = STATUS_MAP.get(wire.text(job.get("status")), "running")
        name = job.get("model_output_name")
        done = status == "succeeded" and isinstance(name, str) and bool(name)
        return RemoteJob(
            id=wire.job_id(job, "Together"),
            status=status,
            model=name if done else None,
            result_location=f"{self.base_url}/v1" if done else None,
            trained_tokens=wire.integer(job.get("token_count")),
            raw=job,
        )


def job_params(spec: JobSpec) -> dict[str, Any]:
    """The fine_tuning.create arguments for ``spec``."""
    params: dict[str, Any] = {
        "training_file": spec.training_file,
        "model": spec.base_model,
        "lora": spec.lora,
        "training_method": "dpo" if spec.method == "dpo" else "sft",
    }
    if spec.method != "dpo":
        params["train_on_inputs"] = False
    if spec.epochs is not None:
        params["n_epochs"] = spec.epochs
    if spec.validation_file:
        params["validation_file"] = spec.validation_file
        params["n_evals"] = EVALS_WITH_VALIDATION
    if spec.suffix:
        params["suffix"] = spec.suffix[:SUFFIX_MAX]
    if spec.seed is not None:
        params["random_seed"] = spec.seed
    return params


def for_together(path: Path) -> Path:
    """``path`` in Together's format: a copy beside it without the keys Together
    refuses, or ``path`` itself when every line is already Together's."""
    copy = path.with_name(f"{path.stem}.together.jsonl")
    scratch = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
    changed = False
    with path.open(encoding="utf-8") as src, scratch.open("w", encoding="utf-8") as out:
        for line in src:
            kept = together_line(line)
            changed |= kept != line
            out.write(kept)
    if not changed:
        scratch.unlink()
        return path
    os.replace(scratch, copy)
    return copy


def together_line(line: str) -> str:
    """One JSONL line with only Together's top-level keys (a line it cannot read is kept)."""
    try:
        example = json.loads(line)
    except ValueError:
        return line
    if not isinstance(example, dict):
        return line
    keys = PREFERENCE_KEYS if "input" in example else CONVERSATION_KEYS
    if keys.issuperset(example):
        return line
    kept = {k: v for k, v in example.items() if k in keys}
    return json.dumps(kept, ensure_ascii=False) + "\n"


def dump(model: Any) -> dict[str, Any]:
    """An SDK object as the JSON Together sent (its own field names), quietly."""
    data: dict[str, Any] = model.model_dump(by_alias=True, mode="json", warnings=False)
    return data


def to_event(event: dict[str, Any]) -> JobEvent:
    """Together's events carry no id: their time, type and message identify them."""
    created, kind = wire.text(event.get("created_at")), wire.text(event.get("type"))
    message = wire.text(event.get("message"), kind)
    numbers = ("step", "total_steps", "token_count", "param_count")
    data: dict[str, Any] = {k: wire.integer(event.get(k)) for k in numbers}
    data |= {k: wire.text(event.get(k)) for k in ("checkpoint_path", "model_path")}
    return JobEvent(
        id=wire.text(event.get("hash")) or f"{created}|{kind}|{message}",
        created_at=parse_time(created),
        message=message,
        level=LEVELS.get(wire.text(event.get("level")), "info"),
        data={"type": kind, **{k: v for k, v in data.items() if v not in (None, "")}},
    )


def parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return 0.0


def error_message(body: object, fallback: str) -> str:
    """Together's ``{"error": {"message": ...}}`` (or a bare ``message``), else the SDK's text."""
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return wire.text(text or fallback)
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return wire.text(str(inner["message"]))
        if body.get("message"):
            return wire.text(str(body["message"]))
    return wire.text(fallback)


def create(settings: Settings) -> TogetherBackend:
    return TogetherBackend(settings)

"""Training backends: one small interface, chosen by name like a database driver.

    openai    any OpenAI-shaped fine-tuning API at a base URL (OpenAI, Azure
              OpenAI / Foundry v1, Nebius Token Factory)      -> openai.py
    together  Together AI through its own SDK                 -> together.py
    local     TRL + PEFT LoRA on an open-weight model, run by
              ``curation train-worker`` with state in PostgreSQL -> local.py

Each module is imported only when its backend is asked for, so the proxy and
the curation commands never import a provider SDK or torch. Statuses are
normalised to OpenAI's vocabulary (``STATUSES``) whatever the provider says.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from curation.config import Settings
from curation.errors import InvalidInput

BACKENDS: Mapping[str, str] = {
    "openai": "curation.jobs.backends.openai",
    "together": "curation.jobs.backends.together",
    "local": "curation.jobs.backends.local",
}
DEFAULT_BACKEND = "openai"

# OpenAI's job statuses; every backend maps its own onto these.
STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What to train: the same for every backend (a backend ignores what it cannot use)."""

    base_model: str
    training_file: str  # what upload() returned
    validation_file: str | None = None
    method: str = "supervised"  # or "dpo"
    epochs: int | None = None
    suffix: str | None = None
    seed: int | None = None
    lora: bool = True
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    local_job_id: int | None = None  # our fine_tune_job.id (the local backend's job reference)


@dataclass(frozen=True, kw_only=True)
class RemoteJob:
    """A job as its backend sees it, status normalised to ``STATUSES``."""

    id: str
    status: str
    model: str | None = None  # the student's model name, once trained
    result_location: str | None = None  # adapter directory or provider model id
    trained_tokens: int | None = None
    error: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    id: str
    created_at: float  # unix seconds
    message: str
    level: str = "info"
    data: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def upload(self, path: Path) -> str:
        """Make a training file available to the backend; returns its reference."""
        ...

    def submit(self, spec: JobSpec) -> RemoteJob: ...

    def status(self, job_id: str) -> RemoteJob: ...

    def events(self, job_id: str, limit: int = 50) -> list[JobEvent]:
        """The newest ``limit`` events, oldest first."""
        ...

    def cancel(self, job_id: str) -> RemoteJob: ...

    def list(self, limit: int = 100) -> list[RemoteJob]: ...


def names() -> list[str]:
    return sorted(BACKENDS)


def check(name: str) -> str:
    """``name`` if it names a backend; else one line listing the names."""
    if name not in BACKENDS:
        raise InvalidInput(f"unknown backend {name!r}: use one of {', '.join(names())}")
    return name


def get(name: str, settings: Settings) -> Backend:
    """The backend called ``name``, configured from ``settings``."""
    module = importlib.import_module(BACKENDS[check(name)])
    backend: Backend = module.create(settings)
    return backend

"""The ``openai`` backend: any OpenAI-shaped fine-tuning API at OPENAI_BASE_URL.

OpenAI itself, Azure OpenAI / Foundry (``https://RESOURCE.openai.azure.com/openai/v1/``)
and Nebius Token Factory (``https://api.tokenfactory.nebius.com/v1/``) speak the
same jobs API. The last two need one more call before the trained model
answers (an Azure deployment, a Nebius model); ``next_step`` says which.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from curation.config import Settings
from curation.jobs.backends import STATUSES, JobEvent, JobSpec, RemoteJob, wire
from curation.jobs.provider import Provider

# What OpenAI-shaped providers say beside OpenAI's own vocabulary.
_STATUS_ALIASES = {"pending": "queued", "validating": "validating_files", "cancelling": "running"}


class OpenAIBackend:
    name = "openai"
    key_env = "OPENAI_API_KEY"  # what the student's endpoint is called with

    def __init__(self, settings: Settings) -> None:
        self.provider = Provider(settings)
        self.base_url = settings.openai_base_url.rstrip("/")
        self.host = urlsplit(self.base_url).hostname or ""

    def upload(self, path: Path) -> str:
        def go() -> str:
            with open(path, "rb") as f:
                return self.provider.client.files.create(file=f, purpose="fine-tune").id

        return self.provider.call(f"uploading {path.name}", go)

    def submit(self, spec: JobSpec) -> RemoteJob:
        params = job_params(spec, lora_flag=is_nebius(self.host))
        job = self.provider.call(
            "creating the job", lambda: self.provider.client.fine_tuning.jobs.create(**params)
        )
        return self._remote(job.model_dump())

    def status(self, job_id: str) -> RemoteJob:
        job = self.provider.call(
            f"reading job {job_id}", lambda: self.provider.client.fine_tuning.jobs.retrieve(job_id)
        )
        return self._remote(job.model_dump())

    def events(self, job_id: str, limit: int = 50) -> list[JobEvent]:
        page = self.provider.call(
            f"reading events of {job_id}",
            lambda: self.provider.client.fine_tuning.jobs.list_events(job_id, limit=limit),
        )
        return [to_event(e.model_dump()) for e in reversed(page.data)]

    def cancel(self, job_id: str) -> RemoteJob:
        job = self.provider.call(
            f"cancelling job {job_id}",
            lambda: self.provider.client.fine_tuning.jobs.cancel(job_id),
        )
        return self._remote(job.model_dump())

    def list(self, limit: int = 100) -> list[RemoteJob]:
        """Jobs newest first, following the SDK's pagination."""

        def go() -> list[RemoteJob]:
            out: list[RemoteJob] = []
            for job in self.provider.client.fine_tuning.jobs.list(limit=min(limit, 100)):
                out.append(self._remote(job.model_dump()))
                if len(out) >= limit:
                    break
            return out

        return self.provider.call("listing jobs", go)

    def next_step(self, job_id: str, model: str | None, base_model: str) -> str | None:
        """What to run before the trained model answers, where the provider needs it."""
        if model is None:
            return None
        if self.host.endswith(".azure.com"):
            return azure_step(self.host, model)
        if is_nebius(self.host):
            return nebius_step(self.base_url, job_id, base_model)
        return None

    def served_model(self, model: str) -> str:
        """The name to call the trained model by, once ``next_step`` is done."""
        if self.host.endswith(".azure.com"):
            return deployment_name(model)
        if is_nebius(self.host):
            return "THE_NAME_NEBIUS_GAVE_THE_MODEL"
        return model

    def _remote(self, job: dict[str, Any]) -> RemoteJob:
        status, error = wire.text(job.get("status")), job.get("error")
        model = job.get("fine_tuned_model")
        model = model if isinstance(model, str) and model else None
        return RemoteJob(
            id=wire.job_id(job, "the provider"),
            status=status if status in STATUSES else _STATUS_ALIASES.get(status, "running"),
            model=model,
            result_location=self.base_url if model else None,
            trained_tokens=wire.integer(job.get("trained_tokens")),
            error=wire.text(error.get("message")) or None if isinstance(error, dict) else None,
            raw=job,
        )


def job_params(spec: JobSpec, *, lora_flag: bool = False) -> dict[str, Any]:
    """The jobs.create arguments for ``spec`` (LoRA is implicit at OpenAI and Azure)."""
    hyper: dict[str, Any] = dict(spec.hyperparameters)
    if spec.epochs is not None:
        hyper["n_epochs"] = spec.epochs
    if lora_flag and spec.lora:
        hyper["lora"] = True
    params: dict[str, Any] = {
        "model": spec.base_model,
        "training_file": spec.training_file,
        "method": {"type": spec.method, spec.method: {"hyperparameters": hyper}},
        "metadata": dict(spec.metadata),
    }
    if spec.suffix:
        params["suffix"] = spec.suffix[:64]
    if spec.validation_file:
        params["validation_file"] = spec.validation_file
    if spec.seed is not None:
        params["seed"] = spec.seed
    return params


def to_event(event: dict[str, Any]) -> JobEvent:
    return JobEvent(
        id=wire.text(event.get("id")),
        created_at=wire.number(event.get("created_at")),
        message=wire.text(event.get("message")),
        level=wire.text(event.get("level"), "info"),
        data=wire.mapping(event.get("data")),
    )


def is_nebius(host: str) -> bool:
    return host.endswith(".nebius.com")


def deployment_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", model)[:64]


def azure_step(host: str, model: str) -> str:
    resource = host.split(".", 1)[0]
    return (
        "Azure answers a fine-tuned model only through a deployment; create one: "
        f"az cognitiveservices account deployment create --resource-group YOUR_GROUP "
        f"--name {resource} --deployment-name {deployment_name(model)} "
        f"--model-name {model} --model-version 1 --model-format OpenAI "
        "--sku-name Standard --sku-capacity 1"
    )


def nebius_step(base_url: str, job_id: str, base_model: str) -> str:
    parts = urlsplit(base_url)
    auth = '-H "Authorization: Bearer $OPENAI_API_KEY"'
    body = f'{{"name": "YOUR_MODEL_NAME", "base_model": "{base_model}", "source": "{job_id}:CHECKPOINT_ID"}}'
    return (
        "Nebius answers a fine-tuned model once a model is created from the job's checkpoint: "
        f"curl -s {auth} {base_url}/fine_tuning/jobs/{job_id}/checkpoints (take the last id), "
        f'then curl -s {auth} -H "Content-Type: application/json" '
        f"{parts.scheme}://{parts.netloc}/v0/models -d '{body}'"
    )


def create(settings: Settings) -> OpenAIBackend:
    return OpenAIBackend(settings)

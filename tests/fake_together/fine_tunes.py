"""The fake's fine-tuning jobs: model limits, price estimate, the job lifecycle,
events (no ids, as Together's), cancel."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from tests.fake_together.common import error, now, public

TERMINAL = ("completed", "error", "cancelled")
LIFECYCLE = {"pending": "queued", "queued": "running", "running": "uploading"}
STEPS = 10


class FineTunesAPI:
    """/v1/fine-tunes (mixed into FakeTogether)."""

    user: str
    tunable: tuple[str, ...]
    files: dict[str, dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    requests: list[tuple[str, str, Any]]
    fail: dict[str, int]

    async def model_limits(self, request: web.Request) -> web.Response:
        model = request.query.get("model_name", "")
        if model not in self.tunable:
            return error(404, f"Model {model} is not supported for fine-tuning", "model_not_found")
        lora = {
            "default_rank": 16,
            "max_rank": 64,
            "max_batch_size": 32,
            "max_batch_size_dpo": 16,
            "min_batch_size": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        }
        return web.json_response(
            {
                "model_name": model,
                "default_gradient_accumulation_steps": 1,
                "lora_training": lora,
                "full_training": {
                    "max_batch_size": 16,
                    "max_batch_size_dpo": 8,
                    "min_batch_size": 8,
                },
                "max_learning_rate": 1.0,
                "min_learning_rate": 0.0,
                "max_num_checkpoints": 10,
                "max_num_epochs": 20,
                "max_num_evals": 100,
                "max_seq_length_sft": 8192,
                "max_seq_length_dpo": 8192,
                "min_max_seq_length": 512,
                "merge_output_lora": True,
                "supports_full_training": True,
                "supports_reasoning": False,
                "supports_tools": True,
                "supports_vision": False,
            }
        )

    async def estimate_price(self, request: web.Request) -> web.Response:
        body = await request.json()
        file = self.files.get(body.get("training_file", ""))
        if file is None or not file["Processed"]:
            return web.json_response(
                {"estimation_available": False, "unavailable_reason": "train_file_not_validated"}
            )
        tokens = file["bytes"] // 4 * int(body.get("n_epochs") or 1)
        return web.json_response(
            {
                "estimation_available": True,
                "allowed_to_proceed": True,
                "estimated_train_token_count": tokens,
                "estimated_eval_token_count": 0,
                "estimated_total_price": round(tokens * 0.48 / 1e6, 4),
                "user_limit": 100.0,
            }
        )

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        if self.fail.get("create", 0) > 0:
            self.fail["create"] -= 1
            return error(500, "Internal server error")
        problem = self._job_problem(body)
        if problem:
            return error(400, problem)
        job_id = f"ft-{uuid.uuid4()}"
        model = body["model"]
        name = f"{self.user}/{model.split('/')[-1]}-{body.get('suffix') or 'ft'}-{job_id[-8:]}"
        job = {
            "id": job_id,
            "status": "pending",
            "created_at": now(),
            "updated_at": now(),
            "user_id": f"user_{self.user}",
            "owner_address": f"{self.user}@example.com",
            "model": model,
            "model_output_name": name,
            "suffix": body.get("suffix"),
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file") or None,
            "n_epochs": body.get("n_epochs", 1),
            "n_evals": body.get("n_evals", 0),
            "n_checkpoints": body.get("n_checkpoints", 1),
            "batch_size": self._batch_size(body),
            "learning_rate": body.get("learning_rate"),
            "random_seed": body.get("random_seed"),
            "training_type": body.get("training_type")
            or {"type": "Lora", "lora_r": 16, "lora_alpha": 32},
            "training_method": body.get("training_method") or {"method": "sft"},
            "token_count": 0,
            "total_price": 0,
            "_events": [],
        }
        self.jobs[job_id] = job
        self._event(job, "job_pending", "Fine-tune request created")
        return web.json_response(public(job))

    @staticmethod
    def _batch_size(body: dict[str, Any]) -> int:
        """Together answers the batch size it chose for "max": the model's limit."""
        asked = body.get("batch_size")
        dpo = (body.get("training_method") or {}).get("method") == "dpo"
        return int(asked) if isinstance(asked, int) else (16 if dpo else 32)

    def _job_problem(self, body: dict[str, Any]) -> str | None:
        if body.get("model") not in self.tunable:
            return f"Model {body.get('model')} is not supported for fine-tuning"
        method = (body.get("training_method") or {}).get("method", "sft")
        for key in ("training_file", "validation_file"):
            file_id = body.get(key)
            if not file_id and key == "validation_file":
                continue
            file = self.files.get(file_id or "")
            if file is None:
                return f"{key} {file_id!r} not found"
            if not file["Processed"]:
                return (
                    f"{key} {file_id} failed validation: {file['validation_report'].get('error')}"
                )
            wants = "PREFERENCE_OPENAI" if method == "dpo" else "CONVERSATION"
            if file.get("_format") != wants:
                return (
                    f"{key} has format {file.get('_format')}, but {method} training needs {wants}"
                )
        if body.get("validation_file") and not body.get("n_evals"):
            return "n_evals must be greater than 0 when a validation file is given"
        return None

    def _event(
        self, job: dict[str, Any], kind: str, message: str, level: str = "info", **extra: Any
    ) -> None:
        event = {
            "object": "fine-tune-event",
            "created_at": now(),
            "message": message,
            "type": kind,
            "level": level,
            "hash": uuid.uuid4().hex,  # the reference's event carries a hash, not an id
            **extra,
        }
        job["_events"].append(event)

    def _advance(self, job: dict[str, Any]) -> None:
        status = job["status"]
        job["updated_at"] = now()
        if status == "cancel_requested":
            job["status"] = "cancelled"
            self._event(job, "job_stopped", "Job was cancelled")
        elif status == "running" and "fail" in (job.get("suffix") or ""):
            job["status"] = "error"
            self._event(job, "job_error", "Training failed: the fake was told to fail.", "error")
        elif status in LIFECYCLE:
            job["status"] = LIFECYCLE[status]
            self._on_enter(job)
        elif status == "uploading":
            job["status"] = "completed"
            self._event(
                job, "model_upload_complete", f"Model uploaded to {job['model_output_name']}"
            )
            self._event(job, "job_complete", "Job finished")

    def _on_enter(self, job: dict[str, Any]) -> None:
        if job["status"] == "queued":
            self._event(job, "job_start", "Job queued", queue_depth=0)
        elif job["status"] == "running":
            self._event(job, "training_start", "Training started")
            for step in (STEPS // 2, STEPS):
                self._event(
                    job, "checkpoint_save", f"Step {step}/{STEPS}", step=step, total_steps=STEPS
                )
        elif job["status"] == "uploading":
            file = self.files[job["training_file"]]
            job["token_count"] = file["bytes"] // 4 * int(job["n_epochs"] or 1)
            self._event(
                job, "training_complete", "Training completed", token_count=job["token_count"]
            )
            self._event(job, "model_uploading", "Uploading model")

    def _job(self, request: web.Request) -> dict[str, Any] | None:
        return self.jobs.get(request.match_info["job_id"])

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return error(404, "Fine-tune job not found", "not_found")
        if job["status"] not in TERMINAL:
            self._advance(job)
        return web.json_response(public(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j["created_at"], reverse=True)
        return web.json_response({"data": [public(j) for j in jobs]})

    async def job_events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return error(404, "Fine-tune job not found", "not_found")
        return web.json_response({"data": job["_events"]})

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return error(404, "Fine-tune job not found", "not_found")
        if job["status"] in TERMINAL:
            return error(400, f"Cannot cancel a job with status {job['status']}")
        job.update(status="cancel_requested", updated_at=now())
        self._event(job, "cancel_requested", "Cancel requested")
        return web.json_response(public(job))

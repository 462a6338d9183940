"""The fake's files and fine-tuning jobs: upload, lifecycle, events, pagination, cancel."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fake_openai.chat import next_id


class TuningAPI:
    """/v1/files and /v1/fine_tuning/jobs (mixed into FakeOpenAI)."""

    api_key_prefix: str
    files: dict[str, dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    fail: dict[str, int]
    page_cap: int
    fine_tunable: tuple[str, ...]

    def _failing(self, what: str) -> bool:
        if self.fail.get(what, 0) > 0:
            self.fail[what] -= 1
            return True
        return False

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("Authorization", "").startswith("Bearer " + self.api_key_prefix):
            return self.error(
                401,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
                "req_auth",
            )
        return None

    async def upload_file(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        form = await request.post()
        if self._failing("upload"):
            return self.error(
                500,
                "The server had an error processing your request.",
                "server_error",
                None,
                "req_up",
            )
        upload = form.get("file")
        if form.get("purpose") != "fine-tune" or not hasattr(upload, "file"):
            return self.error(
                400, "Invalid purpose or file.", "invalid_request_error", None, "req_up"
            )
        content = upload.file.read()  # type: ignore[union-attr]
        file_id = f"file-{next_id():08d}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": "fine-tune",
            "status": "processed",  # type: ignore[union-attr]
            "_content": content,
        }
        return web.json_response(self._public(self.files[file_id]))

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _event(self, job: dict[str, Any], message: str, level: str = "info") -> None:
        job["_events"].append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{next_id():08d}",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": {},
                "type": "message",
            }
        )

    async def create_job(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await request.json()
        if self._failing("create_job"):
            return self.error(
                500,
                "The server had an error processing your request.",
                "server_error",
                None,
                "req_job",
            )
        model = body.get("model")
        if model not in self.fine_tunable:
            return self.error(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                "invalid_request_error",
                "model_not_available",
                "req_job",
            )
        for key in ("training_file", "validation_file"):
            if body.get(key) is not None and body[key] not in self.files:
                return self.error(
                    400,
                    f"invalid {key}: {body[key]}",
                    "invalid_request_error",
                    "invalid_file",
                    "req_job",
                )
        if not body.get("training_file"):
            return self.error(
                400,
                "Missing required parameter: 'training_file'.",
                "invalid_request_error",
                "missing_required_parameter",
                "req_job",
            )
        job_id = f"ftjob-{next_id():08d}"
        method = body.get("method") or {
            "type": "supervised",
            "supervised": {"hyperparameters": body.get("hyperparameters") or {}},
        }
        hyper = (method.get(method["type"]) or {}).get("hyperparameters") or {}
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-fake",
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": {
                "n_epochs": hyper.get("n_epochs", "auto"),
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
            },
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": body.get("suffix"),
            "seed": body.get("seed", 42),
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": method,
            "_events": [],
        }
        self.jobs[job_id] = job
        self._event(job, f"Validating training file: {body['training_file']}")
        self._event(job, "Created fine-tuning job")
        return web.json_response(self._public(job))

    def _advance(self, job: dict[str, Any]) -> None:
        """One lifecycle step per look: validating_files -> queued -> running -> succeeded/failed."""
        status = job["status"]
        if status == "validating_files":
            problem = _check_training_file(self.files[job["training_file"]]["_content"])
            if problem:
                job.update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "invalid_training_file",
                        "message": problem,
                        "param": "training_file",
                    },
                )
                self._event(job, f"Training file validation failed: {problem}", "error")
                return
            job["status"] = "queued"
            self._event(job, "Files validated, moving job to queued state")
        elif status == "queued":
            job["status"] = "running"
            self._event(job, "Fine-tuning job started")
            self._event(job, "Step 1/10: training loss=1.52")
        elif status == "running":
            if "fail" in (job.get("user_provided_suffix") or ""):
                job.update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "server_error",
                        "message": "Training failed: the fake was told to fail.",
                        "param": None,
                    },
                )
                self._event(job, "Fine-tuning job failed", "error")
                return
            lines = self.files[job["training_file"]]["_content"].count(b"\n")
            epochs = job["hyperparameters"]["n_epochs"]
            job.update(
                status="succeeded",
                finished_at=int(time.time()),
                trained_tokens=lines * 50 * (epochs if isinstance(epochs, int) else 3),
                fine_tuned_model=f"ft:{job['model']}:org-fake:{job.get('user_provided_suffix') or ''}:{job['id'][-8:]}",
                result_files=[f"file-result-{job['id'][-8:]}"],
            )
            self._event(job, "Step 10/10: training loss=0.04")
            self._event(job, "The job has successfully completed")

    def _job(self, request: web.Request) -> dict[str, Any] | web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return self.error(
                404,
                "No such fine-tuning job.",
                "invalid_request_error",
                "fine_tune_not_found",
                "req_job",
            )
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            self._advance(job)
        return web.json_response(self._public(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        ordered = sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
        after = request.query.get("after")
        if after:
            ordered = [j for j in ordered if j["id"] < after]
        limit = min(int(request.query.get("limit", 20)), self.page_cap)
        page = ordered[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [self._public(j) for j in page],
                "has_more": len(ordered) > limit,
            }
        )

    async def job_events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        events = list(reversed(job["_events"]))[: int(request.query.get("limit", 20))]
        return web.json_response({"object": "list", "data": events, "has_more": False})

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return self.error(
                400, f"Job has already {job['status']}.", "invalid_request_error", None, "req_job"
            )
        job.update(status="cancelled", finished_at=int(time.time()))
        self._event(job, "Fine-tuning job cancelled")
        return web.json_response(self._public(job))


def _check_training_file(content: bytes) -> str | None:
    """OpenAI's upfront checks, roughly: JSONL, at least 10 examples, an assistant answer in each."""
    lines = [line for line in content.splitlines() if line.strip()]
    if len(lines) < 10:
        return f"Training file has {len(lines)} example(s), but must have at least 10 examples"
    for n, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except ValueError:
            return f"Invalid file format. Line {n}: not valid JSON"
        messages = example.get("messages") or (example.get("input") or {}).get("messages")
        if not messages:
            return f"Invalid file format. Line {n}: missing messages"
        if "messages" in example and not any(m.get("role") == "assistant" for m in messages):
            return f"Invalid file format. Line {n}: no assistant message"
    return None

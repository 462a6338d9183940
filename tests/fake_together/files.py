"""The fake's files: the SDK's three-step upload, the one-shot upload, and
Together's server-side validation of a fine-tuning dataset."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fake_together.common import error, public


def dataset_format(content: bytes) -> tuple[str | None, str | None, int]:
    """Together's server-side check: (format, problem, lines)."""
    lines = [line for line in content.splitlines() if line.strip()]
    formats = set()
    for n, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except ValueError:
            return None, f"Line {n} is not valid JSON", len(lines)
        kind, problem = _example_format(example)
        if problem:
            return None, f"Line {n}: {problem}", len(lines)
        formats.add(kind)
    if len(formats) != 1:
        return None, "All lines must have the same format", len(lines)
    return formats.pop(), None, len(lines)


COLUMNS = {
    "CONVERSATION": ("messages", "tools"),
    "PREFERENCE_OPENAI": ("input", "preferred_output", "non_preferred_output"),
}


def _example_format(example: Any) -> tuple[str | None, str | None]:
    if not isinstance(example, dict):
        return None, "each line must be a JSON object"
    kind = "PREFERENCE_OPENAI" if "input" in example else "CONVERSATION"
    extra = [column for column in example if column not in COLUMNS[kind]]
    if extra:
        return None, f'Found extra column "{extra[0]}"'
    if "input" in example:
        for key in ("preferred_output", "non_preferred_output"):
            output = example.get(key)
            if not (isinstance(output, list) and len(output) == 1):
                return None, f"{key} must contain exactly one message"
            if output[0].get("role") != "assistant":
                return None, f"{key} must be an assistant message"
        messages = (example.get("input") or {}).get("messages")
        return ("PREFERENCE_OPENAI", None) if messages else (None, "input.messages is missing")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "missing messages"
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            return None, f"unknown role {m.get('role')!r}"
    if not any(m.get("role") == "assistant" for m in messages):
        return None, "no assistant message"
    return "CONVERSATION", None


class FilesAPI:
    """/v1/files (mixed into FakeTogether)."""

    url: str
    files: dict[str, dict[str, Any]]
    requests: list[tuple[str, str, Any]]

    def _file(self, file_id: str, name: str, purpose: str, checksum: str) -> dict[str, Any]:
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "created_at": int(datetime.now(UTC).timestamp()),
            "filename": name,
            "bytes": 0,
            "purpose": purpose,
            "FileType": "jsonl",
            "Processed": False,
            "LineCount": 0,
            "processing_status": "PENDING",
            "_checksum": checksum,
            "_content": None,
        }
        return self.files[file_id]

    async def start_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(("POST", request.path, dict(form)))
        purpose, name = str(form.get("purpose", "")), str(form.get("file_name", ""))
        if purpose != "fine-tune" or not name:
            return error(400, "purpose and file_name are required")
        checksum = str(form.get("checksum", ""))
        known = next((f for f in self.files.values() if f["_checksum"] == checksum), None)
        if known and known["_content"] is not None:
            return web.json_response({"file_id": known["id"]}, status=409)
        file_id = f"file-{uuid.uuid4()}"
        self._file(file_id, name, purpose, checksum)
        headers = {"Location": f"{self.url}/upload/{file_id}", "X-Together-File-Id": file_id}
        return web.Response(status=302, headers=headers)

    async def put_bytes(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return web.Response(status=403, text="AccessDenied")
        content = await request.read()
        if file["_checksum"] and hashlib.sha256(content).hexdigest() != file["_checksum"]:
            return web.Response(status=400, text="BadDigest")
        file.update(_content=content, bytes=len(content))
        return web.Response(status=200)

    async def preprocess(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None or file["_content"] is None:
            return error(404, "File not found or not uploaded", "file_not_found")
        return web.json_response(self._validate(file))

    async def upload_one_shot(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "fine-tune" or not form.get("file_name") or upload is None:
            return error(400, "purpose, file_name and file are required")
        content = upload.file.read() if hasattr(upload, "file") else str(upload).encode()
        file = self._file(
            f"file-{uuid.uuid4()}", str(form["file_name"]), "fine-tune", ""
        )  # no checksum here
        file.update(_content=content, bytes=len(content))
        return web.json_response(self._validate(file))

    def _validate(self, file: dict[str, Any]) -> dict[str, Any]:
        kind, problem, lines = dataset_format(file["_content"])
        file.update(
            Processed=problem is None,
            LineCount=lines,
            processing_status="COMPLETED" if problem is None else "INVALID_FORMAT",
            validation_report={
                "valid": problem is None,
                "dataset_format": kind,
                "nlines": lines,
                "file_id": file["id"],
                **({"error": problem, "error_type": "INVALID_FORMAT"} if problem else {}),
            },
            _format=kind,
        )
        return public(file)

    async def get_file(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return error(404, "File not found", "file_not_found")
        return web.json_response(public(file))

"""Export's fast path (binary COPY, chunks in worker processes, the plain-example
shortcut past validation, the counting loop) writes exactly what the plain
per-row builder writes: the same bytes, token counts and skipped reasons, for
rows of every shape a curator meets (tool calls, corrections, multi-turn, names,
content parts, text that needs escaping) and odd ones that must be skipped."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import tiktoken

from curation.db import queries
from curation.db.connect import connection
from curation.export import chunks as export_chunks
from curation.export import examples, models, pii, split, tokens, validate
from curation.export.run import ExportRequest, export
from tests.factories import LONG_PROMPT

NS = "golden"
SHORT = "Return the locations mentioned, as a JSON list."
TOOLS = [
    {
        "type": "function",
        "function": {"name": "geocode", "parameters": {"type": "object", "properties": {}}},
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "geocode", "arguments": '{"q":1}'}}
TEXTS = [
    "I live in Lyon",
    "Ich wohne in München, nicht in Zürich 🇨🇭",
    'quotes " and \\ backslashes \\n and a real\nnewline\tand tab',
    "東京から大阪へ",
    "x" * 3000,
    "  Spaces   AND Case  ",
    "null \x01 control",
    # personal data: found in a plain text, in a JSON answer only once decoded, or not at all
    "mail ana@example.org or call +1 415 555 2671",
    "escaped ana\\u0040example.org",
    "order 12345 at 10:30",
]
Conn = psycopg.Connection[dict[str, object]]


def completion(message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1.0, "completion_tokens": 2, "total_tokens": 10**15},
    }


def varied_row(rng: random.Random, i: int) -> tuple[str, dict[str, Any], dict[str, Any], Any]:
    """One row's (user_prompt, request, response, corrected_response), shapes drawn by ``rng``."""
    text = f"{rng.choice(TEXTS)} #{i}"
    system = {"role": rng.choice(["system", "developer"]), "content": LONG_PROMPT}
    user: dict[str, Any] = {"role": "user", "content": text}
    shape = rng.randrange(14)
    if shape == 1:
        user = {"role": "user", "content": [{"type": "text", "text": text}]}
    elif shape == 2:
        user = {"role": "user", "content": text, "name": "ana"}
    messages: list[Any] = [system, user]
    if shape == 3:  # multi-turn with a tool round trip
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"lat": 45.7}'},
            {"role": "user", "content": "and then?"},
        ]
    elif shape == 4:
        messages += [{"role": "assistant", "content": "Lyon."}, {"role": "user", "content": "ok"}]
    elif shape == 5:
        messages.append({"role": "user", "content": "", "name": None})
    elif shape == 6:
        messages.append({"role": "user", "content": "x", "weight": 1})
    elif shape == 7:
        messages.append({"role": 5, "content": "odd role"})
    request: dict[str, Any] = {"model": "gpt-4o", "messages": messages, "temperature": 0.0}
    answer: dict[str, Any] = {"role": "assistant", "content": f'["{text}"]', "refusal": None}
    if shape == 8:
        request["tools"], request["parallel_tool_calls"] = TOOLS, bool(i % 2)
        answer = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    elif shape == 9:
        answer = {"role": "assistant", "content": ""}
    elif shape == 10:
        answer = {"role": "assistant", "content": None, "refusal": "no"}
    elif shape == 11:
        request["tools"] = "not a list"
    corrected: Any = None
    pick = rng.randrange(8)
    if pick == 1:
        corrected = f'["fixed {i}"]'
    elif pick == 2:
        corrected = {"role": "assistant", "content": f"fixed {i}"}
    elif pick == 3:
        corrected = completion({"role": "assistant", "content": f"fixed {i}"})
    elif pick == 4:
        corrected = 42
    elif pick == 5:
        corrected = {"role": "assistant", "content": answer.get("content")}
    response: Any = completion(answer)
    if shape == 12:
        response = {"choices": "none"}
    elif shape == 13:
        response = completion({"role": "assistant", "content": "a", "tool_calls": "zz"})
    return text, request, response, corrected


def fill(conn: Conn, n: int, seed: int = 17) -> None:
    conn.execute("SELECT curation_create_namespace(%s)", [NS])
    rng = random.Random(seed)
    with conn.cursor() as cur:
        for i in range(n):
            prompt, request, response, corrected = varied_row(rng, i)
            cur.execute(
                f"INSERT INTO {NS}_openai_chat_completion (namespace, user_prompt, request, response,"
                " system_prompt, included, excluded, corrected_response) VALUES (%s, %s, %s, %s, %s,"
                " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END, %s)",
                [
                    NS,
                    prompt,
                    json.dumps(request),
                    json.dumps(response, separators=(",", ":") if i % 3 else (", ", ": ")),
                    LONG_PROMPT,
                    i % 11 != 0,
                    i % 13 == 0,
                    json.dumps(corrected) if corrected is not None else None,
                ],
            )


def reference_count(example: dict[str, Any], encoding: str) -> int:
    """The cookbook's formula, written out plainly: no memo, no shortcut."""
    enc = tiktoken.get_encoding(encoding)

    def n(value: Any) -> int:
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        )
        return len(enc.encode_ordinary(text))

    if "input" in example:
        messages = (
            example["input"]["messages"]
            + example["preferred_output"]
            + example["non_preferred_output"]
        )
        tools = example["input"].get("tools")
    else:
        messages, tools = example["messages"], example.get("tools")
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if value is not None and key != "weight":
                total += n(value) + (1 if key == "name" else 0)
    return total + (n(tools) if tools else 0)


def reference(db_url: str, req: ExportRequest, info: models.ModelInfo) -> dict[str, Any]:
    """What export must write, row by row with the plain builder and full validation."""
    query = queries.for_namespace("export_rows", NS)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(query, req.filters.params()).fetchall()
    files: dict[str, bytes] = {"train": b"", "validation": b""}
    counts: dict[int, int] = {}
    skipped, scanned = [], []
    for row_id, version, user_prompt, request, response, corrected in rows:
        source = examples.SourceRow(
            row_id,
            version,
            user_prompt,
            orjson.loads(request),
            orjson.loads(response),
            orjson.loads(corrected) if corrected else None,
        )
        try:
            if req.format == "dpo":
                example = examples.preference_pair(source, req.system_prompt)
                validate.check_preference(example)
            else:
                example = examples.chat_example(source, req.system_prompt)
                validate.check_chat(example)
            example, found = pii.scan(example, redact=req.pii == "redact", region=req.pii_region)
            if found.counts:
                kinds = dict(sorted(found.counts.items()))
                scanned.append({"id": row_id, "kinds": kinds} | masked(req, found))
            assert info.encoding is not None
            n = reference_count(example, info.encoding)
            validate.check_length(n, info.max_example_tokens, info.name)
        except (examples.Skip, validate.Invalid, ValueError, KeyError, TypeError) as exc:
            skipped.append({"id": row_id, "reason": str(exc)})
            continue
        name = (
            "validation" if split.is_validation(user_prompt, req.validation_fraction) else "train"
        )
        files[name] += orjson.dumps(example) + b"\n"
        counts[row_id] = n
    return {
        "files": files,
        "counts": counts,
        "skipped": skipped,
        "rows": len(rows),
        "pii": scanned,
    }


def masked(req: ExportRequest, found: pii.Redactor) -> dict[str, Any]:
    return {"masked": found.masked} if req.pii == "report" else {}


def exported(db_url: str, req: ExportRequest) -> dict[str, Any]:
    with connection(db_url) as conn:
        result = export(conn, req)
        tokens_by_row = conn.execute(
            "SELECT row_id, tokens FROM dataset_row WHERE dataset_id = %s",
            [result.dataset_id],
        ).fetchall()
    files = {
        name: (req.out_dir / f"{name}.jsonl").read_bytes()
        if (req.out_dir / f"{name}.jsonl").exists()
        else b""
        for name in ("train", "validation")
    }
    return {
        "files": files,
        "counts": {r["row_id"]: r["tokens"] for r in tokens_by_row},
        "skipped": result.manifest["skipped"],
        "rows": result.manifest["counts"]["rows"],
        "pii": result.manifest["pii"]["listed"],
    }


@pytest.mark.parametrize(
    ("model", "fmt", "workers", "pii_mode"),
    [
        ("gpt-4o-mini-2024-07-18", "chat", 1, "report"),
        ("gpt-4o-mini-2024-07-18", "chat", 2, "report"),
        ("gpt-4o-mini-2024-07-18", "chat", 2, "redact"),
        ("gpt-3.5-turbo-0125", "chat", 2, "report"),
        ("gpt-4o-mini-2024-07-18", "dpo", 2, "report"),
    ],
)
def test_export_writes_what_the_plain_builder_writes(
    db_url: str,
    conn: Conn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    fmt: str,
    workers: int,
    pii_mode: str,
) -> None:
    monkeypatch.setattr(export_chunks, "INLINE_ROWS", 50)  # chunks inline, then in worker processes
    monkeypatch.setattr(export_chunks, "CHUNK_ROWS", 37)
    fill(conn, 400)
    info = tokens.prepare(models.lookup(model))
    req = ExportRequest(
        namespace=NS,
        out_dir=tmp_path,
        base_model=model,
        system_prompt=SHORT,
        validation_fraction=0.2,
        format=fmt,
        workers=workers,
        pii=pii_mode,
    )
    want, got = reference(db_url, req, info), exported(db_url, req)
    assert got["rows"] == want["rows"] > 300
    assert got["skipped"] == want["skipped"]
    assert got["counts"] == want["counts"]
    assert got["files"] == want["files"]
    assert got["pii"] == want["pii"]
    # personal data found in plain rows, in a JSON answer only after decoding it, and not
    # in rows whose digits only look like it (the pre-check passes them to the full scan)
    assert {"email", "phone"} <= {k for r in want["pii"] for k in r["kinds"]}
    escaped = {
        r["id"]
        for r in conn.execute(
            f"SELECT id FROM {NS}_openai_chat_completion WHERE user_prompt LIKE 'escaped%%'"
        )
    }
    assert escaped & {r["id"] for r in want["pii"] if "email" in r["kinds"]}
    # the rows cover what they claim to: examples, skips, tool calls, corrections, multi-turn
    lines = [orjson.loads(line) for line in got["files"]["train"].splitlines()]
    assert len(lines) > 20 and want["skipped"] and got["files"]["validation"]
    if fmt == "chat":
        assert any("tools" in e for e in lines)
        assert any(len(e["messages"]) > 3 for e in lines)
        assert any("fixed" in str(e["messages"][-1].get("content")) for e in lines)
        assert any("\\" in e["messages"][1].get("content", "") for e in lines if e["messages"][1:])


def test_plain_shortcut_builds_what_chat_example_builds() -> None:
    """``examples.plain_chat`` answers for a row only what ``chat_example`` builds from it,
    and only for rows that are plain text turns; every other row goes the full way."""
    rng, took = random.Random(5), 0
    for i in range(3000):
        _, request, response, corrected = varied_row(rng, i)
        # through JSON as the export reads them: key order as recorded
        request, response = orjson.loads(json.dumps(request)), orjson.loads(json.dumps(response))
        fast = examples.plain_chat(request, response, corrected, SHORT)
        source = examples.SourceRow(i, 1, "p", request, response, corrected)
        try:
            full = examples.chat_example(source, SHORT)
        except examples.Skip:
            assert fast is None
            continue
        if fast is None:
            continue
        took += 1
        assert orjson.dumps({"messages": fast}) == orjson.dumps(full)
        assert export_chunks._plain(full)
    assert took > 200  # two of the 14 shapes are plain, half of them without a dict correction
    # a Responses row is rebuilt by responses.as_chat, whatever its request also holds
    request = {"input": "hi", "messages": [{"role": "user", "content": "hi"}]}
    assert examples.plain_chat(request, {"object": "response", "output": []}, "ok", SHORT) is None
    assert examples.plain_chat(request, completion({"role": "assistant"}), "ok", SHORT)

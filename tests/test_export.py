"""Export: short-prompt examples, validation, tokens, stable split, lineage."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tiktoken

from curation.db.connect import connection
from curation.export import models, tokens
from curation.export.run import ExportRequest, export
from tests.cli import run, spawn
from tests.factories import LONG_PROMPT, add_row

SHORT = "Return the locations mentioned, as a JSON list."
TOOLS = [{"type": "function", "function": {"name": "geocode", "parameters": {"type": "object"}}}]
Conn = psycopg.Connection[dict[str, object]]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cookbook_format_errors(dataset: list[Any]) -> dict[str, int]:
    """OpenAI cookbook's 'Data preparation and analysis for chat model fine-tuning' checks, verbatim in spirit."""
    errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or ("content" not in message and "tool_calls" not in message):
                errors["message_missing_key"] += 1
            if any(
                k
                not in (
                    "role",
                    "content",
                    "name",
                    "function_call",
                    "weight",
                    "tool_calls",
                    "tool_call_id",
                )
                for k in message
            ):
                errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function", "tool"):
                errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None) or message.get("tool_calls", None)
            if (not content and not function_call) or (
                content is not None and not isinstance(content, str)
            ):
                errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            errors["example_missing_assistant_message"] += 1
    return dict(errors)


def do_export(conn: Conn, out: Path, model: str = "gpt-4o-mini-2024-07-18", **kw: Any) -> Any:
    kw.setdefault("system_prompt", SHORT)
    return export(conn, ExportRequest(namespace="locations", out_dir=out, base_model=model, **kw))  # type: ignore[arg-type]


def test_short_prompt_replaces_production_prompt(db_url: str, conn: Conn, tmp_path: Path) -> None:
    for i in range(30):
        add_row(conn, "locations", f"I live in city {i}", f'["city {i}"]')
    add_row(conn, "locations", "not included", "x", included=False)
    add_row(conn, "locations", "excluded", "x", excluded=True)
    with connection(db_url) as c:
        result = do_export(c, tmp_path)
    everything = "".join(p.read_text() for p in tmp_path.iterdir())
    assert LONG_PROMPT.strip()[:40] not in everything
    examples = lines(tmp_path / "train.jsonl") + lines(tmp_path / "validation.jsonl")
    assert len(examples) == 30 == result.examples
    assert all(e["messages"][0] == {"role": "system", "content": SHORT} for e in examples)
    assert all(
        [m["role"] for m in e["messages"]] == ["system", "user", "assistant"] for e in examples
    )
    prompts = {e["messages"][1]["content"] for e in examples}
    assert "not included" not in prompts and "excluded" not in prompts
    assert cookbook_format_errors(examples) == {}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_no_system_prompt_means_no_system_message(db_url: str, conn: Conn, tmp_path: Path) -> None:
    for i in range(3):
        add_row(conn, "locations", f"p{i}")
    with connection(db_url) as c:
        do_export(c, tmp_path, system_prompt=None, validation_fraction=0)
    assert all(e["messages"][0]["role"] == "user" for e in lines(tmp_path / "train.jsonl"))


def test_tool_calls_and_corrections(db_url: str, conn: Conn, tmp_path: Path) -> None:
    call = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "geocode", "arguments": '{"q": "Lyon"}'},
        }
    ]
    tool_row = add_row(conn, "locations", "Lyon?", None, tools=TOOLS, tool_calls=call)
    fixed_row = add_row(
        conn,
        "locations",
        "Pariss",
        "wrong",
        corrected={"role": "assistant", "content": '["Paris"]'},
    )
    with connection(db_url) as c:
        result = do_export(c, tmp_path, validation_fraction=0)
    by_prompt = {e["messages"][1]["content"]: e for e in lines(tmp_path / "train.jsonl")}
    tool = by_prompt["Lyon?"]
    assert tool["tools"] == TOOLS and tool["parallel_tool_calls"] is False
    assert tool["messages"][-1] == {"role": "assistant", "tool_calls": call}
    assert by_prompt["Pariss"]["messages"][-1] == {"role": "assistant", "content": '["Paris"]'}
    assert cookbook_format_errors(list(by_prompt.values())) == {}
    assert result.manifest["counts"]["train"] == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["rows"]["train"]["ids"]) == sorted([tool_row, fixed_row])


def test_bad_rows_are_skipped_and_reported(db_url: str, conn: Conn, tmp_path: Path) -> None:
    good = add_row(conn, "locations", "good", "fine")
    empty = add_row(conn, "locations", "empty", "")
    weird = add_row(conn, "locations", "weird", "x", corrected=42)
    with connection(db_url) as c:
        result = do_export(c, tmp_path, validation_fraction=0)
    reasons = {s["id"]: s["reason"] for s in result.manifest["skipped"]}
    assert set(reasons) == {empty, weird}
    assert reasons[empty].startswith("missing_content")
    assert "neither a message nor text" in reasons[weird]
    assert [e["messages"][1]["content"] for e in lines(tmp_path / "train.jsonl")] == ["good"]
    assert result.manifest["ready_to_submit"] is False
    assert "include 9 more" in result.manifest["warnings"][0]
    assert good in json.loads((tmp_path / "manifest.json").read_text())["rows"]["train"]["ids"]


def test_rows_of_any_shape_are_examples_or_skipped(db_url: str, conn: Conn, tmp_path: Path) -> None:
    """A recorded request or response of an unexpected shape is a skipped row, never a crash."""
    table = "locations_openai_chat_completion"
    good = add_row(conn, "locations", "good", "fine")
    listed = add_row(
        conn,
        "locations",
        "listed role",
        messages=[{"role": ["system"], "content": "x"}, {"role": "user", "content": "listed role"}],
    )
    bad = {
        "text message": {"choices": [{"message": "hi"}]},
        "text tool calls": {"choices": [{"message": {"content": None, "tool_calls": "zz"}}]},
        "bad tool call": {
            "choices": [{"message": {"content": "a", "tool_calls": [{"function": "f"}]}}]
        },
        "choices object": {"choices": {"0": {}}},
    }
    odd: dict[str, int] = {}
    for prompt, response in bad.items():
        odd[prompt] = add_row(conn, "locations", prompt)
        conn.execute(
            f"UPDATE {table} SET response = %s WHERE id = %s", [json.dumps(response), odd[prompt]]
        )
    texts = add_row(conn, "locations", "text messages")
    conn.execute(
        f"UPDATE {table} SET request = %s WHERE id = %s",
        [json.dumps({"messages": "abc", "tools": "t"}), texts],
    )
    with connection(db_url) as c:
        result = do_export(c, tmp_path, validation_fraction=0)
    reasons = {s["id"]: s["reason"] for s in result.manifest["skipped"]}
    assert set(reasons) == {listed, texts, *odd.values()}
    assert "role" in reasons[listed] and "unhashable" not in reasons[listed]
    assert "tool call" in reasons[odd["bad tool call"]]
    assert [e["messages"][1]["content"] for e in lines(tmp_path / "train.jsonl")] == ["good"]
    assert good in json.loads((tmp_path / "manifest.json").read_text())["rows"]["train"]["ids"]


def test_split_is_stable_as_data_grows(db_url: str, conn: Conn, tmp_path: Path) -> None:
    for i in range(200):
        add_row(conn, "locations", f"Prompt number {i}")
    with connection(db_url) as c:
        first = do_export(c, tmp_path / "a", validation_fraction=0.2)
    for i in range(200, 400):
        add_row(conn, "locations", f"Prompt number {i}")
    with connection(db_url) as c:
        second = do_export(c, tmp_path / "b", validation_fraction=0.2)

    def rows(folder: str, which: str) -> set[int]:
        return set(
            json.loads((tmp_path / folder / "manifest.json").read_text())["rows"][which]["ids"]
        )

    assert rows("a", "validation") <= rows("b", "validation")
    assert rows("a", "train") <= rows("b", "train")
    assert 20 <= len(rows("a", "validation")) <= 60  # about 20% of 200
    assert first.dataset_id != second.dataset_id


def test_same_data_same_dataset(db_url: str, conn: Conn, tmp_path: Path) -> None:
    for i in range(12):
        add_row(conn, "locations", f"q{i}")
    with connection(db_url) as c:
        a = do_export(c, tmp_path / "a")
        b = do_export(c, tmp_path / "b")
    assert a.sha256 == b.sha256 and a.dataset_id == b.dataset_id
    lineage = conn.execute(
        "SELECT count(*) AS n, min(row_version) AS v FROM dataset_row WHERE dataset_id = %s",
        [a.dataset_id],
    ).fetchone()
    assert lineage == {"n": 12, "v": 1}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme:locations:abc123", "o200k_base"),
    ],
)
def test_token_counts_equal_tiktoken(
    db_url: str, conn: Conn, tmp_path: Path, model: str, encoding: str
) -> None:
    add_row(conn, "locations", "Ich wohne in München, nicht in Zürich 🇨🇭", '["München", "Zürich"]')
    with connection(db_url) as c:
        result = do_export(c, tmp_path, model=model, validation_fraction=0)
    [example] = lines(tmp_path / "train.jsonl")
    enc = tiktoken.get_encoding(encoding)
    expected = 3 + sum(3 + sum(len(enc.encode(v)) for v in m.values()) for m in example["messages"])
    assert models.lookup(model).encoding == encoding
    assert result.manifest["tokens"]["train"] == expected == tokens.count_example(example, encoding)


def test_too_long_examples_are_skipped(db_url: str, conn: Conn, tmp_path: Path) -> None:
    row = add_row(conn, "locations", "word " * 20000)
    with connection(db_url) as c:
        result = do_export(c, tmp_path, model="gpt-3.5-turbo-0125")
    assert result.manifest["skipped"][0]["id"] == row
    assert "over gpt-3.5-turbo-0125's limit of 16385" in result.manifest["skipped"][0]["reason"]


def test_dpo_pairs_from_corrections(db_url: str, conn: Conn, tmp_path: Path) -> None:
    add_row(
        conn, "locations", "Pariss", "[]", corrected={"role": "assistant", "content": '["Paris"]'}
    )
    add_row(conn, "locations", "no fix", "ok")
    with connection(db_url) as c:
        result = do_export(c, tmp_path, format="dpo", validation_fraction=0)
    [pair] = lines(tmp_path / "train.jsonl")
    assert pair["input"]["messages"] == [
        {"role": "system", "content": SHORT},
        {"role": "user", "content": "Pariss"},
    ]
    assert pair["preferred_output"] == [{"role": "assistant", "content": '["Paris"]'}]
    assert pair["non_preferred_output"] == [{"role": "assistant", "content": "[]"}]
    assert result.manifest["counts"]["skipped"] == 1


def test_cli_export_json_and_errors(db_url: str, conn: Conn, tmp_path: Path) -> None:
    for i in range(11):
        add_row(conn, "locations", f"c{i}")
    conn.execute(
        "UPDATE namespace SET training_system_prompt = %s WHERE name = 'locations'", [SHORT]
    )
    result = run(
        db_url, "export", "locations", "--out", str(tmp_path), "--model", "gpt-4o-mini", "--json"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["system_prompt"] == SHORT and manifest["counts"]["examples"] == 11
    assert (
        manifest["base_model"] == "gpt-4o-mini-2024-07-18"
        and manifest["estimated_training_cost_usd"] > 0
    )
    unknown = run(db_url, "export", "locations", "--out", str(tmp_path), "--model", "llama-9")
    assert unknown.exit_code == 2 and "no known token limit for model 'llama-9'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    no_model = run(db_url, "export", "locations", "--out", str(tmp_path))
    assert no_model.exit_code == 2 and "--base-model" in no_model.stderr
    missing = run(db_url, "export", "nope", "--out", str(tmp_path), "--model", "gpt-4o-mini")
    assert missing.exit_code == 3


def test_missing_tiktoken_files_is_one_line(db_url: str, conn: Conn, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.harness import ROOT

    add_row(conn, "locations", "x")
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation",
            "--database-url",
            db_url,
            "export",
            "locations",
            "--out",
            str(tmp_path / "out"),
            "--model",
            "gpt-4o-mini",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "TIKTOKEN_CACHE_DIR" in done.stderr


def test_parallel_export_writes_the_same_files(
    db_url: str, conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.export import chunks as export_chunks

    monkeypatch.setattr(export_chunks, "INLINE_ROWS", 10)
    monkeypatch.setattr(export_chunks, "CHUNK_ROWS", 7)
    for i in range(60):
        add_row(conn, "locations", f"prompt {i}", "" if i % 17 == 0 else f"answer {i}")
    with connection(db_url) as c:
        one = do_export(c, tmp_path / "one", workers=1, validation_fraction=0.2)
        two = do_export(c, tmp_path / "two", workers=2, validation_fraction=0.2)
    assert one.sha256 == two.sha256
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert one.manifest["skipped"] == two.manifest["skipped"] and len(two.manifest["skipped"]) == 4


def test_export_progress_bar_on_a_terminal(db_url: str, conn: Conn, tmp_path: Path) -> None:

    import pexpect

    for i in range(2500):
        add_row(conn, "locations", f"row {i}")
    child = spawn(
        db_url,
        "export",
        "locations",
        "--out",
        str(tmp_path),
        "--model",
        "gpt-4o-mini",
        "--workers",
        "1",
        timeout=120,
    )
    child.expect("exporting")
    child.expect(r"\b(39|40)%")  # 1,000 of 2,500 rows
    child.expect("100%")
    child.expect("wrote")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

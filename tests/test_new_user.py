"""What a new user met (issue 11): the README quick start run as written, the training prompt
that must never go missing silently, corrections in their original's format, and messages
that say what to run."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import tiktoken

from curation.curate import answers
from curation.export import tokens
from tests.cli import run, run_json
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, query, wait_for
from tests.pg import ROOT

Conn = psycopg.Connection[dict[str, object]]
Start = Callable[..., ProxyProcess]
MODEL = "gpt-4o-mini-2024-07-18"
NO_PROMPT = "no training system prompt for locations"


@pytest.fixture
def env(fake_openai: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-new-user",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


# -- the README quick start, as written ----------------------------------------------------------


def quick_start() -> tuple[list[list[str]], str, list[list[str]]]:
    """The quick start's curation commands before and after its Python call, and the call."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert python is not None, "the quick start has no Python call"
    commands: list[tuple[int, list[str]]] = []
    for block in re.finditer(r"```sh\n(.*?)```", section, re.S):
        for line in block.group(1).splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [".venv/bin/curation"] and words[1:3] != ["db", "psql"]:
                commands.append((block.start(), words[1:]))
    before = [c for at, c in commands if at < python.start()]
    after = [c for at, c in commands if at > python.start()]
    return before, python.group(1), after


def test_the_readme_quick_start_trains_with_the_short_prompt(
    start_proxy: Start, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, call, after = quick_start()
    assert [c[:2] for c in before] == [["ns", "create"]], before
    short = before[0][before[0].index("--system-prompt") + 1]
    assert 0 < len(short) < 200
    monkeypatch.chdir(tmp_path)
    proxy = start_proxy()
    for args in before:  # with the proxy running, as the README says
        done = run(db_url, *args)
        assert done.exit_code == 0, done.output
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-quick-start")
    exec(call.replace("http://127.0.0.1:8080", proxy.url), {})  # the README's own call
    wait_for(lambda: query(db_url, "SELECT id FROM locations_openai_chat_completion"))
    for args in after:
        done = run(db_url, *args)
        assert done.exit_code == 0, (args, done.output)
        assert NO_PROMPT not in done.output
    out = Path(after[-1][after[-1].index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["system_prompt"] == short and manifest["counts"]["examples"] == 1
    written = (out / "train.jsonl").read_text().splitlines()  # the README says so
    [example] = [json.loads(line) for line in written]
    assert example["messages"][0] == {"role": "system", "content": short}
    assert example["messages"][1]["content"] == "I grew up in Lyon and moved to Berlin"


# -- a missing training prompt is never silent ---------------------------------------------------


def rows_without_prompt(conn: Conn, n: int = 12) -> None:
    for i in range(n):
        add_row(conn, "locations", f"I was born in town {i}", f'["town {i}"]')


def test_export_without_a_training_prompt_warns_on_stderr(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    rows_without_prompt(conn)
    done = run(db_url, "export", "locations", "--out", str(tmp_path / "a"), "--model", MODEL)
    assert done.exit_code == 0, done.output
    [warning] = [line for line in lines(done.stderr) if NO_PROMPT in line]
    assert "examples carry no system message" in warning
    assert "curation ns set locations --system-prompt" in warning
    assert NO_PROMPT not in done.stdout
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["system_prompt"] is None and warning.endswith(manifest["warnings"][-1])
    first = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "user"  # what the warning says

    as_json = run(
        db_url, "export", "locations", "--out", str(tmp_path / "b"), "--model", MODEL, "--json"
    )
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["system_prompt"] is None
    assert NO_PROMPT in as_json.stderr

    assert (
        run(db_url, "ns", "set", "locations", "--system-prompt", "List the places.").exit_code == 0
    )
    fixed = run(db_url, "export", "locations", "--out", str(tmp_path / "c"), "--model", MODEL)
    assert fixed.exit_code == 0 and NO_PROMPT not in fixed.output


def test_retrain_refuses_without_a_training_prompt_unless_told(
    db_url: str, conn: Conn, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    rows_without_prompt(conn)
    refused = run(db_url, "retrain", "locations", "--model", MODEL, env=env)
    assert refused.exit_code == 2
    [line] = lines(refused.stderr)
    assert NO_PROMPT in line and "--no-system-prompt" in line
    assert "curation ns set locations --system-prompt" in line
    assert query(db_url, "SELECT count(*) AS n FROM fine_tune_job")[0]["n"] == 0
    assert not fake_openai.files and not fake_openai.jobs  # nothing uploaded

    told = run(db_url, "retrain", "locations", "--model", MODEL, "--no-system-prompt", env=env)
    assert told.exit_code == 0, told.output
    assert [line for line in lines(told.stderr) if NO_PROMPT in line]
    [job] = query(db_url, "SELECT * FROM fine_tune_job")
    assert job["status"] != "failed"

    given = run(
        db_url, "retrain", "locations", "--model", MODEL, "--system-prompt", "Places.", env=env
    )
    assert given.exit_code == 0, given.output  # a prompt on the command line is enough
    assert NO_PROMPT not in given.output


def test_ns_show_makes_the_missing_prompt_visible(db_url: str, conn: Conn) -> None:
    rows_without_prompt(conn, 1)
    shown = run(db_url, "ns", "show", "locations")
    assert shown.exit_code == 0
    assert (
        "training_system_prompt: (none: training examples carry no system message)" in shown.stdout
    )
    [warning] = lines(shown.stderr)
    assert NO_PROMPT in warning and "curation ns suggest-prompt locations" in warning
    assert run_json(db_url, "ns", "show", "locations")["warnings"] == [
        warning.removeprefix("warning: ")
    ]
    run(db_url, "ns", "set", "locations", "--system-prompt", "List the places.")
    again = run(db_url, "ns", "show", "locations")
    assert "training_system_prompt: List the places." in again.stdout and again.stderr == ""
    assert run_json(db_url, "ns", "show", "locations")["warnings"] == []


def test_ns_create_of_a_namespace_the_proxy_made_sets_its_prompt(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")  # as the proxy does on first use
    late = run(db_url, "ns", "create", "locations", "--system-prompt", "List the places.")
    assert late.exit_code == 0 and "set its training_system_prompt" in late.stdout
    other = run(db_url, "ns", "create", "locations", "--system-prompt", "Something else.")
    assert other.exit_code == 0 and "keeps its training_system_prompt" in other.stdout
    assert (
        "to change it: curation ns set locations --system-prompt 'Something else.'" in other.stdout
    )
    assert (
        run_json(db_url, "ns", "show", "locations")["training_system_prompt"] == "List the places."
    )


def test_suggest_prompt_prints_the_most_called_production_prompt(db_url: str, conn: Conn) -> None:
    often, rarely = "You extract places. Answer with JSON. " * 5, "Be brief."
    a = add_row(conn, "locations", "one", "[]")
    b = add_row(conn, "locations", "two", "[]")
    c = add_row(conn, "locations", "three", "[]")
    add_row(conn, "locations", "no prompt", "[]")
    table = "locations_openai_chat_completion"
    conn.execute(
        f"UPDATE {table} SET system_prompt = %s, times_seen = 1 WHERE id IN (%s, %s)",
        [rarely, a, b],
    )
    conn.execute(f"UPDATE {table} SET system_prompt = %s, times_seen = 5 WHERE id = %s", [often, c])
    conn.execute(f"UPDATE {table} SET system_prompt = NULL WHERE user_prompt = 'no prompt'")

    no_model = run(db_url, "ns", "suggest-prompt", "locations")  # no base model, none recorded
    assert no_model.exit_code == 2 and len(lines(no_model.stderr)) == 1
    assert "--model" in no_model.stderr

    conn.execute(f"UPDATE {table} SET model = 'gpt-4o-2024-08-06'")
    shown = run_json(db_url, "ns", "suggest-prompt", "locations")
    o200k = len(tiktoken.get_encoding("o200k_base").encode_ordinary(often))
    assert shown["system_prompt"] == often and shown["tokens"] == o200k
    assert (
        shown["rows"],
        shown["calls"],
        shown["rows_with_a_prompt"],
        shown["distinct_prompts"],
    ) == (1, 5, 3, 2)
    assert shown["model"] == "gpt-4o-2024-08-06" and "o200k_base" in shown["counted_with"]

    cl100k = run_json(db_url, "ns", "suggest-prompt", "locations", "--model", "gpt-3.5-turbo-0125")
    assert cl100k["tokens"] == len(tiktoken.get_encoding("cl100k_base").encode_ordinary(often))

    text = run(db_url, "ns", "suggest-prompt", "locations")
    assert text.exit_code == 0 and text.stdout == often + "\n"  # the prompt alone: > prompt.txt
    [about] = lines(text.stderr)
    assert f"1 of 3 rows with one (5 calls, 2 distinct prompts), {o200k} tokens" in about

    add_row(conn, "quiet", "hello", "hi")
    conn.execute("UPDATE quiet_openai_chat_completion SET system_prompt = NULL")
    none = run(db_url, "ns", "suggest-prompt", "quiet")
    assert none.exit_code == 3 and len(lines(none.stderr)) == 1
    assert "no row of quiet carries a production system prompt" in none.stderr


# -- corrections keep their original's format ----------------------------------------------------


@pytest.mark.parametrize(
    ("original", "written", "stored"),
    [
        (
            '{"locations":["Paris"]}',
            '{\n  "locations": [\n    "Lyon",\n    "Rome"\n  ]\n}',
            '{"locations":["Lyon","Rome"]}',
        ),
        (
            '{"locations": ["Paris"]}',
            '{"locations":["Lyon"],"n":1}',
            '{"locations": ["Lyon"], "n": 1}',
        ),
        ('["Paris"]', '[ "Lyon" ,\n "Rome" ]', '["Lyon","Rome"]'),
        ('{"b":1,"a":2}', '{"z": 1, "a": 2}', '{"z":1,"a":2}'),  # the curator's key order
        ('{"city":"Z\\u00fcrich"}', '{"city": "Genève"}', '{"city":"Gen\\u00e8ve"}'),
        ('{"city":"Zürich"}', '{"city": "Genève"}', '{"city":"Genève"}'),
        (
            '{\n    "a": 1,\n    "b": 2\n}',
            '{"a": 3, "b": [4]}',
            '{\n    "a": 3,\n    "b": [\n        4\n    ]\n}',
        ),
        ("Paris and Lyon", '  {"a": 1}  ', '  {"a": 1}  '),  # not JSON: exactly as written
        ('{"a":1}', "no longer JSON", "no longer JSON"),
    ],
)
def test_a_correction_is_stored_in_its_original_style(
    original: str, written: str, stored: str
) -> None:
    assert answers.restyle(original, written) == stored
    assert answers.same_style(original, stored)
    message = answers.edited_message({"role": "assistant", "content": original}, written)
    assert message == {"role": "assistant", "content": stored}


def test_saving_an_old_spaced_correction_again_stores_it_as_the_original_is() -> None:
    """What `curation doctor` tells a curator to do about a correction stored before this fix."""
    row = {
        "response": {"choices": [{"message": {"role": "assistant", "content": '{"a":["x"]}'}}]},
        "corrected_response": {"role": "assistant", "content": '{"a": ["y"]}'},
    }
    again = answers.correction(row, answers.pretty('{"a": ["y"]}'))
    assert again == {"role": "assistant", "content": '{"a":["y"]}'}
    assert not answers.unchanged(row, again)  # a save stores it
    fixed = {**row, "corrected_response": again}
    assert answers.unchanged(fixed, answers.correction(fixed, '{"a": ["y"]}'))
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    tool_row = {"response": {"choices": [{"message": {"content": None, "tool_calls": calls}}]}}
    assert answers.correction(tool_row, json.dumps(calls))["tool_calls"] == calls


def test_style_of_untrusted_text_is_total() -> None:
    for text in ["", "[" * 100_000, '"\\u12', '{"a":"\\', "\x00", "[1,]", '"\\uzzzz"']:
        answers.style_of(text)
        assert answers.restyle(text, '{"a": 1}') in ('{"a": 1}', '{"a":1}')


def editor_writing(tmp_path: Path, content: str) -> str:
    script = tmp_path / "editor.py"
    (tmp_path / "content").write_text(content)
    script.write_text(
        "import sys, pathlib\n"
        f"pathlib.Path(sys.argv[1]).write_text(pathlib.Path({str(tmp_path / 'content')!r}).read_text())\n"
    )
    return f"{sys.executable} {script}"


def test_curation_edit_keeps_a_compact_answer_compact(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    row = add_row(conn, "locations", "Lyon then Rome", '{"locations":["Lyon"]}')
    editor = editor_writing(tmp_path, '{\n  "locations": [\n    "Lyon",\n    "Rome"\n  ]\n}\n')
    done = run(db_url, "edit", "locations", str(row), env={"EDITOR": editor})
    assert done.exit_code == 0, done.output
    [fixed] = query(db_url, "SELECT corrected_response FROM locations_openai_chat_completion")
    assert fixed["corrected_response"]["content"] == '{"locations":["Lyon","Rome"]}'


def test_saving_an_answer_as_it_was_stores_nothing(db_url: str, conn: Conn) -> None:
    row = add_row(conn, "locations", "Lyon", '{"locations":["Lyon"]}')
    done = run(db_url, "edit", "locations", str(row), env={"EDITOR": "true"})
    assert done.exit_code == 0 and "unchanged: nothing stored" in done.stderr
    [kept] = query(db_url, "SELECT corrected_response FROM locations_openai_chat_completion")
    assert kept["corrected_response"] is None


def test_edit_restores_an_old_correction_into_the_originals_style(db_url: str, conn: Conn) -> None:
    """What doctor asks for: open the row, save it unchanged, and the correction is
    stored again in the recorded answer's style."""
    row = add_row(conn, "locations", "Lyon then Rome", '{"locations":["Lyon"]}')
    spaced = '{"locations": ["Lyon", "Rome"]}'
    conn.execute(
        "UPDATE locations_openai_chat_completion SET corrected_response = %s::json WHERE id = %s",
        (json.dumps({"role": "assistant", "content": spaced}), row),
    )
    done = run(db_url, "edit", "locations", str(row), env={"EDITOR": "true"})
    assert done.exit_code == 0, done.output
    [fixed] = query(db_url, "SELECT corrected_response FROM locations_openai_chat_completion")
    assert fixed["corrected_response"]["content"] == '{"locations":["Lyon","Rome"]}'


# -- messages ------------------------------------------------------------------------------------


def test_already_included_says_row_is_or_rows_are(db_url: str, conn: Conn) -> None:
    a = add_row(conn, "locations", "a", included=False)
    b = add_row(conn, "locations", "b", included=False)
    assert run(db_url, "include", "locations", str(a), str(b)).exit_code == 0
    both = run(db_url, "include", "locations", str(a), str(b))
    assert both.exit_code == 7 and f"rows {a}, {b} are already included" in both.stderr
    one = run(db_url, "include", "locations", str(a))
    assert one.exit_code == 7 and f"row {a} is already included" in one.stderr


def test_a_missing_tiktoken_file_prints_the_line_to_run(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    if not any((f / tokens.cache_file("o200k_base")).is_file() for f in tokens.KNOWN_FOLDERS):
        pytest.skip(
            "no tokenizer copy beside this clone (../shared/tiktoken): the hint names none; "
            "test_the_offline_hint_without_a_known_copy covers that message"
        )
    add_row(conn, "locations", "x")
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    args = [
        "--database-url",
        db_url,
        "export",
        "locations",
        "--out",
        str(tmp_path / "o"),
        "--model",
        MODEL,
    ]
    done = subprocess.run(
        [sys.executable, "-m", "curation", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    [line] = lines(done.stderr)
    found = re.search(r"run: export TIKTOKEN_CACHE_DIR=(\S+)", line)
    assert found is not None, line
    folder = Path(found.group(1))
    assert (folder / tokens.cache_file("o200k_base")).is_file()  # pasting it works
    assert "## Running offline" in (ROOT / "README.md").read_text()


def test_the_offline_hint_without_a_known_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tokens, "KNOWN_FOLDERS", (tmp_path,))
    hint = tokens.offline_hint("o200k_base")
    assert "export TIKTOKEN_CACHE_DIR=/path/to/tiktoken" in hint
    assert "fb374d419588a4632f3f557e76b4b70aebbca790" in hint  # the file name tiktoken looks for
    assert "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken" in hint
    (tmp_path / "fb374d419588a4632f3f557e76b4b70aebbca790").write_text("")
    assert tokens.offline_hint("o200k_base").endswith(f"run: export TIKTOKEN_CACHE_DIR={tmp_path}")

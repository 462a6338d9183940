"""Tokens, limits and prices for every model: open-weight ones counted by their own template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.db.connect import connection
from curation.errors import InvalidInput
from curation.export import models, tokens
from curation.export.run import ExportRequest, export
from tests.cli import run
from tests.factories import add_row
from tests.pg import ROOT

Conn = psycopg.Connection[dict[str, object]]
SHORT = "Return the weather."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
PLAIN = {
    "messages": [
        {"role": "system", "content": SHORT},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! How can I help?"},
    ]
}
WITH_TOOLS = {**PLAIN, "tools": TOOLS}
TOOL_CALL = {
    "messages": [
        {"role": "system", "content": SHORT},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"t": 21}'},
        {"role": "assistant", "content": "Sunny, 21."},
    ],
    "tools": TOOLS,
}


def _info(path: Path, **fields: Any) -> models.ModelInfo:
    return tokens.prepare(models.lookup(str(path), **fields))


def _template_length(tokenizer: Any, example: dict[str, Any]) -> int:
    encoded = tokenizer.apply_chat_template(
        example["messages"], tools=example.get("tools"), tokenize=True, return_dict=True
    )
    return len(encoded["input_ids"])


# -- the catalogue (no extra needed) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "snapshot"),
    [
        ("ft:gpt-4.1-2025-04-14:acme::abc123", "gpt-4.1-2025-04-14"),
        ("ft:gpt-4.1-mini-2025-04-14:acme:locations:abc123", "gpt-4.1-mini-2025-04-14"),
        ("ft:gpt-4.1-nano:acme::x", "gpt-4.1-nano-2025-04-14"),
    ],
)
def test_fine_tuned_names_take_their_base_models_encoding(name: str, snapshot: str) -> None:
    """tiktoken maps ft:gpt-4.1-... to cl100k_base; gpt-4.1 counts with o200k_base."""
    info = models.lookup(name)
    assert (info.name, info.encoding) == (snapshot, "o200k_base")


def test_every_catalogue_entry_says_how_to_count_and_what_it_costs() -> None:
    data = json.loads((ROOT / "curation" / "data" / "models.json").read_text())
    for name in data["models"]:
        info = models.lookup(name)
        assert bool(info.encoding) != bool(info.tokenizer), name
        assert info.max_example_tokens and info.max_example_tokens > 0, name
        cost, basis = info.training_cost(1_000_000, 3)
        assert cost is not None and cost > 0, name
        assert info.backend in ("openai", "together", "local"), name
        if info.backend == "local":
            assert basis.startswith("estimate:"), basis


def test_default_local_student_and_together_models_are_listed() -> None:
    local = models.lookup("Qwen/Qwen2.5-0.5B-Instruct")
    assert (local.backend, local.tokenizer, local.max_example_tokens) == (
        "local",
        "Qwen/Qwen2.5-0.5B-Instruct",
        32768,
    )
    together = models.lookup("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    assert together.backend == "together" and together.training_per_1m == 0.48
    assert together.training_cost(2_000_000, 1) == (
        0.96,
        "2000000 tokens at $0.48/1M (together price)",
    )


def test_unknown_models_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no known token limit for model 'gpt-9'"):
        models.lookup("gpt-9", open_models=True)
    with pytest.raises(InvalidInput, match="is not a model directory"):
        models.lookup(str(tmp_path / "nothing-here"), open_models=True)
    # a hub id is only taken as a model where tokens are counted, never for call prices
    with pytest.raises(InvalidInput):
        models.lookup("acme/unknown-model")
    assert models.lookup("acme/unknown-model", open_models=True).tokenizer == "acme/unknown-model"


def test_context_limit_from_config_or_tokenizer_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(
        '{"text_config": {"max_position_embeddings": 4096}}'
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer_config.json").write_text('{"model_max_length": 1000}')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer_config.json").write_text('{"model_max_length": 1e30}')
    assert [models.context_limit(tmp_path / d) for d in "abc"] == [4096, 1000, None]
    info = models.lookup(str(tmp_path / "a"))
    assert (info.backend, info.max_example_tokens, info.tokenizer) == (
        "local",
        4096,
        str(tmp_path / "a"),
    )


# -- counting with the model's own template (the training extra) -------------------------------


@pytest.fixture(scope="module")
def tojson_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like Qwen2.5's template: JSON-encodes tool-call arguments, so wants them as a dict."""
    pytest.importorskip("transformers", reason="needs the training extra")
    from tests import tinymodel

    return tinymodel.build(tmp_path_factory.mktemp("tojson-model"), arguments="tojson")


@pytest.mark.parametrize("example", [PLAIN, WITH_TOOLS, TOOL_CALL], ids=["plain", "tools", "call"])
def test_counts_equal_the_chat_templates_length(tiny_model_dir: Path, example: Any) -> None:
    info = _info(tiny_model_dir)
    tokenizer = tokens.hf_tokenizer(info)
    assert tokens.arguments_form(tokenizer) == "string"
    n = tokens.count(example, info)
    assert n.total == n.longest == _template_length(tokenizer, example)
    assert info.counted_with.endswith("own tokenizer and chat template")


def test_tools_and_tool_calls_are_counted(tiny_model_dir: Path) -> None:
    info = _info(tiny_model_dir)
    plain, with_tools = (tokens.count(e, info).total for e in (PLAIN, WITH_TOOLS))
    assert with_tools > plain + 20  # the schema is in the system turn


def test_arguments_given_as_the_template_wants(tojson_model_dir: Path) -> None:
    info = _info(tojson_model_dir)
    tokenizer = tokens.hf_tokenizer(info)
    assert tokens.arguments_form(tokenizer) == "dict"
    messages, tools = tokens.template_inputs(TOOL_CALL, tokenizer)
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert TOOL_CALL["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert '"arguments": {"city": "Paris"}}' in text
    as_dicts = {"messages": messages, "tools": tools}
    n = tokens.count(TOOL_CALL, info).total
    assert n == _template_length(tokenizer, as_dicts)
    assert n < _template_length(tokenizer, TOOL_CALL)  # the double-encoded string is longer
    # the catalogue can say so instead of the probe
    forced = tokens.template_inputs(TOOL_CALL, tokenizer, "string")[0]
    assert forced[2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'


def test_preference_pairs_count_both_sequences(tiny_model_dir: Path) -> None:
    info = _info(tiny_model_dir)
    tokenizer = tokens.hf_tokenizer(info)
    prompt = PLAIN["messages"][:2]
    good, bad = (
        {"role": "assistant", "content": "Hi."},
        {"role": "assistant", "content": "Go away now."},
    )
    pair = {
        "input": {"messages": prompt},
        "preferred_output": [good],
        "non_preferred_output": [bad],
    }
    sides = [_template_length(tokenizer, {"messages": [*prompt, a]}) for a in (good, bad)]
    assert tokens.count(pair, info) == tokens.Count(sum(sides), max(sides))


def test_a_template_that_refuses_the_example_skips_it(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    strict = AutoTokenizer.from_pretrained(tiny_model_dir)
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(
        tokens.Uncountable, match="the chat template refused it: roles must alternate"
    ):
        tokens.count_template(PLAIN, strict, "string")
    info = _info(tiny_model_dir)
    with pytest.raises(ValueError, match="content must be a string or a list of parts"):
        tokens.count({"messages": [{"role": "user", "content": 3}]}, info)


# -- export with an open-weight model ----------------------------------------------------------


def _rows(conn: Conn, n: int = 12) -> None:
    for i in range(n):
        add_row(conn, "weather", f"Weather in city {i}?", f"Sunny in city {i}.")
    add_row(
        conn,
        "weather",
        "Weather in Paris?",
        None,
        tools=TOOLS,
        tool_calls=[CALL],
    )


def _export(db_url: str, out: Path, model: str, **kw: Any) -> Any:
    kw.setdefault("system_prompt", SHORT)
    kw.setdefault("validation_fraction", 0)
    with connection(db_url) as c:
        return export(c, ExportRequest(namespace="weather", out_dir=out, base_model=model, **kw))


def test_export_counts_each_example_with_the_models_template(
    db_url: str, conn: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    _rows(conn)
    result = _export(db_url, tmp_path / "out", str(tiny_model_dir))
    m = result.manifest
    tokenizer = tokens.hf_tokenizer(models.lookup(str(tiny_model_dir)))
    written = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    assert any("tool_calls" in e["messages"][-1] for e in written)
    lengths = [_template_length(tokenizer, e) for e in written]
    assert m["tokens"]["train"] == sum(lengths) and m["tokens"]["longest_example"] == max(lengths)
    assert (m["base_model"], m["tokenizer"], m["encoding"]) == (
        str(tiny_model_dir),
        str(tiny_model_dir),
        None,
    )
    assert m["tokens"]["limit_per_example"] == m["tokens"]["context_limit"] == 2048
    assert m["estimated_training_cost_usd"] is None and m["cost_basis"].startswith("unknown")


def test_dpo_export_counts_both_sides_and_checks_the_longer(
    db_url: str, conn: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    add_row(
        conn, "weather", "Weather?", "Rain.", corrected={"role": "assistant", "content": "Sun."}
    )
    result = _export(db_url, tmp_path / "out", str(tiny_model_dir), format="dpo")
    [pair] = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    count = tokens.count(pair, models.lookup(str(tiny_model_dir)))
    assert count.total > count.longest > 0
    assert result.manifest["tokens"]["train"] == count.total
    assert result.manifest["tokens"]["longest_example"] == count.longest


def test_export_limit_checked_with_the_models_count(
    db_url: str, conn: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    _rows(conn, 2)
    catalogue = tmp_path / "models.json"
    catalogue.write_text(
        json.dumps(
            {
                "models": {
                    "acme/tiny": {
                        "backend": "local",
                        "tokenizer": f"./{tiny_model_dir.name}",  # relative to this file's folder
                        "max_example_tokens": 60,
                        "gpu_hour_usd": 1.0,
                        "training_tokens_per_second": 10,
                    }
                }
            }
        )
    )
    (tmp_path / tiny_model_dir.name).symlink_to(tiny_model_dir)
    result = _export(db_url, tmp_path / "out", "acme/tiny", models_file=catalogue)
    m = result.manifest
    reasons = [s["reason"] for s in m["skipped"]]
    assert reasons and all("too_long" in r and "over acme/tiny's limit of 60" in r for r in reasons)
    assert m["counts"]["train"] + len(reasons) == 3
    assert 0 < m["tokens"]["longest_example"] <= 60
    assert m["tokens"]["context_limit"] == 2048  # from the tokenizer directory's config
    assert m["cost_basis"].startswith("estimate:") and m["estimated_training_cost_usd"] > 0


def test_cli_export_with_a_model_directory_and_errors(
    db_url: str, conn: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    _rows(conn, 11)
    ok = run(
        db_url, "export", "weather", "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir)
    )
    assert ok.exit_code == 0, ok.output
    assert f"tokens counted with {tiny_model_dir}'s own tokenizer" in ok.stdout
    assert "est. training cost unknown" in ok.stdout
    for model, message in [
        ("gpt-9", "no known token limit for model 'gpt-9'"),
        (str(tmp_path / "missing"), "is not a model directory"),
        ("acme/not-a-model", "cannot load the tokenizer of acme/not-a-model"),  # offline: conftest
    ]:
        bad = run(
            db_url,
            "export",
            "weather",
            "--out",
            str(tmp_path / "x"),
            "--model",
            model,
        )
        assert bad.exit_code == 2, bad.output
        assert message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# -- the extra stays optional ------------------------------------------------------------------

SCRIPT = """
import sys
{block}
from curation.cli import main
try:
    main({args!r}, standalone_mode=False)
except Exception as exc:
    print("ERROR", exc)
print("LOADED", sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules))
"""


def _in_process(args: list[str], block: str = "") -> str:
    script = SCRIPT.format(block=block, args=args)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_openai_export_never_imports_the_training_stack(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    _rows(conn, 11)
    args = ["--database-url", db_url, "export", "weather", "--out", str(tmp_path), "--model"]
    out = _in_process([*args, "gpt-4o-mini", "--json"])
    assert "ERROR" not in out and out.strip().endswith("LOADED []")


def test_missing_training_extra_is_one_line(
    db_url: str, conn: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    _rows(conn, 2)
    block = "sys.modules['transformers'] = None  # as if the extra were not installed"
    args = ["--database-url", db_url, "export", "weather", "--out", str(tmp_path), "--model"]
    out = _in_process([*args, str(tiny_model_dir)], block)
    assert (
        f"ERROR counting tokens for {tiny_model_dir} needs the training extra: "
        "pip install 'curation[train]'"
    ) in out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from([*models.ModelInfo.__dataclass_fields__, "other"])


@settings(max_examples=200, deadline=None)
@given(
    entry=st.dictionaries(FIELDS, JSON | st.sampled_from(["./x", "/", "~", ".\x00"]), max_size=6)
)
def test_any_catalogue_entry_reads_or_is_one_line_error(entry: dict[str, Any]) -> None:
    """CURATION_MODELS_FILE is the user's: whatever an entry holds, lookup is total."""
    try:
        info = models._from_entry("m", entry, None)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        return
    assert info.encoding or info.tokenizer
    info.training_cost(1000, 2)
    info.call_cost(10, 10, fine_tuned=False)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(max_size=30)
    | st.sampled_from(["./", "~/x", "ft:", "ft::", "a/b/c", "/\x00", "x" * 5000])
)
def test_any_model_name_resolves_or_is_one_line_error(name: str) -> None:
    try:
        info = models.lookup(name, open_models=True)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        return
    assert info.encoding or info.tokenizer

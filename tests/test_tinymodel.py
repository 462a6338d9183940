"""The tiny local model that the trainer, student and token-count tests stand on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip(
    "transformers", reason="needs the training extra: pip install 'curation[train]'"
)
torch = pytest.importorskip(
    "torch", reason="needs the training extra: pip install 'curation[train]'"
)

from tests import tinymodel  # noqa: E402

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
WITH_TOOLS: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": '{"t": 21}'},
    {"role": "assistant", "content": "Sunny, 21."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_model_dir)


def test_directory_loads_as_a_hugging_face_model(tiny_model_dir: Path, tokenizer: Any) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 2048
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id[0] == tokenizer.eos_token_id


def test_loaded_tokenizer_splits_text_as_the_trained_one(
    tiny_model_dir: Path, tokenizer: Any
) -> None:
    """AutoTokenizer rebuilds a qwen2 tokenizer with Qwen2's pipeline; it must agree with the file."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "Hello  world, 123 ünïcode\n\n  spaces <|im_start|>user\nhi<|im_end|>"
    assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text).ids


def test_template_renders_tools_tool_calls_and_tool_results(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(WITH_TOOLS, tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert '<|im_start|>user\n<tool_response>\n{"t": 21}\n</tool_response><|im_end|>' in text
    assert text.endswith("<|im_start|>assistant\nSunny, 21.<|im_end|>\n")
    plain = tokenizer.apply_chat_template(WITH_TOOLS[:2], tokenize=False)
    assert (
        plain
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    )


def test_arguments_as_string_or_dict_render_alike(tokenizer: Any) -> None:
    as_dict = json.loads(json.dumps(WITH_TOOLS))
    as_dict[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    render = tokenizer.apply_chat_template
    assert render(as_dict, tools=TOOLS, tokenize=False) == render(
        WITH_TOOLS, tools=TOOLS, tokenize=False
    )


def test_tojson_variant_double_encodes_string_arguments_like_qwen2_5() -> None:
    from jinja2 import Environment

    call = {"function": {"name": "f", "arguments": '{"a": 1}'}}
    template = (
        tinymodel.chat_template("tojson")
        .replace("{%- generation %}", "")
        .replace("{%- endgeneration %}", "")
    )
    env = Environment()
    env.filters["tojson"] = json.dumps
    messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    text = env.from_string(template).render(messages=messages)
    assert '"arguments": "{\\"a\\": 1}"}' in text


def test_generation_prompt(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(WITH_TOOLS[:2], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def _expected_mask(tokenizer: Any, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """Each assistant turn's tokens: from after its generation prompt to its <|im_end|>."""
    render = tokenizer.apply_chat_template
    full = render(messages, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            render(
                messages[:i],
                tools=tools,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        )
        end = (
            len(
                render(messages[: i + 1], tools=tools, tokenize=True, return_dict=True)["input_ids"]
            )
            - 1
        )
        assert full[end - 1] == tokenizer.eos_token_id  # the turn ends in <|im_end|>, then "\n"
        mask[start:end] = [1] * (end - start)
    return mask


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_assistant_mask_marks_exactly_the_assistant_tokens(tokenizer: Any, tools: Any) -> None:
    messages = WITH_TOOLS if tools else [WITH_TOOLS[0], WITH_TOOLS[1], WITH_TOOLS[4]]
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert out["assistant_masks"] == _expected_mask(tokenizer, messages, tools)
    answered = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answered).endswith("Sunny, 21.<|im_end|>")


def test_generate_produces_tokens(tiny_model_dir: Path, tokenizer: Any) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(
        WITH_TOOLS[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tinymodel.build(tmp_path / "again")
    for name in ("tokenizer.json", "model.safetensors", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name

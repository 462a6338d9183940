"""A tiny random causal LM, built locally as a Hugging Face model directory.

Tests of the local trainer, the student server and exact token counting need
a real model with a real tokenizer and chat template, and nothing may be
downloaded. ``build`` trains a byte-level BPE tokenizer on a small chat-like
corpus (plus the caller's own text), gives it a ChatML template in the shape
of Qwen's (tools in the system turn, ``<tool_call>`` blocks, tool responses,
``{% generation %}`` around assistant output so TRL's assistant-only loss
works), and saves a random 2-layer Qwen2 model beside it. Seeded: the same
inputs give the same directory.

``arguments="tojson"`` makes the template double-encode tool-call arguments
given as a JSON string, as Qwen2.5's template does (it expects a dict);
the default passes a string through and JSON-encodes a dict, as Qwen3's does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
VOCAB_SIZE = 640
SEED = 1234

DEFAULT_CORPUS = [
    "You are a helpful assistant.",
    "What is the weather in Paris today?",
    "It is sunny in Paris, about 21 degrees.",
    "Where is the nearest train station?",
    "The nearest station is two streets north, next to the market.",
    "Find the opening hours of the museum on Saturday.",
    "The museum opens at 9 and closes at 18 on Saturdays.",
    "Translate 'good morning' into French: bonjour.",
    "Summarise the order: two coffees, one croissant, total 7.50 EUR.",
    "Call the get_weather function with the city name.",
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '<tool_response>\n{"temperature": 21, "sky": "sunny"}\n</tool_response>',
    "# Tools\n\nYou may call one or more functions to assist with the user query.",
    "Berlin, London, Madrid, Rome, Lisbon, Vienna, Oslo, Tokyo, Lima, Cairo.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "Yes. No. Thanks! Sure, here you go. Sorry, I cannot help with that.",
]

# Qwen-style ChatML with tools. ``ARGS`` is replaced by how arguments render.
TEMPLATE = r"""
{%- macro text(content) -%}
    {%- if content is string -%}{{- content -}}
    {%- elif content -%}{%- for part in content -%}{%- if part.text is defined -%}{{- part.text -}}{%- endif -%}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- text(messages[0].content) + '\n\n' }}{%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>' }}
    {%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object within <tool_call></tool_call> tags.<|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + text(messages[0].content) + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role in ['system', 'developer'] and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + text(message.content) + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
        {{- text(message.content) }}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {%- if loop.first and message.content %}{{- '\n' }}{%- elif not loop.first %}{{- '\n' }}{%- endif %}
            {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            ARGS
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + text(message.content) + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""
ARGUMENTS = {
    "auto": "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}",
    "tojson": "{{- tool_call.arguments | tojson }}",
}


def chat_template(arguments: Literal["auto", "tojson"] = "auto") -> str:
    return TEMPLATE.replace("ARGS", ARGUMENTS[arguments]).strip() + "\n"


def build(
    path: Path,
    *,
    corpus: list[str] | None = None,
    arguments: Literal["auto", "tojson"] = "auto",
    max_positions: int = 2048,
) -> Path:
    """Write a tiny random Qwen2 model, its tokenizer and template into ``path``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _tokenizer([*DEFAULT_CORPUS, *(corpus or [])], max_positions)
    tokenizer.chat_template = chat_template(arguments)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tokenizer(corpus: list[str], max_positions: int):  # type: ignore[no-untyped-def]
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2's own pipeline: AutoTokenizer rebuilds a qwen2 model's tokenizer
    # with it, so training with anything else would split text differently.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The template's own text too, so rendered examples tokenize compactly.
    texts = [*corpus, json.dumps(corpus, ensure_ascii=False), TEMPLATE]
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )

"""Token counts, as the model that will train on the example counts them.

OpenAI models (an ``encoding``): the cookbook's formula. Each message costs 3
tokens plus its values' tokens (1 more for ``name``), the reply is primed
with 3; structured values (tool calls, content parts) and the ``tools`` list
are counted as their JSON text.

Every other model (a Hugging Face ``tokenizer``): exactly what its own chat
template renders, ``apply_chat_template(messages, tools=tools)``, which is
what TRL trains on. Templates disagree on tool-call arguments: OpenAI sends
them as a JSON string, some templates print a string as it is (Qwen3) and
others JSON-encode whatever they get (Qwen2.5, Llama 3.1), which would turn
a string into a quoted, escaped one. ``template_inputs`` gives each template
the form it wants: the catalogue's ``tool_arguments``, else detected by
rendering one probe call, as the local trainer does and with its code, so
that what is counted is what is trained. transformers is imported here,
lazily, and only for such models: exporting for OpenAI never loads it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tiktoken

from curation.errors import CurationError, InvalidInput

if TYPE_CHECKING:
    from curation.export.models import ModelInfo

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # tiktoken raises whatever its download raised
        raise CurationError(
            f"cannot load the tiktoken encoding {name} ({type(exc).__name__}): tiktoken downloads "
            f"it on first use; {offline_hint(name)}"
        ) from exc


BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# where a copy often sits: the shared folder beside a clone (as the Makefile and CI use it)
KNOWN_FOLDERS = (Path(__file__).resolve().parents[2].parent / "shared" / "tiktoken",)


def cache_file(name: str) -> str:
    """The file name tiktoken looks for in TIKTOKEN_CACHE_DIR: the sha1 of its download URL."""
    return hashlib.sha1(BLOB.format(name).encode()).hexdigest()


def offline_hint(name: str) -> str:
    """What to run so ``name`` loads offline: a line to paste, with a real folder if one
    holding the file is known, else the download to make elsewhere first."""
    file = cache_file(name)
    for folder in KNOWN_FOLDERS:
        if (folder / file).is_file():
            return f"a copy is in {folder}; run: export TIKTOKEN_CACHE_DIR={folder}"
    return (
        f"offline, download {BLOB.format(name)} elsewhere, save it as {file} in a folder here, "
        "and run: export TIKTOKEN_CACHE_DIR=/path/to/tiktoken (README: Running offline)"
    )


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )


_MEMO: dict[str, dict[str, int]] = {}  # encoding -> text -> tokens
_MEMO_MAX = 10_000


def _remembered(encoding_name: str) -> dict[str, int]:
    memo = _MEMO.get(encoding_name)
    if memo is None or len(memo) >= _MEMO_MAX:
        memo = _MEMO[encoding_name] = {}
    return memo


def count_text(text: str, encoding_name: str, *, repeated: bool = False) -> int:
    """Tokens of ``text``; ``repeated`` texts (roles, the training prompt, tool
    schemas) are remembered, since every example carries the same ones."""
    if repeated:
        memo = _remembered(encoding_name)
        found = memo.get(text)
        if found is None:
            found = memo[text] = len(encoding(encoding_name).encode_ordinary(text))
        return found
    return len(encoding(encoding_name).encode_ordinary(text))


def count_prompt(text: str, info: ModelInfo) -> int:
    """Tokens of a bare text (a prompt to shorten) as ``info``'s tokenizer splits it."""
    if info.encoding:
        return count_text(text, info.encoding)
    return len(hf_tokenizer(info).encode(text, add_special_tokens=False))


def count_messages(messages: list[dict[str, Any]], encoding_name: str) -> int:
    """The cookbook's formula. The hot loop of an export: a role or a system
    message's text is looked up, anything else is encoded."""
    encode = encoding(encoding_name).encode_ordinary
    memo = _remembered(encoding_name)
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        for key, value in message.items():
            if value is None or key == "weight":
                continue
            text = value if isinstance(value, str) else _text(value)
            if key == "role" or role == "system":
                n = memo.get(text)
                if n is None:
                    n = memo[text] = len(encode(text))
            else:
                n = len(encode(text))
            total += n
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def count_plain(messages: list[dict[str, str]], encoding_name: str) -> int:
    """``count_messages`` for messages that are only {role, content} text (what
    ``export.run`` checks first): the same formula, without looking at keys."""
    encode = encoding(encoding_name).encode_ordinary
    memo = _remembered(encoding_name)
    total = REPLY_PRIMING + TOKENS_PER_MESSAGE * len(messages)
    for message in messages:
        role, content = message["role"], message["content"]
        n = memo.get(role)
        if n is None:
            n = memo[role] = len(encode(role))
        total += n
        if role == "system":
            n = memo.get(content)
            if n is None:
                n = memo[content] = len(encode(content))
            total += n
        else:
            total += len(encode(content))
    return total


def count_example(example: dict[str, Any], encoding_name: str) -> int:
    total = count_messages(example.get("messages") or [], encoding_name)
    if example.get("tools"):
        total += count_text(_text(example["tools"]), encoding_name, repeated=True)
    return total


@dataclass(frozen=True)
class Count:
    """An example's tokens, and its longest sequence (what must fit the limit):
    a preference pair trains on two sequences, prompt + each answer."""

    total: int
    longest: int


class Uncountable(ValueError):
    """The model's chat template refused the example; the message says why."""


def count(example: dict[str, Any], info: ModelInfo) -> Count:
    """A chat example or a preference pair, counted as ``info``'s model counts it."""
    if info.encoding:
        n = count_example(_one_conversation(example), info.encoding)
        return Count(n, n)
    tokenizer = hf_tokenizer(info)
    if "input" not in example:
        n = count_template(example, tokenizer, info.tool_arguments)
        return Count(n, n)
    prompt = example["input"]
    sides = [
        count_template(
            {"messages": [*prompt["messages"], *example[key]], "tools": prompt.get("tools")},
            tokenizer,
            info.tool_arguments,
        )
        for key in ("preferred_output", "non_preferred_output")
    ]
    return Count(sum(sides), max(sides))


def _one_conversation(example: dict[str, Any]) -> dict[str, Any]:
    if "input" not in example:
        return example
    messages = (
        example["input"]["messages"] + example["preferred_output"] + example["non_preferred_output"]
    )
    return {"messages": messages, "tools": example["input"].get("tools")}


def prepare(info: ModelInfo) -> ModelInfo:
    """Load ``info``'s tokenizer now (so a missing one fails before any file is
    written) and fill in the limits its catalogue entry left out."""
    if info.encoding:
        encoding(info.encoding)
        return info
    tokenizer = hf_tokenizer(info)
    if info.max_example_tokens is not None:
        return info
    limit = info.context_tokens or _declared_limit(info, tokenizer)
    if limit is None:
        raise InvalidInput(
            f"cannot tell {info.name}'s context length: add max_example_tokens for it to "
            "CURATION_MODELS_FILE"
        )
    return replace(info, context_tokens=limit, max_example_tokens=limit)


def _declared_limit(info: ModelInfo, tokenizer: Any) -> int | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(info.tokenizer or info.name)
    except Exception:  # no config next to the tokenizer: fall back to the tokenizer's own
        config = None
    for section in (config, getattr(config, "text_config", None)):
        value = getattr(section, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    declared = getattr(tokenizer, "model_max_length", None)
    return int(declared) if isinstance(declared, int) and 0 < declared < 10**8 else None


def hf_tokenizer(info: ModelInfo) -> Any:
    """``info``'s Hugging Face tokenizer, loaded once per process."""
    return _load_tokenizer(info.name, info.tokenizer or info.name)


@functools.cache
def _load_tokenizer(model: str, source: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise CurationError(
            f"counting tokens for {model} needs the training extra: pip install 'curation[train]'"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(
            f"cannot load the tokenizer of {model} from {source}: {reason}. Pass a local model "
            "directory, or set its 'tokenizer' in CURATION_MODELS_FILE"
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(f"{model}'s tokenizer ({source}) has no chat template to count with")
    return tokenizer


def count_template(
    example: dict[str, Any], tokenizer: Any, tool_arguments: str | None = None
) -> int:
    """Tokens of the example exactly as the model's chat template renders it."""
    messages, tools = template_inputs(example, tokenizer, tool_arguments)
    try:
        encoded = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True
        )
    except Exception as exc:  # jinja2's TemplateError, or the template's raise_exception()
        raise Uncountable(f"the chat template refused it: {exc}") from exc
    return len(encoded["input_ids"])


def template_inputs(
    example: dict[str, Any], tokenizer: Any, tool_arguments: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools ``tokenizer.apply_chat_template`` gets: the very
    messages the local trainer trains on (``curation.train.data.message``), tool-call
    arguments in the form the template wants."""
    from curation.train import data

    form = arguments_form(tokenizer, tool_arguments)
    messages = [data.message(m, form) for m in example.get("messages") or []]
    return messages, example.get("tools") or None


_FORMS: dict[tuple[str, str], str] = {}


def arguments_form(tokenizer: Any, wanted: str | None = None) -> str:
    """How the template wants tool-call arguments, "string" or "dict": as the
    catalogue says, else as the trainer detects it (by rendering one probe
    call); remembered per template."""
    from curation.train import trainer  # cheap: it imports torch only to train

    key = (str(tokenizer.chat_template), wanted or "auto")
    found = _FORMS.get(key)
    if found is None:
        found = _FORMS[key] = trainer.argument_form(tokenizer, wanted or "auto")
    return found

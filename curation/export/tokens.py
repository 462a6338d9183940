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
import json
from dataclasses import dataclass, replace
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
            f"cannot load the tiktoken encoding {name} ({type(exc).__name__}); tiktoken downloads it on "
            "first use: allow that, or set TIKTOKEN_CACHE_DIR to a folder holding the file (README: Running offline)"
        ) from exc


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )


_MEMO: dict[tuple[str, str], int] = {}
_MEMO_MAX = 10_000


def count_text(text: str, encoding_name: str, *, repeated: bool = False) -> int:
    """Tokens of ``text``; ``repeated`` texts (roles, the training prompt, tool
    schemas) are remembered, since every example carries the same ones."""
    if repeated:
        key = (encoding_name, text)
        found = _MEMO.get(key)
        if found is None:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            found = _MEMO[key] = len(encoding(encoding_name).encode_ordinary(text))
        return found
    return len(encoding(encoding_name).encode_ordinary(text))


def count_messages(messages: list[dict[str, Any]], encoding_name: str) -> int:
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        for key, value in message.items():
            if value is None or key == "weight":
                continue
            repeated = key == "role" or role == "system"
            total += count_text(_text(value), encoding_name, repeated=repeated)
            if key == "name":
                total += TOKENS_PER_NAME
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

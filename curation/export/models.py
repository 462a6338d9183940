"""What curation knows about base models: data, not code.

Tokenizers, limits, epochs and prices live in ``curation/data/models.json``,
merged with the user's ``CURATION_MODELS_FILE``. Three kinds of model:

    OpenAI models     counted with a tiktoken ``encoding``, OpenAI's formula
    open-weight ones  counted with their own Hugging Face ``tokenizer`` and
                      chat template: a hub id, or a local model directory
    a bare directory  ``--model ./some-model-dir`` needs no entry: its limit
                      comes from its config.json (read here, no transformers)

A fine-tuned name (``ft:gpt-4o-mini-2024-07-18:org:suffix:id``) resolves to
its base model: tiktoken maps such names to the wrong encoding, so we never
ask it to. Prices are per 1M tokens where a provider bills by the token, or
per GPU-hour with an assumed throughput for local training: an estimate.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import InvalidInput

CONFIG_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
UNBOUNDED = 10**8  # tokenizers without a known limit say model_max_length = 1e30


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    name: str
    backend: str = "openai"  # who trains it unless told otherwise: openai, together, local
    encoding: str | None = None  # tiktoken encoding: an OpenAI model
    tokenizer: str | None = None  # Hugging Face hub id or local directory: any other model
    tool_arguments: str | None = None  # "string" or "dict" as the template wants; None: detect
    context_tokens: int | None = None
    max_example_tokens: int | None = None  # None until the tokenizer or config is read
    default_epochs: int = 3
    training_per_1m: float | None = None  # USD per 1M trained tokens (epochs included)
    gpu_hour_usd: float | None = None  # local training: what a GPU-hour costs
    training_tokens_per_second: float | None = None  # ... and the throughput assumed on it
    input_per_1m: float | None = None
    output_per_1m: float | None = None
    ft_input_per_1m: float | None = None
    ft_output_per_1m: float | None = None
    note: str | None = None

    @property
    def counted_with(self) -> str:
        if self.encoding:
            return f"tiktoken {self.encoding} (OpenAI's formula)"
        return f"{self.tokenizer}'s own tokenizer and chat template"

    def training_cost(self, tokens: int, epochs: int) -> tuple[float | None, str]:
        """USD to train ``tokens`` for ``epochs``, and how the figure was reached."""
        trained = tokens * epochs
        if self.training_per_1m is not None:
            return round(trained * self.training_per_1m / 1e6, 4), (
                f"{trained} tokens at ${self.training_per_1m}/1M ({self.backend} price)"
            )
        if self.gpu_hour_usd is not None and self.training_tokens_per_second:
            hours = trained / self.training_tokens_per_second / 3600
            return round(hours * self.gpu_hour_usd, 4), (
                f"estimate: {hours:.2f} GPU-hours at ${self.gpu_hour_usd}/h, assuming "
                f"{self.training_tokens_per_second:g} tokens/s (measure yours: bench/train.py)"
            )
        return None, f"unknown: no price for {self.name} in the catalogue (CURATION_MODELS_FILE)"

    def call_cost(self, tokens_in: float, tokens_out: float, fine_tuned: bool) -> float | None:
        """USD of one call's tokens at this model's serving prices (None: not known)."""
        price_in = self.ft_input_per_1m if fine_tuned else self.input_per_1m
        price_out = self.ft_output_per_1m if fine_tuned else self.output_per_1m
        if price_in is None or price_out is None:
            return None
        return (tokens_in * price_in + tokens_out * price_out) / 1e6


def base_model(name: str) -> str:
    """``ft:BASE:org:suffix:id`` -> ``BASE``; anything else unchanged."""
    if name.startswith("ft:"):
        parts = name.split(":")
        if len(parts) >= 2 and parts[1]:
            return parts[1]
    return name


@functools.cache
def _registry(path: Path | None) -> dict[str, Any]:
    from importlib import resources  # it imports tempfile, shutil: not for `curation --help`

    data: dict[str, Any] = json.loads(
        resources.files("curation.data").joinpath("models.json").read_text()
    )
    if path is not None:
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read CURATION_MODELS_FILE {path}: {exc}") from exc
        check_shape(path, extra)
        data["aliases"] = {**data["aliases"], **extra.get("aliases", {})}
        for name, info in extra.get("models", {}).items():
            data["models"][name] = {**data["models"].get(name, {}), **info}
    return data


KEYS = ("aliases", "models")


def check_shape(path: Path, extra: Any) -> None:
    """The user's file is untrusted input: refuse any shape but models.json's."""
    aliases, entries = (extra.get(k, {}) if isinstance(extra, dict) else None for k in KEYS)
    if not (
        isinstance(aliases, dict)
        and all(isinstance(v, str) for v in aliases.values())
        and isinstance(entries, dict)
        and all(isinstance(v, dict) for v in entries.values())
    ):
        raise InvalidInput(
            f'CURATION_MODELS_FILE {path}: expected {{"aliases": {{NAME: MODEL}}, '
            '"models": {MODEL: {FIELD: VALUE}}} as in curation/data/models.json'
        )


def check_file(path: Path | None) -> None:
    """InvalidInput unless the user's models file reads and has models.json's shape."""
    _registry(path)


def lookup(name: str, models_file: Path | None = None, *, open_models: bool = False) -> ModelInfo:
    """The model's facts, or a one-line error naming the file to extend.

    A local model directory needs no entry. With ``open_models`` (export),
    any ``org/name`` is taken as a Hugging Face hub id whose limit is read
    with its tokenizer; without it (prices for recorded calls) it is unknown.
    """
    data = _registry(models_file)
    base = base_model(name)
    snapshot = data["aliases"].get(base, base)
    info = data["models"].get(snapshot)
    if info is not None:
        return _from_entry(snapshot, info, models_file)
    if _is_path(name):
        return local_directory(Path(name))
    if open_models and _is_hub_id(name):
        return ModelInfo(name=name, backend="local", tokenizer=name)
    known = ", ".join(sorted(data["models"]))
    raise InvalidInput(
        f"no known token limit for model {name!r}; known: {known}. Pass a local model directory, "
        "or add it to a JSON file named by CURATION_MODELS_FILE (see curation/data/models.json)"
    )


TEXT_FIELDS = ("backend", "encoding", "tokenizer", "tool_arguments", "note")
COUNT_FIELDS = ("context_tokens", "max_example_tokens", "default_epochs")


def _from_entry(name: str, entry: dict[str, Any], models_file: Path | None) -> ModelInfo:
    fields = {k: v for k, v in entry.items() if k in ModelInfo.__dataclass_fields__ and k != "name"}
    for key, value in fields.items():
        _check_field(name, key, value)
    tokenizer = fields.get("tokenizer")
    if tokenizer and tokenizer.startswith((".", "/", "~")):
        # relative to the file that names it, so a catalogue can sit beside its models
        root = models_file.parent if models_file else Path.cwd()
        local = _resolve(Path(tokenizer), root)
        fields["tokenizer"] = str(local)
        fields.setdefault("context_tokens", context_limit(local))
    fields.setdefault("max_example_tokens", fields.get("context_tokens"))
    if not fields.get("encoding") and not fields.get("tokenizer"):
        raise InvalidInput(f"model {name!r} in the catalogue needs an encoding or a tokenizer")
    return ModelInfo(name=name, **fields)


def _resolve(path: Path, root: Path | None = None) -> Path:
    try:
        where = path.expanduser()
        return (root / where if root else where).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, ~nobody
        raise InvalidInput(f"cannot use {str(path)!r} as a model directory: {exc}") from exc


def _check_field(name: str, key: str, value: Any) -> None:
    """The catalogue is partly the user's file: a wrong type is a one-line error."""
    if value is None:
        return
    if key in TEXT_FIELDS:
        ok = isinstance(value, str) and (key != "tool_arguments" or value in ("string", "dict"))
    elif key in COUNT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise InvalidInput(
            f"model {name!r}: {key} = {value!r} is not valid (see curation/data/models.json)"
        )


def local_directory(path: Path) -> ModelInfo:
    """A Hugging Face model directory: its limit from config.json or tokenizer_config.json."""
    where = _resolve(path)
    if not (where / "config.json").is_file() and not (where / "tokenizer_config.json").is_file():
        raise InvalidInput(
            f"{path} is not a model directory (no config.json or tokenizer_config.json)"
        )
    limit = context_limit(where)
    return ModelInfo(
        name=str(where),
        backend="local",
        tokenizer=str(where),
        context_tokens=limit,
        max_example_tokens=limit,
    )


def context_limit(path: Path) -> int | None:
    """The context length a model directory declares, if it declares one."""
    config = _read_json(path / "config.json")
    for section in (config, config.get("text_config") or {}):
        for key in CONFIG_LIMIT_KEYS:
            if isinstance(section.get(key), int) and section[key] > 0:
                return int(section[key])
    declared = _read_json(path / "tokenizer_config.json").get("model_max_length")
    if isinstance(declared, (int, float)) and 0 < declared < UNBOUNDED:
        return int(declared)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _is_path(name: str) -> bool:
    if name.startswith((".", "/", "~")):
        return True
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):  # too long a name for a path
        return False


def _is_hub_id(name: str) -> bool:
    org, slash, repo = name.partition("/")
    return bool(org and slash and repo) and "/" not in repo and not name.startswith("ft:")

"""What curation knows about base models: data, not code.

Token limits, encodings, epochs and prices live in ``curation/data/models.json``,
merged with the user's ``CURATION_MODELS_FILE``. A fine-tuned name
(``ft:gpt-4o-mini-2024-07-18:org:suffix:id``) resolves to its base model:
tiktoken maps such names to the wrong encoding, so we never ask it to.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from curation.errors import InvalidInput


@dataclass(frozen=True)
class ModelInfo:
    name: str
    encoding: str
    max_example_tokens: int
    default_epochs: int
    training_per_1m: float
    input_per_1m: float
    output_per_1m: float
    ft_input_per_1m: float
    ft_output_per_1m: float


def base_model(name: str) -> str:
    """``ft:BASE:org:suffix:id`` -> ``BASE``; anything else unchanged."""
    if name.startswith("ft:"):
        parts = name.split(":")
        if len(parts) >= 2 and parts[1]:
            return parts[1]
    return name


@functools.cache
def _registry(path: Path | None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("curation.data").joinpath("models.json").read_text()
    )
    if path is not None:
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read CURATION_MODELS_FILE {path}: {exc}") from exc
        data["aliases"] = {**data["aliases"], **extra.get("aliases", {})}
        for name, info in extra.get("models", {}).items():
            data["models"][name] = {**data["models"].get(name, {}), **info}
    return data


def lookup(name: str, models_file: Path | None = None) -> ModelInfo:
    """The model's facts, or a one-line error naming the file to extend."""
    data = _registry(models_file)
    base = base_model(name)
    snapshot = data["aliases"].get(base, base)
    info = data["models"].get(snapshot)
    if info is None:
        known = ", ".join(sorted(data["models"]))
        raise InvalidInput(
            f"no known token limit for model {name!r}; known: {known}. "
            "Add it to a JSON file named by CURATION_MODELS_FILE (see curation/data/models.json)"
        )
    fields = {k: v for k, v in info.items() if k in ModelInfo.__dataclass_fields__}
    return ModelInfo(name=snapshot, **fields)

"""Doctor's tokenizer check: the token counting an export needs loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from curation.config import Settings
from curation.doctor.check import Check, fail, listed, ok
from curation.errors import CurationError
from curation.export import models, tokens

COUNT_MODEL = "gpt-4o-mini-2024-07-18"  # whose encoding counts when no base model is named


def tokenizers(base_models: Sequence[str | None], settings: Settings) -> Check:
    """The token counting an export needs loads: every base model named, else COUNT_MODEL's."""
    wanted = sorted({m for m in base_models if m}) or [COUNT_MODEL]
    loaded = []
    for name in wanted:
        try:
            info = tokens.prepare(models.lookup(name, settings.models_file, open_models=True))
        except CurationError as exc:
            return fail("tokenizer", f"{name}: {exc}")
        loaded.append(info.encoding or info.tokenizer or info.name)
    return ok(
        "tokenizer", f"the tokenizers of {listed(wanted)} load ({', '.join(sorted(set(loaded)))})"
    )


def model_for_rows(base_model: str | None, settings: Settings) -> models.ModelInfo:
    """The namespace's base model; without one, shapes are checked and tokens counted with
    COUNT_MODEL's encoding, but no length limit is applied."""
    if base_model:
        return tokens.prepare(models.lookup(base_model, settings.models_file, open_models=True))
    info = tokens.prepare(models.lookup(COUNT_MODEL, settings.models_file))
    return replace(info, max_example_tokens=None)

"""A local job's hyperparameters -> a validated ``TrainConfig``. Pure.

The job row keeps hyperparameters as JSON (``n_epochs`` and ``seed`` as
OpenAI names them, plus the local trainer's own); ``parse`` checks them
when the job is submitted, so a typo fails at once rather than in the worker.
``None`` or ``"auto"`` means the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from curation.errors import InvalidInput

TOOL_ARGUMENTS = ("auto", "string", "dict")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    n_epochs: float = 3.0
    max_steps: int = -1  # > 0: stop after this many optimizer steps, whatever n_epochs says
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 2048  # tokens; longer examples are truncated
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list of module names
    logging_steps: int = 0  # an event every N steps; 0: about 50 over the run
    save_steps: int = 50  # a checkpoint every N steps: what a restarted worker resumes from
    eval_steps: int = 0  # 0: evaluate on the validation file when saving
    beta: float = 0.1  # DPO's KL weight
    seed: int = 42
    merge: bool = False  # also write base + adapter merged into one model directory
    tool_arguments: str = "auto"  # tool-call arguments as "string", "dict", or detected

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def effective_eval_steps(self) -> int:
        return self.eval_steps or self.save_steps


def _positive(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        parsed = kind(value)
        if parsed <= 0:
            raise ValueError("must be positive")
        return parsed

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return parse


def _non_negative_int(value: Any) -> int:
    parsed = int(value)
    if parsed < 0:
        raise ValueError("must be 0 or more")
    return parsed


PARSERS: dict[str, Callable[[Any], Any]] = {
    "n_epochs": _positive(float),
    "max_steps": int,
    "learning_rate": _positive(float),
    "batch_size": _positive(int),
    "gradient_accumulation_steps": _positive(int),
    "max_length": _positive(int),
    "lora_r": _positive(int),
    "lora_alpha": _positive(int),
    "lora_dropout": float,
    "target_modules": str,
    "logging_steps": _non_negative_int,
    "save_steps": _positive(int),
    "eval_steps": _non_negative_int,
    "beta": _positive(float),
    "seed": int,
    "merge": _bool,
    "tool_arguments": _choice(TOOL_ARGUMENTS),
}


def parse(hyperparameters: Mapping[str, Any]) -> TrainConfig:
    """Validated settings; an unknown key or a bad value is one InvalidInput line."""
    values: dict[str, Any] = {}
    for key, raw in hyperparameters.items():
        if key not in PARSERS:
            raise InvalidInput(
                f"unknown hyperparameter {key!r} for the local trainer: use {', '.join(PARSERS)}"
            )
        if raw is None or raw == "auto":
            continue
        try:
            values[key] = PARSERS[key](raw)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"hyperparameter {key}={raw!r} is not valid: {exc}") from exc
    return TrainConfig(**values)

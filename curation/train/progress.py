"""What a training run tells its worker, and how the worker stops it.

A ``TrainerCallback`` turns the trainer's logs into one event per logged
step (train loss, eval loss, tokens/s) and asks the worker's ``Hooks``
whether to stop after every step. A stop for ``shutdown`` saves a checkpoint
first and ends the run normally, so the job resumes where it was; any other
stop (cancel, a lost claim) raises ``Stopped`` out of the training loop at
once, even in the middle of an evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

SHUTDOWN = "shutdown"  # the one stop reason that checkpoints and returns


class Stopped(Exception):
    """Training stopped on request before it finished; ``reason`` says why."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(f"stopped at step {step}: {reason}")
        self.reason = reason
        self.step = step


class Hooks(Protocol):
    def event(self, message: str, data: Mapping[str, Any], level: str = "info") -> None: ...

    def stop_reason(self) -> str | None:
        """None to go on; ``shutdown``, ``cancel`` or why the job was lost otherwise."""
        ...


def callback(hooks: Hooks) -> Any:
    """A TrainerCallback: one event per logged step, checkpoints, and the stop check."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.shutdown = False
            self.clock = time.monotonic()
            self.tokens = self.first_tokens = 0  # tokens seen before this run (a resumed job's)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.clock, self.tokens = time.monotonic(), int(state.num_input_tokens_seen)
            self.first_tokens = self.tokens

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reason = hooks.stop_reason()
            if reason == SHUTDOWN:
                self.shutdown = True
                control.should_save = True
                control.should_training_stop = True
            elif reason:
                raise Stopped(reason, int(state.global_step))

        def on_prediction_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reason = hooks.stop_reason()
            if reason and reason != SHUTDOWN:
                raise Stopped(reason, int(state.global_step))

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step, total = int(state.global_step), int(state.max_steps)
            hooks.event(
                f"checkpoint at step {step}",
                {"step": step, "max_steps": total, "checkpoint_step": step},
            )

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: Mapping[str, Any] | None = None,
            **kw: Any,
        ) -> None:
            now, tokens = time.monotonic(), int(state.num_input_tokens_seen)
            logs = logs or {}
            if "train_runtime" in logs:  # the end: the whole run's rate
                rate = (tokens - self.first_tokens) / max(float(logs["train_runtime"]), 1e-9)
            else:  # since the last log
                rate = (tokens - self.tokens) / max(now - self.clock, 1e-9)
            if "loss" in logs:
                self.clock, self.tokens = now, tokens
            found = describe(logs, int(state.global_step), int(state.max_steps), rate)
            if found:
                hooks.event(*found)

    return Progress()


def describe(
    logs: Mapping[str, Any], step: int, total: int, tokens_per_second: float
) -> tuple[str, dict[str, Any]] | None:
    """The event of one trainer log: a training step, an evaluation or the end."""
    numbers: dict[str, Any] = {"step": step, "max_steps": total, "epoch": logs.get("epoch")}
    rate = round(tokens_per_second, 1)
    if "loss" in logs:
        numbers |= {
            "train_loss": float(logs["loss"]),
            "learning_rate": logs.get("learning_rate"),
            "tokens_per_second": rate,
        }
        return f"step {step}/{total}: train loss {logs['loss']:.4f}, {rate:,.0f} tokens/s", numbers
    if "eval_loss" in logs:
        numbers["eval_loss"] = float(logs["eval_loss"])
        return f"step {step}/{total}: eval loss {logs['eval_loss']:.4f}", numbers
    if "train_runtime" in logs:
        examples = float(logs.get("train_samples_per_second") or 0.0)
        numbers |= {
            "train_runtime": logs["train_runtime"],
            "examples_per_second": examples,
            "tokens_per_second": rate,
        }
        return (
            f"trained {step} steps in {logs['train_runtime']:.1f}s: "
            f"{examples:.2f} examples/s, {rate:,.0f} tokens/s",
            numbers,
        )
    return None

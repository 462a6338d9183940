"""Local trainer benchmark: examples/s and tokens/s of a LoRA SFT and DPO run.

By default it trains the tiny random model of ``tests/tinymodel.py`` on this
machine's CPU (nothing is downloaded), so the numbers measure the trainer's
own overhead rather than a model. For a real model on a GPU:

    BENCH_MODEL=Qwen/Qwen2.5-0.5B-Instruct BENCH_STEPS=50 BENCH_BATCH=8 make bench-train

Knobs: BENCH_MODEL (hub id or model directory), BENCH_EXAMPLES (64),
BENCH_STEPS (20 optimizer steps), BENCH_BATCH (4), BENCH_METHODS
(supervised,dpo). Tokens are the non-padding input tokens the trainer saw.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from curation.errors import InvalidInput
from curation.train import config, trainer
from curation.train.checkpoints import JobDirs

EXAMPLES = int(os.environ.get("BENCH_EXAMPLES", 64))
STEPS = int(os.environ.get("BENCH_STEPS", 20))
BATCH = int(os.environ.get("BENCH_BATCH", 4))
METHODS = os.environ.get("BENCH_METHODS", "supervised,dpo").split(",")
GPU_COMMAND = "BENCH_MODEL=Qwen/Qwen2.5-0.5B-Instruct BENCH_STEPS=50 BENCH_BATCH=8 make bench-train"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CITIES = ["Paris", "Berlin", "London", "Madrid", "Rome", "Lisbon", "Vienna", "Oslo"]


def chat(i: int) -> dict[str, Any]:
    city = CITIES[i % len(CITIES)]
    user = {"role": "user", "content": f"Example {i}: what is the weather in {city} today?"}
    system = {"role": "system", "content": "You are a helpful assistant. " * 4}
    if i % 2:
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        return {
            "messages": [system, user, {"role": "assistant", "tool_calls": [call]}],
            "tools": TOOLS,
        }
    answer = f"It is sunny in {city}, about {15 + i % 10} degrees, with a light wind."
    return {"messages": [system, user, {"role": "assistant", "content": answer}]}


def pair(i: int) -> dict[str, Any]:
    example = chat(2 * i)
    return {
        "input": {"messages": example["messages"][:-1]},
        "preferred_output": [example["messages"][-1]],
        "non_preferred_output": [
            {"role": "assistant", "content": "Sorry, I cannot help with that."}
        ],
    }


class Quiet:
    def event(self, message: str, data: Mapping[str, Any], level: str = "info") -> None:
        pass

    def stop_reason(self) -> str | None:
        return None


def model_dir(scratch: Path) -> str:
    named = os.environ.get("BENCH_MODEL")
    if named:
        return named
    from tests import tinymodel

    return str(tinymodel.build(scratch / "tiny-model"))


def run(method: str, model: str, scratch: Path) -> dict[str, Any]:
    make = chat if method == "supervised" else pair
    train = scratch / f"{method}.jsonl"
    train.write_text("".join(json.dumps(make(i)) + "\n" for i in range(EXAMPLES)))
    job = trainer.Job(
        base_model=model,
        method=method,
        train_file=train,
        validation_file=None,
        dirs=JobDirs(scratch / f"job-{method}"),
        config=config.parse(
            {"max_steps": STEPS, "batch_size": BATCH, "save_steps": 10**9, "logging_steps": STEPS}
        ),
    )
    started = time.perf_counter()
    outcome = trainer.train(job, Quiet())
    return {
        "method": method,
        "steps": outcome.global_step,
        "examples/s": outcome.examples_per_second,
        "tokens/s": outcome.tokens_per_second,
        "tokens": outcome.trained_tokens,
        "wall s (load + train + save)": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    try:
        trainer.require_extra()
    except InvalidInput as exc:
        raise SystemExit(f"bench-train: {exc}") from None
    scratch = Path(tempfile.mkdtemp(prefix="curation-train-bench-"))
    model = model_dir(scratch)
    where = trainer.device()
    print(f"model {model} on {where.kind} ({where.precision}), torch threads {_threads()}")
    print(f"{EXAMPLES} examples, {STEPS} steps of batch {BATCH}, LoRA r=16 on all linear layers")
    for method in METHODS:
        result = run(method, model, scratch)
        print("  ".join(f"{k} {_fmt(v)}" for k, v in result.items()))
    print(f"GPU run with a real small model: {GPU_COMMAND}")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _fmt(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()

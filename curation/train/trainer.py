"""One LoRA training run: TRL's SFTTrainer or DPOTrainer on a causal LM.

The only module that imports torch, transformers, trl, peft and datasets,
and only inside ``train`` (``import curation.train.trainer`` costs nothing).
The caller (the worker) owns the job's state: its ``Hooks`` receive the
events and say when to stop (see ``progress.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import InvalidInput
from curation.train import checkpoints, data
from curation.train.checkpoints import JobDirs
from curation.train.config import TrainConfig
from curation.train.progress import Hooks, callback

log = logging.getLogger(__name__)

EXTRA = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def require_extra() -> None:
    """Fail in one line, before a job is claimed, where the training extra is missing."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidInput(
            f"the local trainer needs {', '.join(missing)}: pip install 'curation[train]'"
        )


@dataclass(frozen=True, kw_only=True)
class Job:
    base_model: str  # hub id or local directory
    method: str  # "supervised" or "dpo"
    train_file: Path
    validation_file: Path | None
    dirs: JobDirs
    config: TrainConfig
    meta: Mapping[str, Any] = field(default_factory=dict)  # written beside the adapter


@dataclass(frozen=True, kw_only=True)
class Outcome:
    finished: bool  # False: stopped for shutdown, a checkpoint saved
    global_step: int
    resumed_from: int  # the checkpoint step this run started from (0: from scratch)
    trained_tokens: int
    adapter: Path | None = None
    merged: Path | None = None
    examples_per_second: float | None = None
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    dtype: Any  # what the base model is loaded in
    precision: str  # "bf16", "fp16" (mixed, over float32 weights) or "fp32"


def device() -> Device:
    """A GPU when present: bf16 where it has it, fp16 mixed precision otherwise; else the CPU."""
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Device("cuda", torch.bfloat16, "bf16")
        return Device("cuda", torch.float32, "fp16")
    return Device("cpu", torch.float32, "fp32")


def train(job: Job, hooks: Hooks) -> Outcome:
    """Train (or resume) the job's adapter; write it (and the merged model) when done."""
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback

    _quiet()
    torch.manual_seed(job.config.seed)
    where = device()
    tokenizer = load_tokenizer(job.base_model)
    form = argument_form(tokenizer, job.config.tool_arguments)
    train_set, eval_set = _datasets(job, form)
    assistant_only = assistant_only_loss(tokenizer, hooks) if job.method == "supervised" else False
    model = _load(AutoModelForCausalLM, job.base_model, dtype=where.dtype)
    resume = checkpoints.last_complete(job.dirs.checkpoints)
    resumed_from = checkpoints.step_of(resume) if resume else 0
    hooks.event(
        _start_line(job, where, len(train_set), eval_set, resumed_from),
        {
            "device": where.kind,
            "precision": where.precision,
            "examples": len(train_set),
            "validation_examples": len(eval_set) if eval_set is not None else 0,
            "tool_arguments": form,
            "assistant_only_loss": assistant_only,
            "resumed_from_step": resumed_from,
        },
    )
    progress = callback(hooks)
    trainer = _trainer(job, model, tokenizer, train_set, eval_set, where, assistant_only, progress)
    trainer.remove_callback(PrinterCallback)  # events carry the progress
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    outcome = Outcome(
        finished=not progress.shutdown,
        global_step=int(trainer.state.global_step),
        resumed_from=resumed_from,
        trained_tokens=int(trainer.state.num_input_tokens_seen),
    )
    return _save(trainer, tokenizer, job, form, outcome, result.metrics, progress.first_tokens)


def _datasets(job: Job, form: str) -> tuple[Any, Any]:
    train_set = dataset(data.rows(job.train_file, job.method, form), job.method)
    if job.validation_file is None:
        return train_set, None
    return train_set, dataset(data.rows(job.validation_file, job.method, form), job.method)


def _start_line(job: Job, where: Device, examples: int, eval_set: Any, resumed_from: int) -> str:
    line = (
        f"training {job.base_model} ({job.method}, LoRA r={job.config.lora_r}) on {where.kind}"
        f" ({where.precision}): {examples} examples"
    )
    if eval_set is not None:
        line += f", {len(eval_set)} for validation"
    if resumed_from:
        line += f"; resuming from checkpoint step {resumed_from}"
    return line


def _save(
    trainer: Any,
    tokenizer: Any,
    job: Job,
    form: str,
    outcome: Outcome,
    metrics: Mapping[str, Any],
    first_tokens: int,
) -> Outcome:
    """A finished run's adapter (and merged model) and speed; a stopped run is left as is."""
    if not outcome.finished:
        return outcome
    adapter = save_adapter(trainer, tokenizer, job, form)
    merged = save_merged(trainer, tokenizer, job) if job.config.merge else None
    shutil.rmtree(job.dirs.checkpoints, ignore_errors=True)  # only a resume needed them
    runtime = float(metrics.get("train_runtime") or 0.0)
    return dataclasses.replace(
        outcome,
        adapter=adapter,
        merged=merged,
        examples_per_second=metrics.get("train_samples_per_second"),
        tokens_per_second=(outcome.trained_tokens - first_tokens) / runtime if runtime else None,
    )


def _quiet() -> None:
    """No progress bars or advice in the worker's log; events carry the progress."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' renames
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load(factory: Any, name: str, **kwargs: Any) -> Any:
    """``factory.from_pretrained(name)``; a missing model is one line, not a traceback."""
    try:
        return factory.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise InvalidInput(
            f"cannot load model {name!r}: {str(exc).splitlines()[0]}; "
            "give a local model directory or a Hugging Face hub id this machine can download"
        ) from exc


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer, name)
    if not tokenizer.chat_template:
        raise InvalidInput(
            f"model {name!r} has no chat template: train an instruct/chat model "
            "(for example Qwen/Qwen2.5-0.5B-Instruct)"
        )
    return tokenizer


def argument_form(tokenizer: Any, wanted: str) -> str:
    """``string`` or ``dict``: the form of tool-call arguments the template expects."""
    if wanted != "auto":
        return wanted
    arguments = json.dumps(data.PROBE_ARGUMENTS)
    try:
        rendered = tokenizer.apply_chat_template(
            data.probe_messages(arguments), tools=data.PROBE_TOOLS, tokenize=False
        )
    except Exception:  # a template that refuses a string argument wants a dict
        rendered = None
    return data.detect_argument_form(rendered if isinstance(rendered, str) else None)


def assistant_only_loss(tokenizer: Any, hooks: Hooks) -> bool:
    """Loss on the assistant's tokens only, where the template can mark them:
    its own ``{% generation %}`` markers or a training version TRL knows."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return True
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        hooks.event(
            "the chat template marks no assistant tokens ({% generation %}) and TRL knows no "
            "training version of it: the loss covers the whole conversation",
            {"assistant_only_loss": False},
            level="warn",
        )
        return False
    return True


def dataset(rows: list[dict[str, Any]], method: str) -> Any:
    """An Arrow dataset that gives each row back as it was: messages as JSON
    values, so rows with different message keys or tool arguments keep their own."""
    from datasets import Dataset, Features, Json, List, Value

    columns = ("messages",) if method == "supervised" else ("prompt", "chosen", "rejected")
    features = Features({**{c: List(Json()) for c in columns}, "tools": Value("string")})
    return Dataset.from_list(rows, features=features)


def _trainer(
    job: Job,
    model: Any,
    tokenizer: Any,
    train_set: Any,
    eval_set: Any,
    where: Device,
    assistant_only: bool,
    progress: Any,
) -> Any:
    from peft import LoraConfig

    cfg = job.config
    common: dict[str, Any] = {
        "output_dir": str(job.dirs.checkpoints),
        "num_train_epochs": cfg.n_epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "logging_steps": cfg.logging_steps or 0.02,  # a fraction: of the total steps
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,  # the newest may be half-written when a worker is killed
        "eval_strategy": "steps" if eval_set is not None else "no",
        "eval_steps": cfg.effective_eval_steps,
        "max_length": cfg.max_length,
        "seed": cfg.seed,
        "bf16": where.precision == "bf16",
        "fp16": where.precision == "fp16",
        "use_cpu": where.kind == "cpu",
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_modules(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    parts = {
        "model": model,
        "train_dataset": train_set,
        "eval_dataset": eval_set,
        "processing_class": tokenizer,
        "peft_config": lora,
        "callbacks": [progress],
    }
    if job.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(args=DPOConfig(**common, beta=cfg.beta), **parts)
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(args=SFTConfig(**common, assistant_only_loss=assistant_only), **parts)


def _modules(spec: str) -> str | list[str]:
    if spec == "all-linear":
        return spec
    return [m.strip() for m in spec.split(",") if m.strip()]


def save_adapter(trainer: Any, tokenizer: Any, job: Job, form: str) -> Path:
    """The LoRA adapter, its tokenizer and what trained it, swapped into place whole."""
    tmp = job.dirs.adapter.with_name("adapter.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    meta = {**job.meta, "base_model": job.base_model, "method": job.method, "tool_arguments": form}
    (tmp / "curation.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(job.dirs.adapter, ignore_errors=True)
    tmp.rename(job.dirs.adapter)
    return job.dirs.adapter


def save_merged(trainer: Any, tokenizer: Any, job: Job) -> Path:
    """Base weights with the adapter folded in: a plain model directory any engine serves."""
    tmp = job.dirs.merged.with_name("merged.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.merge_and_unload().save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(job.dirs.merged, ignore_errors=True)
    tmp.rename(job.dirs.merged)
    return job.dirs.merged

"""The local trainer: TRL + PEFT LoRA on an open-weight causal LM.

    data.py         exported JSONL -> TRL's conversational rows (pure)
    checkpoints.py  which checkpoint a restarted job resumes from (pure)
    config.py       a job's hyperparameters -> a validated TrainConfig (pure)
    trainer.py      SFTTrainer / DPOTrainer with a LoRA adapter (torch)

Only ``trainer.py`` touches torch, transformers, trl, peft and datasets, and
only inside its functions: the package imports cleanly without the
``train`` extra, so ``curation`` commands never pay for it.
"""

"""What both trainers share: a ``transformers.Trainer`` that saves a plain model folder, loading, and :func:`fit`."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .. import models

__all__ = ["FolderTrainer", "TrainingOutOfMemory", "fit", "is_oom", "load_for_training", "oom_advice", "with_fields"]


class TrainingOutOfMemory(RuntimeError):
    """Training ran out of (GPU or CPU) memory; the message says what to change."""


def oom_advice(args: Any) -> str:
    """What to try when a training step does not fit in memory."""
    b = getattr(args, "per_device_train_batch_size", "?")
    g = getattr(args, "train_group_size", None)
    return (f"training ran out of memory with per_device_train_batch_size={b}"
            + (f" x train_group_size={g} passages" if g else "") + ". Try, in this order: "
            "--cached_mini_batch_size 32 (cached InfoNCE: the same loss and in-batch negatives, computed in chunks; "
            "memory no longer grows with the batch), --gradient_checkpointing, a smaller "
            "--per_device_train_batch_size (or --train_group_size / --passage_max_len), --fp16 or --bf16 on a GPU. "
            "--gradient_accumulation_steps keeps the step size but adds no in-batch negatives.")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error: CUDA/ROCm, MPS, XPU, NCCL's, and a CPU allocation failure."""
    if isinstance(exc, (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)):  # torch<2.5
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def load_for_training(name: str, model_class: Any, tokenizer_name: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a hub id or folder, the model in float32 (the master weights of mixed precision).

    Raises:
        OSError, ValueError: :func:`bgekit.models.load_error`, naming the model and what to check.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(models.resolve_model(tokenizer_name or name))
        return tokenizer, model_class.from_pretrained(models.resolve_model(name), dtype=torch.float32, **kwargs)
    except Exception as e:  # network, missing files, wrong repo id
        raise models.load_error(name, e) from e


class FolderTrainer(Trainer):
    """A ``Trainer`` whose ``compute_loss`` returns a per-batch mean and whose saved folder is a plain HF folder.

    Saving writes the model, the tokenizer and bgekit's and sentence-transformers' metadata (``spec``: pooling,
    instruction, kind), file by file atomically, the metadata last, so ``bgekit``, ``transformers`` and
    sentence-transformers load the folder the same way.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, spec: models.ModelSpec, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.model_accepts_loss_kwargs = False
        self.sub_batch = self.args.sub_batch_limits()   # (rows, tokens) per sub-batch, for forward_sorted

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".saving-{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.accelerator.unwrap_model(self.model).save_pretrained(tmp, state_dict=state_dict)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(tmp)
            models.save_model_metadata(tmp, self.spec)
            torch.save(self.args, tmp / "training_args.bin")
            for src in sorted(tmp.iterdir(), key=lambda p: (p.name == models.METADATA_FILE, p.name)):
                dst = out / src.name
                if src.is_dir() and dst.exists():
                    shutil.rmtree(dst)
                os.replace(src, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def with_fields(cls: type, args: Any, kwargs: dict[str, Any]) -> Any:
    """``args`` (an arguments dataclass, or ``None``: built from ``kwargs``) with ``kwargs`` set, on a copy."""
    if args is None:
        return cls(**kwargs)
    return dataclasses.replace(args, **kwargs) if kwargs else args


class _BarOnly(ProgressCallback):
    """The Trainer's progress bar without the line it prints per log: with ``logging_steps=1`` (a loss per step,
    for a curve) that is one line per step. The losses stay in ``trainer.state.log_history``."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def fit(trainer: Trainer, resume_from_checkpoint: Any = None) -> None:
    """``trainer.train()``, with ``"latest"``/``"true"`` meaning the last checkpoint, and out-of-memory advice.

    With ``logging_steps=1`` no line is printed per step (the losses are in ``log_history``).

    Raises:
        TrainingOutOfMemory: the step did not fit; the message says what to change (:func:`oom_advice`).
    """
    if trainer.args.logging_steps == 1:
        trainer.pop_callback(PrinterCallback)   # the Trainer's printer when the bar is off: a line per log
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(_BarOnly)
    resume = resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("latest", "true"):
        resume = True
    try:
        trainer.train(resume_from_checkpoint=resume or None)
    except Exception as e:
        if is_oom(e):
            raise TrainingOutOfMemory(oom_advice(trainer.args)) from e
        raise

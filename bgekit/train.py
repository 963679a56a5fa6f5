"""Command line for embedder fine-tuning: every ``transformers.TrainingArguments`` option plus FlagEmbedding's.

FlagEmbedding's fine-tuning command runs unchanged with ``bgekit.train`` in place of its module::

    torchrun --nproc_per_node 8 -m bgekit.train --output_dir ft --model_name_or_path BAAI/bge-large-en-v1.5 \\
        --train_data train_mined.jsonl --learning_rate 1e-5 --fp16 --num_train_epochs 5 \\
        --per_device_train_batch_size 32 --dataloader_drop_last True --normlized True --temperature 0.02 \\
        --query_max_len 64 --passage_max_len 256 --train_group_size 2 --negatives_cross_device \\
        --logging_steps 10 --save_steps 1000 \\
        --query_instruction_for_retrieval "Represent this sentence for searching relevant passages: "

One process (CPU or one GPU): ``python -m bgekit.train`` with the same arguments. ``--deepspeed ds.json``
passes through to the Trainer. Exit codes: 0 done, 2 bad arguments or data, 3 out of memory (with advice).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser

from .training.arguments import EmbedderTrainingArguments


def build_parser() -> HfArgumentParser:
    """The ``HfArgumentParser`` of :class:`~bgekit.training.arguments.EmbedderTrainingArguments`."""
    return HfArgumentParser(EmbedderTrainingArguments, prog="python -m bgekit.train", description=(
        "Fine-tune an embedding model contrastively (InfoNCE with in-batch and cross-device negatives) on "
        "FlagEmbedding JSONL ({query, pos, neg}); saves a plain Hugging Face folder. All TrainingArguments apply."),
        epilog="Under torchrun every process runs the same command: torchrun --nproc_per_node 2 -m bgekit.train ...")


def parse_args(argv: Sequence[str] | None = None) -> EmbedderTrainingArguments:
    """Parse a command line into :class:`EmbedderTrainingArguments` (``ValueError``/``ImportError`` on bad values)."""
    (args,) = build_parser().parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from .training.embedder import TrainingOutOfMemory, train_embedder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        out = train_embedder(parse_args(argv))
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingOutOfMemory as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    logging.getLogger(__name__).info("saved fine-tuned model to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line for embedder fine-tuning, with FlagEmbedding's argument names.

One process (CPU, one GPU)::

    python -m bgekit.train --output_dir ft --model_name_or_path BAAI/bge-large-en-v1.5 \\
        --train_data train_mined.jsonl --learning_rate 1e-5 --fp16 --num_train_epochs 1 \\
        --per_device_train_batch_size 32 --train_group_size 8 --temperature 0.02 \\
        --query_instruction_for_retrieval "Represent this sentence for searching relevant passages: "

Several GPUs, negatives shared across them::

    torchrun --nproc_per_node 2 -m bgekit.train ... --negatives_cross_device --dataloader_drop_last

Booleans work as flags (``--fp16``) or with a value (``--normlized False``), as in HF scripts.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Sequence

from .training.embedder import TrainArgs, train_embedder

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def str2bool(value: str | bool) -> bool:
    """``"True"``/``"false"``/``"1"``/``"no"``... → bool (argparse type)."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def _optional(tp: str) -> str:
    return tp.replace(" | None", "").replace("None | ", "")


def build_parser() -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--option`` per :class:`TrainArgs` field."""
    parser = argparse.ArgumentParser(
        prog="python -m bgekit.train",
        description="Fine-tune an embedding model contrastively (InfoNCE, in-batch and cross-device negatives) "
                    "on FlagEmbedding JSONL ({query, pos, neg}); saves a plain Hugging Face folder.",
        epilog="Under torchrun every process runs this same command: torchrun --nproc_per_node 2 -m bgekit.train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(TrainArgs)
    for f in dataclasses.fields(TrainArgs):
        help_ = f.metadata.get("help", "")
        tp = hints[f.name]
        opt = f"--{f.name}"
        required = f.name in ("output_dir", "train_data")
        default = None if required else f.default
        if tp is bool:
            parser.add_argument(opt, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_)
            continue
        base = typing.get_args(tp)
        py = next((t for t in base if t is not type(None)), tp) if base else tp
        conv = {int: int, float: float, str: str}.get(py, str)
        parser.add_argument(opt, type=conv, default=default, required=required, help=help_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        args = TrainArgs(**vars(ns))
        out = train_embedder(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved fine-tuned model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

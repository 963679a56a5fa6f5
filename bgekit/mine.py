"""``python -m bgekit.mine``: hard-negative mining with FlagEmbedding ``hn_mine``'s arguments.

    python -m bgekit.mine --embedder_name_or_path BAAI/bge-large-en-v1.5 \\
        --input_file train.jsonl --output_file train_mined.jsonl \\
        --range_for_sampling 2-200 --negative_number 15 \\
        --query_instruction_for_retrieval "Represent this sentence for searching relevant passages: " \\
        --margin 0.05

Same meaning as ``hn_mine`` for its arguments (see :mod:`bgekit.mining` for the one difference:
ranks are counted after the positives are removed). The names are those of FlagEmbedding's current
``scripts/hn_mine.py``; the older ``FlagEmbedding.baai_general_embedding.finetune.hn_mine`` names that the blog
uses are accepted as aliases (``--model_name_or_path``, ``--batch_size``). Extra: ``--seed``, ``--margin`` and
``--margin_reference`` (false-negative guard), ``--reranker_name_or_path`` / ``--reranker_threshold``
(cross-encoder guard). Prints the mining report.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .mining import DEFAULT_NEGATIVE_NUMBER, DEFAULT_RERANKER_THRESHOLD, mine_hard_negatives, parse_range
from .models import ModelLoadError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bgekit.mine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder_name_or_path", "--model_name_or_path", dest="embedder_name_or_path", default=None,
                    help="embedder (hub id or folder); default: the mode's embedder (bundled MiniLM in small mode)")
    ap.add_argument("--input_file", required=True, help="training JSONL {query, pos: [...], neg: [...]}")
    ap.add_argument("--output_file", required=True, help="where the mined JSONL goes (written atomically)")
    ap.add_argument("--candidate_pool", default=None,
                    help="JSONL of {\"text\": ...} (used verbatim, as hn_mine) or a BEIR folder; default: every "
                         "pos and neg text of the input")
    ap.add_argument("--range_for_sampling", default="10-210", help="ranks a-b to sample from (default 10-210)")
    ap.add_argument("--negative_number", type=int, default=DEFAULT_NEGATIVE_NUMBER,
                    help=f"negatives per row (default {DEFAULT_NEGATIVE_NUMBER})")
    ap.add_argument("--use_gpu_for_searching", action="store_true", help="search with faiss on the GPU")
    ap.add_argument("--query_instruction_for_retrieval", default=None,
                    help="prefix added to every query (default: none, like hn_mine)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--margin", type=float, default=None,
                    help="drop candidates scoring >= (1 - margin) x the query's positive score (e.g. 0.05)")
    ap.add_argument("--margin_reference", choices=("min", "max"), default="min",
                    help="which positive score the margin is relative to when a row has several (default min)")
    ap.add_argument("--reranker_name_or_path", "--reranker", dest="reranker_name_or_path", default=None,
                    help="cross-encoder (name or folder) for the guard")
    ap.add_argument("--reranker_threshold", type=float, default=DEFAULT_RERANKER_THRESHOLD,
                    help="drop candidates whose reranker score (sigmoid of the logit, in [0, 1], "
                         "not a calibrated probability) is above this (default 0.5)")
    ap.add_argument("--embedder_batch_size", "--batch_size", dest="embedder_batch_size", type=int, default=None,
                    help="texts per embedder forward pass")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bgekit] %(message)s")
    try:
        rng = parse_range(args.range_for_sampling, "--range_for_sampling")
        if args.negative_number < 1:
            raise ValueError(f"--negative_number must be at least 1, got {args.negative_number}")
        if args.embedder_batch_size is not None and args.embedder_batch_size < 1:
            raise ValueError(f"--embedder_batch_size must be at least 1, got {args.embedder_batch_size}")
        report = mine_hard_negatives(
            args.embedder_name_or_path, args.input_file, args.output_file, rng, args.negative_number,
            args.candidate_pool, use_gpu_for_searching=args.use_gpu_for_searching,
            query_instruction_for_retrieval=args.query_instruction_for_retrieval, seed=args.seed,
            margin=args.margin, margin_reference=args.margin_reference, reranker=args.reranker_name_or_path,
            reranker_threshold=args.reranker_threshold, batch_size=args.embedder_batch_size)
    except (ValueError, FileNotFoundError, TypeError, ModelLoadError) as e:
        msg = str(e)
        if msg.startswith("range_for_sampling") or msg.startswith("margin"):
            msg = "--" + msg
        ap.exit(2, f"{ap.prog}: error: {msg}\n")
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m bgekit <command>`` (also installed as ``bgekit``).

Commands::

    python -m bgekit demo                      # encode the course corpus, answer 3 questions, print the test table
    python -m bgekit eval --data DIR --model M # dense / BM25 / hybrid metrics on any BEIR folder

``python -m bgekit <command> --help`` shows each command's options.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import runpy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEMO_QUESTIONS = (
    "why are the leaves on my tomato plant going yellow?",
    "my seedlings are tall and floppy and falling over, what am I doing wrong?",
    "how often should I water a cactus on my windowsill?",
)
DEMO_COLUMNS = ("ndcg@10", "recall@100", "mrr@10")

EVAL_EPILOG = """\
--data takes any BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): the course's
data/ or a dataset from the BEIR collection. Evaluation follows MTEB's conventions: a document is
title + " " + text, queries get the model's query instruction, relevance > 0 counts as relevant.
A hit whose doc id equals the query id is dropped only for datasets whose queries are drawn from the
corpus (ArguAna, Quora: recognised by the folder name) or with --ignore-identical-ids; a dropped hit
that the qrels judge relevant is reported as a warning. So on a GPU (e.g. Colab):

  wget https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip && unzip scifact.zip
  python -m bgekit eval --data scifact --model BAAI/bge-large-en-v1.5 --methods dense
      -> nDCG@10 0.746 (MTEB's published figure)
  python -m bgekit eval --data scifact --model sentence-transformers/all-MiniLM-L6-v2 --methods dense
      -> nDCG@10 0.645
"""


def _print_table(results: dict, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    from bgekit.metrics import format_table

    if title:
        print(title)
    print(format_table(results, columns=list(columns) if columns is not None else None))


def _tables_by_metric(results: dict[str, dict[str, float]]) -> None:
    """One table per metric family (ndcg, recall, ...), one row per method, one column per k."""
    families: list[str] = []
    for row in results.values():
        for key in row:
            fam = key.split("@")[0]
            if fam not in families:
                families.append(fam)
    for fam in families:
        cols = []
        for row in results.values():
            cols += [key for key in row if key.split("@")[0] == fam and key not in cols]
        _print_table(results, cols)
        print()


def _model_label(encoder) -> str:
    """A short name for the encoder's model (the bundled folder shows as its hub name)."""
    name = str(getattr(encoder, "name", encoder))
    try:
        from bgekit import models

        if Path(name).resolve() == models.offline_model_path().resolve():
            return f"{models.OFFLINE_EMBEDDER} (bundled)"
    except Exception:  # noqa: BLE001 - a label only
        pass
    return name


def _parse_ks(values: Sequence[str]) -> tuple[int, ...]:
    out = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                k = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--k takes positive integers, got {part!r}") from None
            if k < 1:
                raise argparse.ArgumentTypeError(f"--k takes positive integers, got {k}")
            out.append(k)
    if not out:
        raise argparse.ArgumentTypeError("--k is empty")
    return tuple(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import bgekit
    from bgekit import config
    from bgekit.data import course_data_dir, load_beir
    from bgekit.embedder import Embedder
    from bgekit.metrics import evaluate
    from bgekit.retrieval import BM25Retriever, DenseRetriever, rrf

    t0 = time.perf_counter()
    mode, reason = config.get_mode()
    config.seed_everything(0)
    model = args.model or config.default_embedder(mode)
    data_dir = Path(args.data) if args.data else course_data_dir()
    print(f"bgekit {bgekit.__version__} | mode: {mode} ({reason}) | device: {config.default_device()} "
          f"| data: {data_dir}")
    data = load_beir(data_dir, split=args.split)
    encoder = Embedder(model, batch_size=args.batch_size) if args.batch_size else Embedder(model)
    print(f"\nencoding {len(data.corpus)} passages from {data_dir} ...")
    t = time.perf_counter()
    dense = DenseRetriever(encoder, data.corpus, show_progress=False)
    bm25 = BM25Retriever(data.corpus)
    print(f"indexed in {time.perf_counter() - t:.1f} s (dense: {dense.embeddings.shape}, BM25: {len(bm25)} docs)")

    questions = list(args.question) or list(DEMO_QUESTIONS)
    for question, hits in zip(questions, dense.search(questions, k=args.top)):
        print(f"\nQ: {question}")
        for rank, (doc_id, score) in enumerate(hits, 1):
            text = dense.doc_text(doc_id)
            short = text if len(text) <= 160 else text[:157].rstrip() + "..."
            print(f"  {rank}. [{score:.3f}] {doc_id}: {short}")

    print(f"\nevaluating on the {args.split} split ({len(data.queries)} queries) ...")
    depth = 100
    runs = {"dense": dense.run(data.queries, k=depth), "bm25": bm25.run(data.queries, k=depth)}
    runs["hybrid"] = rrf([runs["dense"], runs["bm25"]], k_rrf=60, top_k=depth)
    results = {m: evaluate(run, data.qrels, ks=(10, 100), metrics=("ndcg", "recall", "mrr")) for m, run in runs.items()}
    print()
    _print_table(results, DEMO_COLUMNS)
    print(f"\nmodel: {_model_label(encoder)} | done in {time.perf_counter() - t0:.1f} s")
    return 0


# ----------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from bgekit.embedder import Embedder
    from bgekit.retrieval import evaluate_retrieval

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    needs_encoder = any(m in ("dense", "hybrid") for m in methods)
    encoder = None
    if needs_encoder:
        kw = {"device": args.device} if args.device else {}
        if args.batch_size:
            kw["batch_size"] = args.batch_size
        if args.max_length:
            kw["max_length"] = args.max_length
        encoder = Embedder(args.model, **kw)
    t = time.perf_counter()
    results = evaluate_retrieval(
        args.data,
        encoder,
        split=args.split,
        methods=methods,
        ks=args.k,
        metrics=metrics,
        index_kind=args.index,
        ignore_identical_ids=args.ignore_identical_ids,
        show_progress=not args.no_progress,
    )
    name = _model_label(encoder) if encoder is not None else "-"
    print(f"data: {args.data} | split: {args.split} | model: {name} | {time.perf_counter() - t:.1f} s\n")
    _tables_by_metric(results)
    if args.output:
        from bgekit._io import atomic_write_json

        atomic_write_json(args.output, {"data": str(args.data), "split": args.split, "model": name, "results": results})
        print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------- the parser
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="encode the course corpus, answer three questions, print dense/BM25/hybrid test metrics",
        description="The course's main job on the offline defaults (bundled all-MiniLM-L6-v2 unless "
        "BGEKIT_MODE=full or --model): encode the course corpus, search three lay questions, print "
        "the top passages, then nDCG@10 / recall@100 / MRR@10 of dense, BM25 and hybrid retrieval.",
    )
    p.add_argument("--model", help="embedding model name or folder (default: the mode's embedder)")
    p.add_argument("--data", help="BEIR folder (default: the course data/)")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    p.add_argument("--top", type=int, default=3, help="passages shown per question (default: 3)")
    p.add_argument("--question", "-q", action="append", default=[], help="ask your own question (repeatable)")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch size")
    p.set_defaults(func=cmd_demo)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate dense / BM25 / hybrid retrieval on any BEIR folder",
        description="Evaluate retrieval on a BEIR-format folder and print the metrics tables.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--model", default=None, help="embedding model name (hub) or folder (default: the mode's embedder)")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--k", nargs="+", default=["1", "3", "5", "10", "100"], help="cut-offs (default: 1 3 5 10 100)")
    p.add_argument("--methods", default="dense,bm25,hybrid", help="comma-separated: dense,bm25,hybrid (default: all)")
    p.add_argument("--metrics", default="ndcg,recall,precision,mrr,map", help="comma-separated metric names")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch size")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per text (default: the model's)")
    p.add_argument("--device", default=None, help="cuda / mps / cpu (default: automatic)")
    p.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivf"),
                   help="dense index kind (default: flat, exact)")
    same = p.add_mutually_exclusive_group()
    same.add_argument("--ignore-identical-ids", dest="ignore_identical_ids", action="store_true", default=None,
                      help="drop hits whose doc id equals the query id (default: only for ArguAna and Quora, "
                      "whose queries are drawn from the corpus)")
    same.add_argument("--keep-identical-ids", dest="ignore_identical_ids", action="store_false",
                      help="keep such hits even for ArguAna / Quora")
    p.add_argument("--output", help="also write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)


def _forward(module: str) -> Callable[[argparse.Namespace], int]:
    """A command that hands the rest of the command line to ``python -m <module>``."""

    def run(args: argparse.Namespace) -> int:
        saved = sys.argv
        sys.argv = [f"bgekit {args.command}", *args.rest]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:  # the module's own exit code
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                return 1
            return int(e.code or 0)
        finally:
            sys.argv = saved
        return 0

    return run


# Commands whose implementation lives in their own module (``python -m bgekit.mine`` etc.).
FORWARDED = {"mine": "bgekit.mine", "train": "bgekit.train"}

# Builders of subcommands: more can be appended here (each takes the subparsers object).
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_demo, _add_eval]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bgekit",
        description="bgekit: the BGE embedding course's companion package.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show INFO log lines")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add in COMMANDS:
        add(sub)
    for name, module in FORWARDED.items():
        if importlib.util.find_spec(module) is None:
            continue
        p = sub.add_parser(name, help=f"same as python -m {module} (see its --help)", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_forward(module))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bgekit`` and the ``bgekit`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED and importlib.util.find_spec(FORWARDED[argv[0]]) is not None:
        # hand everything after the command name to the module, --help included
        return _forward(FORWARDED[argv[0]])(argparse.Namespace(command=argv[0], rest=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command == "eval":
        try:
            args.k = _parse_ks(args.k)
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[%(name)s] %(message)s")
    if not args.verbose:
        try:  # bm25s sets its logger to DEBUG when imported and logs every index build
            import bm25s  # noqa: F401

            logging.getLogger("bm25s").setLevel(logging.WARNING)
        except ImportError:
            pass
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

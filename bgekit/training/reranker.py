"""Train a small cross-encoder reranker: a ``transformers.Trainer`` whose ``compute_loss`` is the group softmax.

No pretrained cross-encoder can be had offline, so the course makes its own: the bundled
all-MiniLM-L6-v2 encoder with a fresh one-logit head (``AutoModelForSequenceClassification(num_labels=1)``),
trained on the course's train split.

Each training query brings a *group* of ``train_group_size`` passages: one positive at index 0 and
``train_group_size - 1`` negatives from its hard candidates (a retriever's top hits, positives removed),
topped up with random passages. The model scores the group and the loss is the cross-entropy of index 0
(FlagEmbedding's reranker loss). A negative never holds the text of one of the query's positives.
Groups never mix queries, so in-batch masking does not arise here.

>>> from bgekit.training import RerankerTrainArgs, train_reranker
>>> res = train_reranker(RerankerTrainArgs(output_dir="_work/reranker"))   # doctest: +SKIP
>>> res.losses[:3], res.output_dir                                          # doctest: +SKIP

The saved folder is a plain Hugging Face model folder (model, tokenizer, ``bgekit.json`` with
``kind="reranker"``) that ``bgekit.Reranker``, ``transformers`` and sentence-transformers' ``CrossEncoder``
all load; its token limit is the training ``max_len``. Training data can also be FlagEmbedding JSONL.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import models
from .._batching import forward_sorted, model_inputs
from .._io import atomic_dir, atomic_write_json
from .arguments import RerankerTrainingArguments
from .data import (
    EpochCallback,
    GroupDataset,
    RerankerCollator,
    TrainExample,
    build_reranker_examples,
    holdout_split,
    load_train_examples,
)
from .losses import group_loss
from .trainer import FolderTrainer, fit, load_for_training, with_fields

logger = logging.getLogger(__name__)

__all__ = ["TRAIN_INFO_FILE", "RerankerExample", "RerankerTrainArgs", "RerankerTrainResult", "RerankerTrainer",
           "RerankerTrainingArguments", "build_reranker_examples", "group_loss", "holdout_split", "train_reranker"]

#: file in the saved folder with the arguments, the data stamp and the loss history
TRAIN_INFO_FILE = "train_reranker.json"
#: the public names bgekit has always exported
RerankerTrainArgs = RerankerTrainingArguments
RerankerExample = TrainExample
_NOT_STAMPED = {"output_dir", "logging_dir", "logging_steps", "disable_tqdm", "report_to", "run_name",
                "dataloader_num_workers", "use_cpu"}


@dataclass
class RerankerTrainResult:
    """What :func:`train_reranker` returns; usable as a path (``Reranker(result)``, ``os.fspath(result)``).

    ``losses`` holds the logged loss of every step (``logging_steps=1``), from the Trainer's ``log_history``.
    """

    output_dir: Path
    losses: list[float]
    n_queries: int
    n_steps: int
    seconds: float
    reused: bool = False
    stamp: str = ""
    #: training-split queries kept out of training (``holdout_queries``), for validation
    holdout_qids: list[str] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.output_dir)

    __str__ = __fspath__


class RerankerTrainer(FolderTrainer):
    """``transformers.Trainer`` for a cross-encoder: ``compute_loss`` is the group-wise softmax cross-entropy.

    Batches are query-major pairs (``B * train_group_size`` rows, each group's positive first). The
    optimizer gives the fresh head (pooler + classifier) its own learning rate (``head_learning_rate``).
    """

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        g = int(self.args.train_group_size)

        def score(pairs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**model_inputs(pairs), return_dict=True).logits[:, 0].float()

        logits = forward_sorted(score, inputs, *self.sub_batch).view(-1, g)
        loss = group_loss(logits)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {self.state.global_step}: "
                                     "lower learning_rate")
        return (loss, {"logits": logits}) if return_outputs else loss

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The ``Trainer``'s optimizer (``--optim``, weight decay groups), the fresh head moved to groups of its own."""
        if self.optimizer is not None:
            return self.optimizer
        # older transformers (4.56 to 5.0 at least) define create_optimizer(self), newer ones (self, model=None)
        opt = super().create_optimizer(*([] if model is None else [model]))
        m = self.model if model is None else model
        head = {id(p) for n, p in m.named_parameters() if not n.startswith(m.base_model_prefix + ".embeddings")
                and (n.startswith(("classifier", "score", "pooler")) or ".pooler." in n)}
        for group in list(opt.param_groups):
            moved = [p for p in group["params"] if id(p) in head]
            if moved and self.args.head_learning_rate is not None:
                group["params"] = [p for p in group["params"] if id(p) not in head]
                opt.add_param_group({**group, "params": moved, "lr": self.args.head_learning_rate})
        return opt


def _stamp(args: RerankerTrainingArguments, base_model: str, negatives_from: str) -> str:
    """A digest of everything that decides the trained weights: arguments, data files, base model."""
    from .. import __version__

    keep = {k: getattr(args, k) for k in sorted(f.name for f in dataclasses.fields(args) if f.init)
            if k not in _NOT_STAMPED}
    h = hashlib.sha256(json.dumps([keep, __version__, negatives_from], sort_keys=True, default=str).encode())
    root = Path(args.data_dir or "")
    for p in [Path(args.train_data)] if args.train_data else [root / "corpus.jsonl", root / "queries.jsonl",
                                                              root / "qrels" / f"{args.split}.tsv"]:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    base = Path(base_model)
    if base.is_dir():
        for p in sorted(base.glob("*.json")) + sorted(base.glob("*.safetensors")):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    else:
        h.update(base_model.encode())
    return h.hexdigest()[:16]


def _load_model(args: RerankerTrainingArguments, base: str) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ..config import seed_everything

    seed_everything(args.seed)  # the fresh head's initial weights depend on the seed only
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected here
    try:
        tokenizer, model = load_for_training(base, AutoModelForSequenceClassification, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    if args.freeze_embeddings or args.freeze_layers:
        model.get_input_embeddings().weight.requires_grad_(False)
    if args.freeze_layers:
        layers = getattr(getattr(getattr(model, model.base_model_prefix, None), "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise ValueError(f"freeze_layers needs a BERT-style encoder (model.encoder.layer); {base} has none")
        if args.freeze_layers >= len(layers):
            raise ValueError(f"freeze_layers={args.freeze_layers} would freeze all {len(layers)} layers of {base}")
        for module in [*layers[: args.freeze_layers], getattr(model, model.base_model_prefix).embeddings]:
            module.requires_grad_(False)
    return tokenizer, model


def train_reranker(args: RerankerTrainingArguments | None = None, *, retriever: Any = None, reuse: bool = False,
                   **kwargs: Any) -> RerankerTrainResult:
    """Train the course's cross-encoder and save it to ``args.output_dir`` (atomically).

    Args:
        args: a :class:`RerankerTrainingArguments` (alias ``RerankerTrainArgs``), or its fields as keywords.
        retriever: optional retriever over the same corpus to draw hard negatives from (saves
            re-encoding the corpus when the caller already has a ``DenseRetriever``).
        reuse: when ``output_dir`` already holds a reranker trained with the same arguments, data and
            base model (same stamp), return it without training (``result.reused`` is True).

    Returns:
        a :class:`RerankerTrainResult` (usable as the folder's path).

    Raises:
        FileNotFoundError, ValueError: bad data (``file:line``) or arguments, before the model is loaded.

    >>> res = train_reranker(output_dir="_work/reranker", num_train_epochs=2)   # doctest: +SKIP
    >>> len(res.losses) == res.n_steps                                           # doctest: +SKIP
    True
    """
    args = with_fields(RerankerTrainingArguments, args, kwargs)
    if not args.train_data and args.data_dir is None:
        from ..data import course_data_dir

        args.data_dir = str(course_data_dir())
    if args.train_data and not Path(args.train_data).is_file():
        raise FileNotFoundError(f"train_data {args.train_data!r} not found (expected FlagEmbedding JSONL)")
    base = str(args.model_name_or_path or models.offline_model_path())
    out_dir = Path(args.output_dir)
    neg_from = "jsonl" if args.train_data else ("retriever" if retriever is not None else args.hard_negatives)
    stamp = _stamp(args, base, neg_from)
    if reuse:
        try:
            info = json.loads((out_dir / TRAIN_INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            info = None
        if info and info.get("stamp") == stamp and (out_dir / "config.json").is_file():
            logger.info("reusing the reranker in %s (same arguments and data, stamp %s)", out_dir, stamp)
            return RerankerTrainResult(out_dir, [float(x) for x in info.get("losses", [])], info.get("n_queries", 0),
                                       info.get("n_steps", 0), float(info.get("seconds", 0.0)), True, stamp,
                                       list(info.get("holdout_qids", [])))

    t0 = time.perf_counter()
    holdout_qids: list[str] = []
    if args.train_data and args.holdout_queries:
        raise ValueError("holdout_queries works on BEIR data (data_dir + split), not on a JSONL train_data file: "
                         "split the file yourself")
    if args.train_data:
        examples, pool = load_train_examples(args.train_data)
        if args.max_queries is not None and len(examples) > args.max_queries:
            examples = random.Random(args.seed).sample(examples, args.max_queries)
    else:
        holdout_qids = holdout_split(args.data_dir, args.split, args.holdout_queries, args.seed)
        examples, pool = build_reranker_examples(args.data_dir, args.split, args.hard_negatives, args.negative_range,
                                                 retriever, args.max_queries, args.seed, exclude=holdout_qids)
    logger.info("reranker training data: %d queries, %.1f hard negative candidates per query (%s), pool %d passages",
                len(examples), sum(len(e.neg) for e in examples) / len(examples), neg_from, len(pool))

    tokenizer, model = _load_model(args, base)
    dataset = GroupDataset(examples, pool, args.train_group_size, args.seed)
    scratch = out_dir.parent / f".{out_dir.name}.trainer"  # checkpoints, if any, stay out of the final folder
    targs = dataclasses.replace(args, output_dir=str(scratch)) if args.save_strategy != "no" else args
    # the model reads pairs of at most max_len tokens at inference too (bgekit and sentence-transformers)
    tokenizer.model_max_length = int(args.max_len)
    spec = models.ModelSpec(name=str(out_dir), kind="reranker", pooling="cls", query_instruction_for_retrieval="",
                            dim=None, max_length=int(args.max_len), normalize=False)
    trainer = RerankerTrainer(model=model, args=targs, train_dataset=dataset, spec=spec, processing_class=tokenizer,
                              data_collator=RerankerCollator(tokenizer, args.max_len),
                              callbacks=[EpochCallback(dataset)])
    logger.info("training %s -> reranker: %d queries x %d passages per step, lr %g, max_len %d",
                Path(base).name or base, args.per_device_train_batch_size, args.train_group_size,
                args.learning_rate, args.max_len)
    fit(trainer)
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    steps = int(trainer.state.global_step)
    seconds = time.perf_counter() - t0
    model.eval()
    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))  # log_history: the loss curve
        atomic_write_json(tmp / TRAIN_INFO_FILE, {
            "stamp": stamp, "base_model": base, "negatives": neg_from, "n_queries": len(examples),
            "n_steps": steps, "seconds": round(seconds, 2), "losses": losses, "holdout_qids": holdout_qids,
            "args": json.loads(args.to_json_string()),
        }, indent=None)
    logger.info("saved the reranker to %s (%d steps, %.0f s, loss %.3f -> %.3f)", out_dir, steps, seconds,
                losses[0] if losses else float("nan"), sum(losses[-5:]) / max(1, len(losses[-5:])))
    return RerankerTrainResult(out_dir, losses, len(examples), steps, seconds, False, stamp, holdout_qids)

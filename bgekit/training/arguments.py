"""Training arguments: subclasses of ``transformers.TrainingArguments`` with FlagEmbedding's names.

Every standard argument (``--lr_scheduler_type``, ``--report_to``, ``--deepspeed``, ``--logging_dir``,
``--dataloader_num_workers``, ``--gradient_checkpointing``, ...) exists because these *are*
``TrainingArguments``; the fields added here follow FlagEmbedding's ``ModelArguments``,
``DataArguments`` and ``RetrieverTrainingArguments`` (current names, with the blog's ``--normlized``
as an alias of ``--normalize_embeddings``), plus a few bgekit options marked as such.

>>> args = EmbedderTrainingArguments(output_dir="ft", train_data="train.jsonl", train_group_size=4)
>>> args.temperature, args.normalize_embeddings, args.train_group_size
(0.02, True, 4)
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["DEEPSPEED_HINT", "EmbedderTrainingArguments", "RerankerTrainingArguments"]

DEEPSPEED_HINT = ("--deepspeed needs the `deepspeed` package, which is not installed. Install it next to a CUDA "
                  "build of torch: `pip install deepspeed` (see https://www.deepspeed.ai/getting-started/); "
                  "or train without --deepspeed (DDP under torchrun works without it)")


_RATIO_HELP = ("share of the steps with a linear warm-up (the transformers 4.x option FlagEmbedding's examples pass; "
               "transformers 5 takes it as a fraction in --warmup_steps, which this sets)")


@dataclass
class _GroupTrainingArguments(TrainingArguments):
    """What both trainers share: model, data and group fields, the checks, and transformers 4.x options."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "hub id or folder of the model to fine-tune; default: the course mode's embedder (for the reranker: "
                "the bundled all-MiniLM-L6-v2 with a fresh 1-logit head)"})
    train_data: str | None = field(default=None, metadata={
        "help": "FlagEmbedding JSONL ({query, pos: [...], neg: [...]} per line) or a folder of *.jsonl files "
                "(for the reranker, default: the BEIR folder data_dir, split `split`)"})
    train_group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + N-1 negatives"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep bgekit's batch columns"})
    warmup_ratio: float | None = field(default=None, metadata={"help": _RATIO_HELP})
    sub_batch_size: int | None = field(default=None, metadata={
        "help": "run the model on sub-batches of this many texts or pairs (FlagEmbedding's option), sorted by length, "
                "each padded only to its own longest: the same loss and gradients (dropout aside), less padding. -1: "
                "the whole batch at once. Default: about 4096 tokens a sub-batch on a CPU (fastest there, "
                "bench/train.py), the whole batch on a GPU. Embedder: cached_mini_batch_size's chunks replace these"})

    def _problems(self) -> list[str]:
        """The subclass's checks of its own fields."""
        return []

    def sub_batch_limits(self) -> tuple[int, int]:
        """``(rows, tokens)`` per sub-batch (0: no limit) for :func:`bgekit._batching.forward_sorted`."""
        from .._batching import CPU_SUB_BATCH_TOKENS

        if self.sub_batch_size is not None:
            return (max(0, int(self.sub_batch_size)), 0)
        return (0, CPU_SUB_BATCH_TOKENS if self.device.type == "cpu" else 0)

    def _too_small(self, minimums: dict[str, int]) -> list[str]:
        """A problem for each named field that is set and below its minimum."""
        vals = {n: getattr(self, n) for n in minimums}
        return [f"{n} must be >= {lo}, got {vals[n]}" for n, lo in minimums.items() if vals[n] is not None
                and vals[n] < lo]

    def __post_init__(self) -> None:
        import torch

        problems = self._problems()
        s = self.sub_batch_size
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s == 0 or s < -1):
            problems.append(f"sub_batch_size must be an int >= 1, or -1 for the whole batch, got {s!r}")
        if self.fp16 and self.bf16:
            problems.append("choose one of fp16 and bf16")
        r = self.warmup_ratio
        if r is not None and "warmup_ratio" not in TrainingArguments.__dataclass_fields__:   # transformers 5
            if not 0 <= r < 1:
                problems.append(f"warmup_ratio must be in [0, 1), got {r}")
            elif r > 0 and not self.warmup_steps:   # warmup_steps given by the user wins over a (default) ratio
                self.warmup_steps = float(r)
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}: " + "; ".join(problems))
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise ImportError(DEEPSPEED_HINT)
        if not torch.cuda.is_available():   # pinned memory only speeds up copies to a GPU (and warns without one)
            self.dataloader_pin_memory = False
        # on a machine without an accelerator, training runs on the CPUs anyway: say so, since transformers (5.25+)
        # refuses bf16 there unless use_cpu is set, and under torchrun accelerate needs it to use gloo
        if not self.use_cpu and not _has_accelerator():
            self.use_cpu = True
        # the model runs several forwards (sub-batches, queries and passages) before one backward: DDP accepts that
        # only with non-reentrant checkpointing (the reentrant kind marks a parameter ready twice); transformers 5's
        # default, not 4.x's
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()


def _has_accelerator() -> bool:
    """Whether torch sees a GPU (CUDA/ROCm), an Apple GPU (MPS) or another accelerator."""
    import torch

    if hasattr(torch, "accelerator"):   # torch >= 2.6
        return bool(torch.accelerator.is_available())
    return torch.cuda.is_available() or bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@dataclass
class EmbedderTrainingArguments(_GroupTrainingArguments):
    """Arguments of :class:`bgekit.training.EmbedderTrainer` (``python -m bgekit.train --help`` lists all).

    Defaults that differ from ``TrainingArguments``: ``remove_unused_columns=False`` (the batches are
    built by bgekit's collator), ``ddp_find_unused_parameters=False`` (the unused BERT pooler is
    frozen) and ``save_safetensors``; everything else is transformers' default.
    """

    # --- model and data (FlagEmbedding ModelArguments, DataArguments; model_name_or_path, train_data above)
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer, if not the model's own"})
    query_max_len: int = field(default=32, metadata={"help": "max tokens per query (instruction included)"})
    passage_max_len: int = field(default=128, metadata={"help": "max tokens per passage"})
    max_example_num_per_dataset: int | None = field(default=None, metadata={
        "help": "use at most this many rows of each training file"})
    query_instruction_for_retrieval: str | None = field(default=None, metadata={
        "help": "prefix added to every query (BGE: 'Represent this sentence for searching relevant passages: ')"})
    passage_instruction_for_retrieval: str | None = field(default=None, metadata={
        "help": "prefix added to every passage (BGE: none)"})
    corpus: str | None = field(default=None, metadata={
        "help": "(bgekit) JSONL ({text[, title]}) or BEIR folder to draw missing negatives from when a row has "
                "fewer than train_group_size-1; default: the other passages of the training data"})
    # --- training (FlagEmbedding RetrieverTrainingArguments)
    negatives_cross_device: bool = field(default=False, metadata={
        "help": "share passages of all processes as negatives (under torchrun)"})
    temperature: float = field(default=0.02, metadata={
        "help": "scores are q.p / temperature (1.0 is used when normalize_embeddings is False)"})
    fix_position_embedding: bool = field(default=False, metadata={"help": "freeze the position embeddings"})
    sentence_pooling_method: str | None = field(default=None, metadata={
        "help": "'cls' or 'mean'; default: what the model folder / bgekit's registry records",
        "choices": ["cls", "mean"]})
    normalize_embeddings: bool = field(default=True, metadata={
        "help": "L2-normalise the embeddings", "aliases": ["--normlized"]})
    use_inbatch_neg: bool = field(default=True, metadata={
        "help": "use the passages of the other queries in the batch as negatives too"})
    # --- bgekit
    cached_mini_batch_size: int = field(default=0, metadata={
        "help": "(bgekit) > 0: cached (GradCache) InfoNCE: embed the batch in chunks of this many texts and "
                "backpropagate chunk by chunk, so the in-batch negatives of a large batch fit in memory; same "
                "loss and gradients as without (sentence-transformers' CachedMultipleNegativesRankingLoss)"})
    mask_shared_positives: bool = field(default=True, metadata={
        "help": "(bgekit) leave out of a query's softmax the in-batch (and cross-device) passages whose text is "
                "one of the query's own positives (two queries sharing an answer are not each other's negatives)"})
    logging_dir: str | None = field(default=None, metadata={
        "help": "TensorBoard log folder (the transformers 4.x option FlagEmbedding's examples pass; transformers 5 "
                "reads TENSORBOARD_LOGGING_DIR, which this sets)"})

    def _problems(self) -> list[str]:
        problems = self._too_small({"train_group_size": 1, "query_max_len": 1, "passage_max_len": 1,
                                    "cached_mini_batch_size": 0, "max_example_num_per_dataset": 1})
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.sentence_pooling_method not in (None, "cls", "mean"):
            problems.append(f"sentence_pooling_method must be 'cls' or 'mean', got {self.sentence_pooling_method!r}")
        return problems

    def __post_init__(self) -> None:
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
        if self.logging_dir and "logging_dir" not in TrainingArguments.__dataclass_fields__:
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.logging_dir)
        super().__post_init__()

    # FlagEmbedding's older spelling, kept as an alias
    @property
    def normlized(self) -> bool:
        return self.normalize_embeddings

    @normlized.setter
    def normlized(self, value: bool) -> None:
        self.normalize_embeddings = bool(value)


@dataclass
class RerankerTrainingArguments(_GroupTrainingArguments):
    """Arguments of :func:`bgekit.training.train_reranker` (FlagEmbedding's reranker names, ``TrainingArguments``).

    Defaults that differ from ``TrainingArguments`` suit a short CPU run of the course reranker:
    ``learning_rate=6e-5``, ``num_train_epochs=2``, ``warmup_ratio=0.1``, ``weight_decay=0.01``,
    ``logging_steps=1`` (a loss per step for the curve), ``save_strategy="no"``.

    >>> RerankerTrainingArguments(output_dir="rr").train_group_size
    8
    """

    data_dir: str | None = field(default=None, metadata={"help": "BEIR folder; default: the course data"})
    split: str = field(default="train", metadata={"help": "qrels split to train on (BEIR data)"})
    max_queries: int | None = field(default=None, metadata={"help": "use at most this many training queries"})
    holdout_queries: int = field(default=0, metadata={
        "help": "keep this many training queries (drawn with the seed) out of training, for validation: tuning "
                "the rerank depth or a fusion weight on them keeps the test split unseen (result.holdout_qids)"})
    hard_negatives: str = field(default="dense", metadata={
        "help": "where negatives come from for BEIR data: 'dense' (bundled encoder), 'bm25' or 'random'"})
    negative_range: tuple[int, int] = field(default=(0, 50), metadata={
        "help": "sample hard negatives among these retriever ranks (positives removed)"})
    head_learning_rate: float | None = field(default=1e-3, metadata={
        "help": "peak learning rate of the fresh head (pooler + classifier); None: learning_rate"})
    freeze_embeddings: bool = field(default=True, metadata={"help": "keep the word embeddings fixed"})
    freeze_layers: int = field(default=0, metadata={
        "help": "also keep the first N transformer layers fixed: the backward pass stops above them"})
    max_len: int = field(default=192, metadata={"help": "max tokens per (query, passage) pair"})

    learning_rate: float = field(default=6e-5, metadata={"help": "peak AdamW learning rate of the encoder"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "passes over the queries"})
    warmup_ratio: float | None = field(default=0.1, metadata={"help": _RATIO_HELP})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)"})
    logging_steps: float = field(default=1, metadata={"help": "log the loss every N steps"})
    save_strategy: str = field(default="no", metadata={"help": "checkpoints: 'no', 'steps' or 'epoch'"})

    def _problems(self) -> list[str]:
        lo, hi = self.negative_range
        problems = self._too_small({"per_device_train_batch_size": 1, "train_group_size": 2, "max_len": 16,
                                    "freeze_layers": 0, "holdout_queries": 0, "max_queries": 1})
        if not self.output_dir:
            problems.append("output_dir is required")
        if not (self.num_train_epochs > 0 or self.max_steps > 0):
            problems.append(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.hard_negatives not in ("dense", "bm25", "random"):
            problems.append(f"hard_negatives must be 'dense', 'bm25' or 'random', got {self.hard_negatives!r}")
        if not 0 <= int(lo) < int(hi):
            problems.append(f"negative_range must be (start, end) with 0 <= start < end, got {self.negative_range}")
        self.negative_range = (int(lo), int(hi))
        return problems

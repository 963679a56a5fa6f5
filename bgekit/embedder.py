"""Turn text into BGE embeddings exactly as BAAI specifies, fast.

>>> from bgekit import Embedder
>>> enc = Embedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")  # bundled; full: "BAAI/bge-large-en-v1.5"
>>> q = enc.encode_queries(["how do I stop fungus gnats?"])  # adds the query instruction (BGE's; MiniLM has none)
>>> p = enc.encode_corpus([{"title": "Fungus gnats", "text": "Let the top of the mix dry out..."}])
>>> (q @ p.T).shape, q.dtype
((1, 1), dtype('float32'))
>>> float((q @ p.T)[0, 0]) > 0.5            # cosine similarity: the vectors are L2-normalised
True

How it batches: every text is tokenised once, texts are sorted by token length so each batch is
padded only to its own longest text, and results come back in input order. On CUDA the weights run
in fp16 (or bf16), on CPU in fp32; pooled vectors are normalised in fp32 and returned as float32 numpy.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import models
from ._batching import model_inputs, run_length_sorted
from .config import default_device, default_embedder, model_dtype
from .data import check_texts, doc_text

logger = logging.getLogger(__name__)

#: show a progress bar when encoding at least this many texts (unless told otherwise)
PROGRESS_MIN_TEXTS = 256


def warn_truncated(log: logging.Logger, n_cut: int, n_total: int, max_length: int, what: str = "texts") -> None:
    """The one truncation warning of the package (encoder and reranker): once per call, with counts.

    ``n_cut`` of ``n_total`` inputs (``what``: "texts", "pairs") were longer than ``max_length``
    tokens and were cut. Nothing is logged when ``n_cut`` is 0.
    """
    if n_cut:
        log.warning("%d of %d %s were longer than %d tokens and were truncated", n_cut, n_total, what, max_length)


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """CLS pooling (first token) or mean pooling over real (unmasked) tokens."""
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
        return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    raise ValueError(f"Unknown pooling {pooling!r}: use 'cls' or 'mean'")


class Embedder:
    """A bi-encoder: one vector per text.

    Args:
        model_name_or_path: hub id, registry name or local folder. ``None`` takes the mode's default
            (``BAAI/bge-large-en-v1.5`` in full mode, the bundled all-MiniLM-L6-v2 in small mode).
        device: ``"cuda"``, ``"mps"``, ``"cpu"``; ``None`` picks the best available.
        pooling: ``"cls"`` or ``"mean"``; ``None`` takes it from the registry / the folder's metadata.
        normalize: L2-normalise the vectors (then inner product = cosine).
        max_length: token budget per text; longer texts are truncated (one warning per call).
        query_instruction_for_retrieval: prefix for :meth:`encode_queries`; ``None`` takes the registry's, ``""`` none.
        dtype: ``"fp16"``/``"bf16"``/``"fp32"``; ``None``: fp16 on CUDA, fp32 elsewhere.
        batch_size: texts per forward pass (halved automatically on CUDA out-of-memory).
        truncate_dim: keep only the first ``truncate_dim`` dimensions of each pooled vector (then
            normalise), as sentence-transformers' ``truncate_dim``. Smaller vectors, lower quality:
            BGE v1.5 was not trained for truncation (no Matryoshka loss), so measure the cost on
            your data (notebook 07 does). ``None`` keeps all ``hidden_size`` dimensions.
        backend: ``"torch"`` (default), ``"onnx"`` (ONNX Runtime) or ``"openvino"``: the same model
            exported once and cached (:mod:`bgekit.backends`); the non-torch backends run on the CPU in fp32.
        quantize: ``None`` or ``"int8"`` (onnx/openvino only): post-training int8 weights (see
            :mod:`bgekit.backends` for which quantization and what it costs in quality).
        cache_dir: where exported models are kept (``None``: :func:`bgekit.backends.default_cache_dir`).
        calibration_texts: texts for OpenVINO's static int8 calibration (``None``: course passages).
        query_instruction: the legacy name of ``query_instruction_for_retrieval`` (an alias).

    Raises:
        ValueError: unknown backend/quantize/dtype/pooling, or a GPU device or half dtype with a
            non-torch backend. ImportError: the backend is not installed (names the pip extra).
    """

    def __init__(self, model_name_or_path: str | os.PathLike | None = None, *, device: str | None = None,
                 pooling: str | None = None, normalize: bool | None = None, max_length: int | None = None,
                 query_instruction_for_retrieval: str | None = None, dtype: str | torch.dtype | None = None,
                 batch_size: int = 64, show_progress: bool | None = None,
                 truncate_dim: int | None = None, backend: str = "torch", quantize: str | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 calibration_texts: Sequence[str] | None = None, query_instruction: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from . import backends

        backend, quantize, device = backends.resolve_backend(backend, quantize, device, dtype)
        self.backend, self.quantize = backend, quantize
        if query_instruction_for_retrieval is None:   # the legacy name (bgekit < 0.5), kept as an alias
            query_instruction_for_retrieval = query_instruction

        name = str(model_name_or_path) if model_name_or_path is not None else default_embedder()
        spec = models.get_spec(name)
        overrides = dict(pooling=pooling, normalize=normalize, max_length=max_length,
                         query_instruction_for_retrieval=query_instruction_for_retrieval)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            from dataclasses import replace
            spec = replace(spec, **overrides)
        if spec.pooling not in ("cls", "mean"):
            raise ValueError(f"Unknown pooling {spec.pooling!r}: use 'cls' or 'mean'")
        self.spec = spec
        self.name = name
        self.device = torch.device(device or default_device())
        dtype = model_dtype(self.device, dtype)   # fp16 on CUDA (or BGEKIT_FORCE_FP16=1), else fp32
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.show_progress = show_progress
        path = models.resolve_model(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model = AutoModel.from_pretrained(path, trust_remote_code=False, **models.dtype_kwarg(dtype))
        except Exception as e:  # network, missing files, wrong repo id
            raise models.load_error(name, e) from e
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.truncate_dim = None
        if truncate_dim is not None:
            if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 1 <= truncate_dim <= self.dim:
                raise ValueError(f"truncate_dim must be an int in [1, {self.dim}] (the model's hidden size), "
                                 f"got {truncate_dim!r}")
            self.truncate_dim = self.dim = int(truncate_dim)
        model_max = getattr(self.model.config, "max_position_embeddings", 512) or 512
        self.max_length = min(int(spec.max_length), int(model_max))
        self._runner = None
        if backend != "torch":
            self._runner = backends.load_exported(self.model, self.tokenizer, backend, quantize,
                                                  output="last_hidden_state", cache_dir=cache_dir,
                                                  calibration_texts=calibration_texts, max_length=self.max_length)
        logger.info("Embedder %s on %s (%s, backend %s): %s pooling, normalize=%s, max_length=%d, query instruction %r",
                    models.display_name(name), self.device,
                    str(dtype).replace("torch.", "") if quantize is None else quantize, backend, spec.pooling,
                    spec.normalize, self.max_length,
                    spec.query_instruction_for_retrieval)

    # convenient read-only views of the spec
    @property
    def pooling(self) -> str:
        return self.spec.pooling

    @property
    def normalize(self) -> bool:
        return self.spec.normalize

    @property
    def query_instruction_for_retrieval(self) -> str:
        return self.spec.query_instruction_for_retrieval

    def __repr__(self) -> str:
        extra = "" if self.backend == "torch" else f", backend={self.backend!r}, quantize={self.quantize!r}"
        return (f"Embedder({self.name!r}, device={str(self.device)!r}, pooling={self.pooling!r}, "
                f"dim={self.dim}, max_length={self.max_length}{extra})")

    # -- tokenisation -------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[dict[str, list[int]]], int]:
        """Tokenise once; return per-text features (unpadded) and how many texts were truncated."""
        tok = self.tokenizer
        # one token over budget tells which texts are too long, without tokenising all of a long text
        enc = tok(texts, truncation=True, max_length=max_length + 1, padding=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        long_rows = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]
        feats = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        if long_rows:
            redo = tok([texts[i] for i in long_rows], truncation=True, max_length=max_length, padding=False)
            for j, i in enumerate(long_rows):
                feats[i] = {k: redo[k][j] for k in keys}
        return feats, len(long_rows)

    # -- encoding -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._runner is not None:  # onnx / openvino: same batches, same pooling and normalisation
            hidden = self._runner(batch)
        else:
            hidden = self.model(**model_inputs(batch), return_dict=True).last_hidden_state
        emb = pool(hidden, batch["attention_mask"], self.pooling).float()
        return emb

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, max_length: int | None = None,
               normalize: bool | None = None, show_progress: bool | None = None,
               convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed ``texts`` as they are (no instruction).

        Args:
            texts: the strings to embed.
            batch_size: texts per forward pass (``None``: the encoder's).
            max_length: token budget per text (``None``: the encoder's); longer texts are cut, with one
                warning per call.
            normalize: L2-normalise (``None``: the model's setting).
            show_progress: progress bar (``None``: for at least 256 texts).
            convert_to_numpy: ``True``: a numpy array; ``False``: a torch tensor (as sentence-transformers'
                ``convert_to_numpy=False`` / ``convert_to_tensor=True``, here one 2-d CPU tensor; move it
                with ``.to(device)``).

        Returns:
            float32 ``(len(texts), dim)``, rows in input order: ``np.ndarray`` or ``torch.Tensor``.

        Raises:
            TypeError: ``texts`` is a single string or holds a non-string (its index is named).

        >>> Embedder().encode(["a cat", "a dog"]).shape  # doctest: +SKIP
        (2, 384)
        """
        texts = check_texts(texts)
        if not texts:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return empty if convert_to_numpy else torch.from_numpy(empty)
        max_length = int(max_length or self.max_length)
        normalize = self.normalize if normalize is None else normalize
        bs = int(batch_size or self.batch_size)
        feats, n_trunc = self._tokenize(texts, max_length)
        warn_truncated(logger, n_trunc, len(texts), max_length, "texts")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        show = show_progress if show_progress is not None else (
            self.show_progress if self.show_progress is not None else len(texts) >= PROGRESS_MIN_TEXTS)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            emb = self._forward(batch)
            if self.truncate_dim is not None:  # before normalising, so that truncated vectors have length 1
                emb = emb[:, : self.truncate_dim]
            return torch.nn.functional.normalize(emb, p=2, dim=-1) if normalize else emb

        run_length_sorted(feats, self.tokenizer, self.device, forward, out, bs, desc="encode", unit="text", show=show)
        return out if convert_to_numpy else torch.from_numpy(out)

    def encode_queries(self, queries: Sequence[str], *, query_instruction_for_retrieval: str | None = None,
                       instruction: str | None = None, **kw: Any) -> np.ndarray:
        """Embed search queries, prefixed with the model's query instruction.

        ``query_instruction_for_retrieval=None`` uses the model's (BGE: ``"Represent this sentence for searching
        relevant passages: "``); ``""`` encodes the queries as they are. ``instruction=`` is its legacy alias.
        """
        queries = check_texts(queries, "queries")
        prefix = next((p for p in (query_instruction_for_retrieval, instruction) if p is not None),
                      self.query_instruction_for_retrieval)
        return self.encode([prefix + q for q in queries] if prefix else queries, **kw)

    def encode_corpus(self, docs: Sequence[str | dict], **kw: Any) -> np.ndarray:
        """Embed passages (never with an instruction). A doc is a string or ``{"title", "text"}``,
        joined as ``title + " " + text``."""
        if isinstance(docs, (str, Mapping)) or not isinstance(docs, Iterable):
            raise TypeError("docs must be a list of strings or {'title', 'text'} records")
        texts = [doc_text(d, f"docs[{i}]") for i, d in enumerate(docs)]
        return self.encode(texts, **kw)


#: The legacy name of :class:`Embedder`, kept as an alias ("encoder" also names the reranker's cross-encoder).
Encoder = Embedder

"""Inference backends: run an encoder or a reranker with ONNX Runtime or OpenVINO, in fp32 or int8.

The PyTorch model is exported once with PyTorch's own ONNX exporter (``torch.onnx.export``), then

* ``backend="onnx"``: run by ONNX Runtime, after its transformer graph fusions
  (``onnxruntime.transformers.optimizer``: fused attention, LayerNorm, GELU);
  ``quantize="int8"``: ONNX Runtime's dynamic post-training quantization of the MatMul weights,
  per output channel and with 7-bit weight range (``reduce_range``): on CPUs without VNNI
  (AVX2 only) the 8-bit x 8-bit kernels add pairs of products in 16 bits, which can overflow with
  full 8-bit weights and bend some vectors badly; 7-bit weights cannot overflow there.
* ``backend="openvino"``: the ONNX file converted by ``openvino.convert_model``;
  ``quantize="int8"``: NNCF's static post-training quantization (transformer preset), calibrated on
  text (by default the course passages).

Optimum is not used on purpose: ``optimum-onnx`` pins transformers below 4.58 and ``optimum-intel``
pulls a CUDA build of torch, while bgekit stays on transformers 5.

Exported folders are cached on disk (default ``~/.cache/bgekit/backends``, or ``$BGEKIT_CACHE/backends``)
under a key of the source weights and tokenizer (:func:`bgekit.cache.model_fingerprint`), the backend,
the quantization, the calibration texts and the library versions: a fine-tuned model gets a new export,
the same model is exported once. Folders are built aside and swapped in atomically.

>>> from bgekit import Embedder
>>> enc = Embedder(backend="onnx", quantize="int8")    # doctest: +SKIP
>>> enc.encode(["a cat"]).shape                        # doctest: +SKIP
(1, 384)
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "QUANTIZATIONS", "check_backend", "require_backend", "resolve_backend", "default_cache_dir",
           "export_key", "export_model", "exported_model", "BackendRunner", "load_runner", "load_exported",
           "default_calibration_texts", "clear_cache"]

#: the inference backends
BACKENDS: tuple[str, ...] = ("torch", "onnx", "openvino")
#: the quantizations (``None``: the model's own precision)
QUANTIZATIONS: tuple[str | None, ...] = (None, "int8")

#: backend -> (modules it needs, the pip extra that installs them)
_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnx", "onnxruntime"), "onnx"),
    "openvino": (("onnx", "openvino"), "openvino"),
}
_INT8_NEEDS: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime.quantization",), "openvino": ("nncf",)}

#: bump when the export recipe changes, so old cached folders are not reused
EXPORT_VERSION = 1
_META = "bgekit_export.json"
_ONNX_OPSET = 17


def check_backend(backend: str | None, quantize: str | None) -> tuple[str, str | None]:
    """Validate ``backend`` / ``quantize``; returns them normalised (``None`` backend -> ``"torch"``).

    Raises:
        ValueError: an unknown backend or quantization, or int8 with the torch backend.

    >>> check_backend("ONNX", "INT8")
    ('onnx', 'int8')
    >>> check_backend("tensorrt", None)
    Traceback (most recent call last):
    ...
    ValueError: Unknown backend 'tensorrt': use one of 'torch', 'onnx', 'openvino'
    """
    b = "torch" if backend is None else str(backend).strip().lower()
    if b not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: use one of {', '.join(repr(x) for x in BACKENDS)}")
    q = None if quantize in (None, "", "none", "fp32") else str(quantize).strip().lower()
    if q not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantize {quantize!r}: use None (the model's precision) or 'int8'")
    if b == "torch" and q is not None:
        raise ValueError("quantize='int8' needs backend='onnx' or backend='openvino' (the torch backend runs the "
                         "model in its own dtype: use dtype='bf16'/'fp16' there)")
    return b, q


def resolve_backend(backend: str | None, quantize: str | None, device: str | None,
                    dtype: str | torch.dtype | None) -> tuple[str, str | None, str | None]:
    """The one check of a model's backend, quantization, device and dtype (the Embedder and the Reranker call it).

    Validates ``backend`` / ``quantize`` (:func:`check_backend`), imports what the backend needs
    (:func:`require_backend`), and for an exported backend (onnx, openvino) allows only the CPU and fp32.

    Args:
        backend: ``"torch"`` (or ``None``), ``"onnx"`` or ``"openvino"``.
        quantize: ``None`` or ``"int8"`` (exported backends only).
        device: ``None`` or a device string; an exported backend runs on ``"cpu"``.
        dtype: ``None``, a ``torch.dtype`` or a name that :func:`bgekit.config.model_dtype` accepts.

    Returns:
        ``(backend, quantize, device)``, normalised; ``device`` is ``"cpu"`` for an exported backend.

    Raises:
        ValueError: an unknown backend or quantization, int8 with torch, a GPU device or a half dtype with an
            exported backend. ImportError: the backend is not installed (names the pip extra).

    >>> resolve_backend(None, None, "cpu", "bf16")
    ('torch', None, 'cpu')
    >>> resolve_backend("onnx", None, "cuda", None)
    Traceback (most recent call last):
    ...
    ValueError: backend='onnx' runs on the CPU; use backend='torch' for device='cuda'
    """
    from .config import model_dtype

    backend, quantize = check_backend(backend, quantize)
    require_backend(backend, quantize)
    if backend == "torch":
        return backend, quantize, device
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU; use backend='torch' for device={device!r}")
    if dtype is not None and model_dtype("cpu", dtype) is not torch.float32:
        raise ValueError(f"backend={backend!r} exports the fp32 model (quantize='int8' for int8); "
                         f"dtype={dtype!r} is for backend='torch'")
    return backend, quantize, "cpu"


def require_backend(backend: str, quantize: str | None = None) -> None:
    """Import what ``backend`` needs, or raise ``ImportError`` naming the pip extra to install.

    >>> require_backend("torch")
    """
    if backend == "torch":
        return
    mods, extra = _NEEDS[backend]
    mods = mods + (_INT8_NEEDS[backend] if quantize == "int8" else ())
    for mod in mods:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ImportError(f"backend={backend!r}{' with int8' if quantize else ''} needs the Python package "
                              f"{mod.split('.')[0]!r}, which is not installed ({e}). Install it with: "
                              f"pip install 'bgekit[{extra}]'") from e


def default_cache_dir() -> Path:
    """Where exported models are kept: ``$BGEKIT_CACHE/backends``, else ``~/.cache/bgekit/backends``."""
    root = os.environ.get("BGEKIT_CACHE")
    return Path(root) / "backends" if root else Path.home() / ".cache" / "bgekit" / "backends"


def _versions(backend: str, quantize: str | None) -> dict[str, str]:
    names = ["torch", "transformers", "onnx"] + (["onnxruntime"] if backend == "onnx" else ["openvino"])
    if quantize == "int8" and backend == "openvino":
        names.append("nncf")
    out = {}
    for n in names:
        try:
            out[n] = importlib.import_module(n).__version__
        except Exception:  # noqa: BLE001 - a missing one is caught by require_backend
            out[n] = "?"
    return out


def export_key(model: torch.nn.Module, tokenizer: Any, backend: str, quantize: str | None, output: str,
               calibration_texts: Sequence[str] | None = None, fingerprint: str | None = None) -> str:
    """Cache key of an export: SHA-256 of the model fingerprint, backend, quantization, output, the
    calibration texts (OpenVINO int8 only) and the versions of the tools that made it.

    Args:
        model, tokenizer: the source (hashed with :func:`bgekit.cache.model_fingerprint` unless
            ``fingerprint`` is given).
        output: ``"last_hidden_state"`` (encoders) or ``"logits"`` (rerankers).
    Returns:
        64 hex characters.
    """
    from .cache import model_fingerprint

    h = hashlib.sha256((fingerprint or model_fingerprint(model, tokenizer)).encode())
    h.update(json.dumps(dict(backend=backend, quantize=quantize, output=output, version=EXPORT_VERSION,
                             opset=_ONNX_OPSET, tools=_versions(backend, quantize)), sort_keys=True).encode())
    if quantize == "int8" and backend == "openvino":
        for t in calibration_texts or ():
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


class _Wrapped(torch.nn.Module):
    """The model with named tensor inputs and one tensor output, as the ONNX graph will have them."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output = output

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, args)), return_dict=True)
        return getattr(out, self.output)


def _input_names(model: torch.nn.Module, tokenizer: Any) -> list[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]
    tok_names = set(getattr(tokenizer, "model_input_names", names))
    return [n for n in names if n in tok_names or n == "input_ids"]


def _export_onnx(model: torch.nn.Module, tokenizer: Any, path: Path, output: str) -> list[str]:
    """Export ``model`` (fp32, CPU) to ``path`` with dynamic batch and sequence axes; returns the input names."""
    names = _input_names(model, tokenizer)
    # export a copy: tracing leaves state on the module that changes its later masked outputs
    src = copy.deepcopy(model).float().cpu().eval()
    enc = tokenizer(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    args = tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # TorchScript-based exporter: seconds, and the graph ONNX Runtime's transformer fusions expect
        torch.onnx.export(_Wrapped(src, names, output), args, str(path), input_names=names, output_names=[output],
                          dynamic_axes=axes, opset_version=_ONNX_OPSET, dynamo=False, do_constant_folding=True)
    return names


def _optimize_onnx(src: Path, dst: Path, config: Any) -> None:
    """ONNX Runtime's transformer fusions (attention, LayerNorm, GELU) for BERT-family graphs."""
    from onnxruntime.transformers import optimizer

    model_type = "bert"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                       opt_level=1, use_gpu=False)
    logger.info("onnxruntime fusions: %s", opt.get_fused_operator_statistics())
    opt.save_model_to_file(str(dst))


def _quantize_onnx(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the fused graph has contrib ops (BiasGelu, ...) that ONNX shape inference cannot type: they are float
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _calibration_batches(tokenizer: Any, texts: Sequence[str], names: Sequence[str], max_length: int,
                         batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for s in range(0, len(order), batch_size):
        enc = tokenizer([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="np")
        out.append({n: enc[n].astype(np.int64) for n in names})
    return out


def default_calibration_texts(n: int = 300) -> list[str]:
    """The first ``n`` course passages (``bgekit.data.doc_text``), for static int8 calibration."""
    from .data import course_data_dir, doc_text, load_beir

    corpus = load_beir(course_data_dir(), split="test").corpus
    return [doc_text(d) for d in list(corpus.values())[:n]]


def export_model(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike, backend: str,
                 quantize: str | None = None, *, output: str = "last_hidden_state",
                 calibration_texts: Sequence[str] | None = None, max_length: int = 512) -> Path:
    """Export ``model`` for ``backend`` into ``folder`` (created; files ``model.onnx`` or ``model.xml``).

    Args:
        model: a transformers model (``AutoModel`` for ``output="last_hidden_state"``,
            ``AutoModelForSequenceClassification`` for ``output="logits"``); it is not modified.
        tokenizer: its tokenizer (decides the input names).
        backend: ``"onnx"`` or ``"openvino"``.
        quantize: ``None`` or ``"int8"``.
        calibration_texts: texts for OpenVINO's static int8 (default: :func:`default_calibration_texts`).
    Returns:
        ``folder`` as a Path.
    Raises:
        ValueError: unknown backend/quantize; ImportError: the backend is not installed (names the extra).
    """
    backend, quantize = check_backend(backend, quantize)
    if backend == "torch":
        raise ValueError("backend='torch' needs no export")
    require_backend(backend, quantize)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "raw.onnx"
    names = _export_onnx(model, tokenizer, raw, output)
    if backend == "onnx":
        fused = folder / "fused.onnx"
        _optimize_onnx(raw, fused, model.config)
        raw.unlink()
        if quantize == "int8":
            _quantize_onnx(fused, folder / "model.onnx")
            fused.unlink()
        else:
            fused.rename(folder / "model.onnx")
    else:
        import openvino as ov

        ov_model = ov.convert_model(str(raw))
        if quantize == "int8":
            import nncf

            texts = list(calibration_texts) if calibration_texts is not None else default_calibration_texts()
            if not texts:
                raise ValueError("calibration_texts is empty: static int8 needs some text to calibrate on")
            batches = _calibration_batches(tokenizer, texts, names, max_length)
            ov_model = nncf.quantize(ov_model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                     subset_size=len(batches))
        ov.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=False)
        raw.unlink()
    return folder


def exported_model(model: torch.nn.Module, tokenizer: Any, backend: str, quantize: str | None = None, *,
                   output: str = "last_hidden_state", cache_dir: str | os.PathLike | None = None,
                   calibration_texts: Sequence[str] | None = None, max_length: int = 512,
                   fingerprint: str | None = None) -> Path:
    """The cached export of ``model`` for ``backend``/``quantize``: reused when its key matches, else made
    (atomically, in a sibling folder swapped into place) and returned.

    Returns:
        the folder, ``cache_dir/<backend>-<fp32|int8>-<key[:20]>``.
    """
    backend, quantize = check_backend(backend, quantize)
    require_backend(backend, quantize)
    if backend == "openvino" and quantize == "int8" and calibration_texts is None:
        calibration_texts = default_calibration_texts()
    key = export_key(model, tokenizer, backend, quantize, output, calibration_texts, fingerprint=fingerprint)
    folder = Path(cache_dir or default_cache_dir()) / f"{backend}-{quantize or 'fp32'}-{key[:20]}"
    meta = folder / _META
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("key") == key and (folder / info["file"]).is_file():
                logger.info("reusing the %s export in %s", backend, folder)
                return folder
            raise ValueError("key or model file does not match")
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring the export in %s (%s); exporting again", folder, e)
    logger.info("exporting %s to %s (%s, %s)", type(model).__name__, folder, backend, quantize or "fp32")
    with atomic_dir(folder) as tmp:
        export_model(model, tokenizer, tmp, backend, quantize, output=output, calibration_texts=calibration_texts,
                     max_length=max_length)
        atomic_write_json(tmp / _META, dict(key=key, backend=backend, quantize=quantize, output=output,
                                            file="model.onnx" if backend == "onnx" else "model.xml",
                                            inputs=_input_names(model, tokenizer),
                                            tools=_versions(backend, quantize)))
    return folder


class BackendRunner:
    """Runs an exported model on a batch of torch tensors; returns a float32 torch tensor.

    ``runner({"input_ids": ..., "attention_mask": ..., ...})`` -> ``(batch, seq, hidden)`` for
    encoders, ``(batch, 1)`` logits for rerankers. Inputs the graph does not take are ignored; a
    missing ``attention_mask`` is all ones. ``precision`` is the floating-point type the runtime computes in
    (``"f32"``; OpenVINO reports its own setting).
    """

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: Sequence[str],
                 backend: str, folder: Path, precision: str = "f32") -> None:
        self._run = run
        self.inputs = list(inputs)
        self.backend = backend
        self.folder = folder
        self.precision = precision

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        feed = {}
        for n in self.inputs:
            t = batch.get(n)
            if t is None:
                t = torch.ones_like(ids) if n == "attention_mask" else torch.zeros_like(ids)
            feed[n] = t.detach().cpu().numpy().astype(np.int64, copy=False)
        return torch.from_numpy(np.asarray(self._run(feed), dtype=np.float32))

    def __repr__(self) -> str:
        return f"BackendRunner({self.backend!r}, {str(self.folder)!r})"


def load_runner(folder: str | os.PathLike, threads: int | None = None) -> BackendRunner:
    """Open an exported folder (from :func:`exported_model`) with its backend's runtime."""
    folder = Path(folder)
    info = json.loads((folder / _META).read_text())
    backend = info["backend"]
    require_backend(backend)
    if backend == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(str(folder / info["file"]), so, providers=["CPUExecutionProvider"])
        graph_inputs = [i.name for i in sess.get_inputs()]

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            return sess.run(None, {n: feed[n] for n in graph_inputs})[0]

        return BackendRunner(run, graph_inputs, backend, folder)
    import openvino as ov

    # OpenVINO computes in bf16 by default on a CPU with native bf16 (AVX512-BF16, AMX): 3 significant digits, where
    # the exported backends promise fp32 (measured: reranker logits off by 0.2%); ask for f32 explicitly
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(folder / info["file"]), "CPU", config)
    request = compiled.create_infer_request()
    graph_inputs = [i.any_name for i in compiled.inputs]
    out_port = compiled.outputs[0]

    def run_ov(feed: dict[str, np.ndarray]) -> np.ndarray:
        return request.infer({n: feed[n] for n in graph_inputs})[out_port].copy()

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")   # an openvino Type, e.g. f32
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return BackendRunner(run_ov, graph_inputs, backend, folder, precision)


def load_exported(model: torch.nn.Module, tokenizer: Any, backend: str, quantize: str | None = None, *,
                  output: str = "last_hidden_state", cache_dir: str | os.PathLike | None = None,
                  calibration_texts: Sequence[str] | None = None, max_length: int = 512,
                  threads: int | None = None) -> BackendRunner:
    """:func:`exported_model` then :func:`load_runner`; a cached folder the runtime cannot open (a
    damaged file) is reported, exported again and opened once more.

    Returns:
        a :class:`BackendRunner`.
    """
    kw = dict(output=output, cache_dir=cache_dir, calibration_texts=calibration_texts, max_length=max_length)
    folder = exported_model(model, tokenizer, backend, quantize, **kw)
    try:
        return load_runner(folder, threads=threads)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged export: make it again
        logger.warning("could not open the export in %s (%s: %s); exporting again", folder, type(e).__name__,
                       str(e)[:200])
        (folder / _META).unlink(missing_ok=True)
        folder = exported_model(model, tokenizer, backend, quantize, **kw)
        return load_runner(folder, threads=threads)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> None:
    """Delete every cached export under ``cache_dir`` (default :func:`default_cache_dir`)."""
    shutil.rmtree(Path(cache_dir or default_cache_dir()), ignore_errors=True)

"""Course mode, device and reproducibility: the first call of every notebook.

Two modes, one code path:

* ``small``: CPU-friendly (CI, laptops), sizes scaled down so each notebook runs in minutes, the course data and a
  local llama.cpp server with SmolLM2. The embedder is ``BAAI/bge-small-en-v1.5`` ("BGE on a laptop": CLS pooling,
  BGE's query instruction) where it can be loaded (in the Hugging Face cache, or the hub is reachable), else the
  bundled all-MiniLM-L6-v2 (offline default). The mode line printed by :func:`setup` says which, and why.
* ``full``: the real BGE models from the Hugging Face hub (``BAAI/bge-large-en-v1.5``,
  ``BAAI/bge-reranker-large``), meant for a Colab GPU.

The switch is the environment variable ``BGEKIT_MODE`` (``small`` / ``full``) or the ``mode``
argument; left unset, ``full`` is chosen when a CUDA GPU is present and ``small`` otherwise. The
choice is always printed. ``BGEKIT_EMBEDDER`` overrides the embedder of either mode.

For the full-mode rehearsal (CI, tiny random stand-ins under the hub ids): ``BGEKIT_FORCE_FP16=1`` loads models
in fp16 even on a CPU (:func:`model_dtype`), and ``BGEKIT_REHEARSAL=1`` turns failed quality claims into
reported skips (:func:`quality_claim`).

>>> import bgekit
>>> cfg = bgekit.setup(seed=0)  # doctest: +SKIP
bgekit 0.1.0 | mode: small (BGEKIT_MODE=small) | device: cpu | ...
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import models

MODE_ENV = "BGEKIT_MODE"
Mode = Literal["small", "full"]


def get_mode(mode: str | None = None) -> tuple[Mode, str]:
    """Return ``(mode, reason)``: the argument wins, then ``$BGEKIT_MODE``, then CUDA present → full."""
    if mode is None:
        env = os.environ.get(MODE_ENV, "").strip().lower()
        if env:
            mode, reason = env, f"{MODE_ENV}={env}"
        else:
            cuda = _cuda_available()
            mode = "full" if cuda else "small"
            reason = f"{MODE_ENV} unset; {'a CUDA GPU is' if cuda else 'no CUDA GPU is'} present"
    else:
        reason = "argument"
    if mode not in ("small", "full"):
        raise ValueError(f"Unknown mode {mode!r}: use 'small' (offline, CPU) or 'full' (real BGE models, GPU); "
                         f"set it with {MODE_ENV}= or bgekit.setup(mode=...).")
    return mode, reason  # type: ignore[return-value]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    """``cuda`` if available, else ``mps`` (Apple), else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def fast_bf16(device: str | None = None) -> bool:
    """True when bfloat16 runs natively on ``device`` (default: the best available): a CUDA GPU of compute
    capability 8.0 or newer (Ampere: A100, L4, RTX 30xx and later), or a CPU with AVX512-BF16 / AMX
    instructions, where bf16 roughly halves the time of a transformer forward pass. Elsewhere (a T4 or V100,
    most laptop CPUs) bf16 is emulated and slower than fp32.

    ``torch.cuda.is_bf16_supported()`` alone is not enough: by default it also answers True where bf16 is
    only emulated (a T4), so the compute capability is checked as well.

    Args:
        device: ``"cuda"``, ``"cuda:N"``, ``"cpu"``, ``"mps"``; ``None``: :func:`default_device`.

    Returns:
        bool: whether bf16 is native there.

    >>> fast_bf16("cpu") in (True, False)
    True
    """
    import torch

    dev = device or default_device()
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        index = torch.device(dev).index
        index = torch.cuda.current_device() if index is None else index
        major, _ = torch.cuda.get_device_capability(index)
        if major < 8:  # pre-Ampere: no bf16 tensor cores, bf16 is emulated
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the argument: capability >= 8.0 is the test
            return True
    if dev != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # private, so probe with care
        try:
            if bool(getattr(cpu, probe)()):
                return True
        except Exception:  # noqa: BLE001 - missing in this torch build: not supported
            continue
    return False


FORCE_FP16_ENV = "BGEKIT_FORCE_FP16"
REHEARSAL_ENV = "BGEKIT_REHEARSAL"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def force_fp16() -> bool:
    """True when ``$BGEKIT_FORCE_FP16`` is set (``1``/``true``): models load in fp16 even on a CPU.

    Meant for the full-mode rehearsal, which stands in for a GPU's numerics on a CPU; slow, never for learners.
    """
    return _env_flag(FORCE_FP16_ENV)


def model_dtype(device: str | object, dtype: object = None):
    """The ``torch.dtype`` a model is loaded in: the one asked for, else fp16 on CUDA (or anywhere when
    ``$BGEKIT_FORCE_FP16=1``), else fp32. The one place the Embedder, the Reranker and training pick a dtype.

    Args:
        device: a ``torch.device`` or device string.
        dtype: ``None``, a ``torch.dtype``, or a name: fp16/float16/half, bf16/bfloat16, fp32/float32.

    Returns:
        torch.dtype

    Raises:
        ValueError: an unknown name.

    >>> import torch
    >>> model_dtype("cpu", "bf16")
    torch.bfloat16
    """
    import torch

    names = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if dtype is None:
        if force_fp16():
            return torch.float16
        dev_type = getattr(device, "type", None) or str(device).split(":")[0]
        return torch.float16 if dev_type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"Unknown dtype {dtype!r}: use one of {sorted(names)}")
        return names[dtype]
    return dtype


def rehearsal() -> bool:
    """True inside the full-mode rehearsal (``$BGEKIT_REHEARSAL=1``): tiny random models stand in for BGE."""
    return _env_flag(REHEARSAL_ENV)


@contextmanager
def quality_claim(claim: str) -> Iterator[None]:
    """Check a claim about model quality: a hard assertion, except in the rehearsal.

    Random stand-in weights (the rehearsal) cannot meet quality claims such as "the reranker beats dense
    retrieval"; there a failed claim prints ``skipped in rehearsal: <claim> (random stand-in weights)`` instead of
    failing. In small mode and in real full mode the assertion stands.

    Args:
        claim: what the block asserts, in words.

    Raises:
        AssertionError: the claim does not hold (outside the rehearsal).

    >>> with quality_claim("two is more than one"):
    ...     assert 2 > 1
    """
    try:
        yield
    except AssertionError as e:
        if not rehearsal():
            raise
        detail = f": {e}" if str(e) else ""
        print(f"skipped in rehearsal: {claim} (random stand-in weights cannot meet it{detail})")


EMBEDDER_ENV = "BGEKIT_EMBEDDER"


@functools.lru_cache(maxsize=8)
def hub_model_available(repo_id: str, timeout: float = 3.0) -> bool:
    """True when hub model ``repo_id`` can be loaded here: already in the local Hugging Face cache, or the hub
    answers for it (a short probe, skipped when ``HF_HUB_OFFLINE=1``). Cached per process.

    Args:
        repo_id: e.g. ``"BAAI/bge-small-en-v1.5"``.
        timeout: seconds to wait for the hub.

    Returns:
        bool
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")  # read now, not at import
        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
        if isinstance(hit, str) and os.path.isfile(hit):
            return True
    except Exception:  # noqa: BLE001 - no cache, or an old huggingface_hub: fall through to the probe
        pass
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - unreachable, or no such model
        return False


def small_embedder() -> tuple[str, str]:
    """The embedder of small mode and why: ``BAAI/bge-small-en-v1.5`` ("BGE on a laptop": CLS pooling and BGE's
    query instruction, 33M parameters) when it can be loaded (cached, or the hub is reachable), else the bundled
    all-MiniLM-L6-v2 folder (offline). ``$BGEKIT_EMBEDDER`` overrides both.

    Returns:
        ``(name or folder, reason)``.
    """
    env = os.environ.get(EMBEDDER_ENV, "").strip()
    if env:
        return env, f"{EMBEDDER_ENV}={env}"
    if hub_model_available(models.LAPTOP_EMBEDDER):
        return models.LAPTOP_EMBEDDER, "BGE on a laptop: the hub model can be loaded here and there is no GPU"
    return str(models.offline_model_path()), "offline default: the bundled model (no hub)"


def default_embedder(mode: str | None = None) -> str:
    """The embedder a mode uses: ``BAAI/bge-large-en-v1.5`` in ``full`` mode; in ``small`` mode
    :func:`small_embedder` (``BAAI/bge-small-en-v1.5`` where it can be loaded, else the bundled model folder).
    ``$BGEKIT_EMBEDDER`` overrides both."""
    m, _ = get_mode(mode)
    if m == "full":
        return os.environ.get(EMBEDDER_ENV, "").strip() or models.FULL_EMBEDDER
    return small_embedder()[0]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


#: The course reranker's recipe, defined once: notebook 03 trains it in small mode (its appendix explains each
#: setting), notebook 06 reuses it through :meth:`CourseConfig.reranker_args`. Sized for two CPU cores: the train
#: split less 100 queries held out for validation, 1 positive + 1 hard negative from the dense top 30 per query,
#: pairs cut to 64 tokens, the lowest MiniLM layers frozen. (Groups of 3 took 1.5x the training time for the same
#: validation score: fused nDCG@10 at the dense top 20 of the held-out queries 0.8109, against 0.8115 for pairs.)
COURSE_RERANKER: dict[str, Any] = dict(
    split="train", holdout_queries=100, train_group_size=2, negative_range=(0, 30), num_train_epochs=2,
    per_device_train_batch_size=8, learning_rate=1.5e-4, warmup_ratio=0.05, freeze_layers=2, max_len=64,
)


@dataclass(frozen=True)
class CourseConfig:
    """What a notebook needs to know about where it runs. ``small`` is ``mode == 'small'``."""

    mode: Mode
    device: str
    embedder: str
    reranker: str | None  # None in small mode: notebook 03 trains the course's own cross-encoder
    data_dir: Path
    work_dir: Path
    seed: int

    @property
    def small(self) -> bool:
        return self.mode == "small"

    def reranker_args(self, **overrides: Any) -> Any:
        """The course reranker's training arguments: :data:`COURSE_RERANKER` in this config's folders and seed.

        Args:
            **overrides: fields to change (e.g. ``bf16=True``), as in ``RerankerTrainingArguments``.

        Returns:
            a ``bgekit.training.RerankerTrainingArguments`` writing to ``work_dir / "reranker"``; two notebooks that
            call this get the same arguments, so ``train_reranker(..., reuse=True)`` finds the first one's model.

        >>> cfg = CourseConfig("small", "cpu", "m", None, Path("data"), Path("w"), 0)
        >>> args = cfg.reranker_args(bf16=False)
        >>> Path(args.output_dir).as_posix(), args.train_group_size, args.holdout_queries
        ('w/reranker', 2, 100)
        """
        from .training import RerankerTrainingArguments

        kw = {**COURSE_RERANKER, "output_dir": str(self.work_dir / "reranker"), "data_dir": str(self.data_dir),
              "seed": self.seed, **overrides}
        return RerankerTrainingArguments(**kw)

    def model_file(self, name: str) -> Path:
        """A work-folder file that belongs to this config's embedder, e.g. ``model_file("train_mined.jsonl")`` is
        ``work_dir / "train_mined.bge-large-en-v1.5.jsonl"``: a file mined by one mode's model is never picked up by
        a run with another model (notebooks 04 and 05 share the mined file this way).

        >>> cfg = CourseConfig("full", "cpu", "BAAI/bge-large-en-v1.5", None, Path("data"), Path("w"), 0)
        >>> cfg.model_file("train_mined.jsonl").name
        'train_mined.bge-large-en-v1.5.jsonl'
        """
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        tag = re.sub(r"[^A-Za-z0-9._-]+", "-", models.display_name(self.embedder).split("/")[-1]).strip("-.") or "model"
        return self.work_dir / (f"{stem}.{tag}.{ext}" if ext else f"{name}.{tag}")


def work_dir() -> Path:
    """Where notebooks keep what they hand to each other: ``$BGEKIT_WORK`` or ``./_work``."""
    return Path(os.environ.get("BGEKIT_WORK", Path.cwd() / "_work")).resolve()


def setup(mode: str | None = None, seed: int = 0, verbose: bool = True) -> CourseConfig:
    """Choose the mode, seed everything, show bgekit's log lines, and print what was chosen.

    >>> cfg = setup(mode="small")  # doctest: +SKIP
    >>> cfg.embedder               # the bundled all-MiniLM-L6-v2 folder  # doctest: +SKIP
    """
    import numpy as np
    import torch
    import transformers

    from . import __version__
    from .data import course_data_dir

    m, reason = get_mode(mode)
    seed_everything(seed)
    device = default_device()
    if m == "full":
        embedder, reranker = default_embedder("full"), models.FULL_RERANKER
        why = "full mode" if embedder == models.FULL_EMBEDDER else f"{EMBEDDER_ENV}={embedder}"
    else:
        (embedder, why), reranker = small_embedder(), None
    wd = work_dir()
    wd.mkdir(parents=True, exist_ok=True)
    cfg = CourseConfig(m, device, embedder, reranker, course_data_dir(), wd, seed)
    _quiet_third_party()
    keys = _colab_secrets_to_env()
    if verbose:
        _show_package_logs()
        gpu = f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""
        print(f"bgekit {__version__} | mode: {m} ({reason}) | device: {device}{gpu} | seed: {seed}")
        print(f"python {platform.python_version()} | torch {torch.__version__} | transformers "
              f"{transformers.__version__} | numpy {np.__version__}")
        print(f"embedder: {models.display_name(embedder)} ({why}) | "
              f"reranker: {reranker or 'trained in notebook 03 (small mode)'} | data: {cfg.data_dir}")
        if force_fp16() or rehearsal():
            print(f"rehearsal: {REHEARSAL_ENV}={int(rehearsal())} {FORCE_FP16_ENV}={int(force_fp16())} "
                  f"(models load in {str(model_dtype(device)).replace('torch.', '')})")
        if keys:  # names only, never values
            print(f"API keys taken from Colab secrets into the environment: {', '.join(keys)}")
        if m == "small" and device == "cuda":
            print(f"note: a GPU is present; set {MODE_ENV}=full to use the real BGE models.")
    return cfg


LLM_KEY_NAMES = ("NOVITA_API_KEY", "OPENAI_API_KEY")


def _colab_secrets_to_env(names: tuple[str, ...] = LLM_KEY_NAMES) -> list[str]:
    """On Colab, copy LLM API keys from the Secrets panel into the environment (where bgekit.llm reads them).

    Returns the names it set; values are never printed or logged. Outside Colab it does nothing.
    """
    if "google.colab" not in sys.modules:
        return []
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return []
    found = []
    for name in names:
        if os.environ.get(name):
            continue
        try:
            value = userdata.get(name)
        except Exception:  # noqa: BLE001 - secret absent or notebook access not granted
            continue
        if value:
            os.environ[name] = value
            found.append(name)
    return found


def _quiet_third_party() -> None:
    """Hide transformers' per-load progress bars and advisory warnings: notebooks show bgekit's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _show_package_logs() -> None:
    """Send bgekit's INFO log lines to stdout (once), so notebooks show device and progress notes."""
    log = logging.getLogger("bgekit")
    if not any(getattr(h, "_bgekit", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("[bgekit] %(message)s"))
        h._bgekit = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False

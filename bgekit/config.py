"""Course mode, device and reproducibility: the first call of every notebook.

Two modes, one code path:

* ``small``: offline and CPU-friendly (CI, laptops): the bundled all-MiniLM-L6-v2, the course data,
  a local llama.cpp server with SmolLM2; sizes scaled down so each notebook runs in minutes.
* ``full``: the real BGE models from the Hugging Face hub (``BAAI/bge-large-en-v1.5``,
  ``BAAI/bge-reranker-large``), meant for a Colab GPU.

The switch is the environment variable ``BGEKIT_MODE`` (``small`` / ``full``) or the ``mode``
argument; left unset, ``full`` is chosen when a CUDA GPU is present and ``small`` otherwise. The
choice is always printed.

>>> import bgekit
>>> cfg = bgekit.setup(seed=0)  # doctest: +SKIP
bgekit 0.1.0 | mode: small (BGEKIT_MODE=small) | device: cpu | ...
"""
from __future__ import annotations

import logging
import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """True when bfloat16 runs natively on ``device`` (default: the best available): a CUDA GPU with
    bf16 support, or a CPU with AVX512-BF16 / AMX instructions, where bf16 roughly halves the time of a
    transformer forward pass. Elsewhere bf16 is emulated and slower than fp32.

    >>> fast_bf16("cpu") in (True, False)
    True
    """
    import torch

    dev = device or default_device()
    if dev.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
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


def default_embedder(mode: str | None = None) -> str:
    """The embedder a mode uses: the real BGE in ``full`` mode, the bundled model folder in ``small``."""
    m, _ = get_mode(mode)
    if m == "full":
        return models.FULL_EMBEDDER
    return str(models.offline_model_path())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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
        embedder, reranker = models.FULL_EMBEDDER, models.FULL_RERANKER
    else:
        embedder, reranker = str(models.offline_model_path()), None
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
        shown = models.OFFLINE_EMBEDDER + " (bundled)" if m == "small" else embedder
        print(f"embedder: {shown} | reranker: {reranker or 'trained in notebook 03 (small mode)'} | "
              f"data: {cfg.data_dir}")
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

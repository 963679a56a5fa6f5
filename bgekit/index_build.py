"""Build a :class:`~bgekit.index.DenseIndex` over a corpus with one or many processes, resumably.

    python -m bgekit.index build --data DIR --model M --out OUT
    torchrun --nproc_per_node 4 -m bgekit.index build --data DIR --model M --out OUT   # 4 processes / GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m bgekit.index build ...  # 2 machines

How it works:

1. The corpus (``DIR/corpus.jsonl``, BEIR format; text = :func:`bgekit.data.doc_text`) is cut into
   *shards* of ``--shard-size`` documents, in file order. The shards depend only on the corpus and
   the shard size, never on the number of processes.
2. Process ``rank`` of ``world_size`` (torchrun's ``RANK``/``WORLD_SIZE``; one process without
   torchrun) encodes shards ``rank, rank + world_size, ...`` and writes each one atomically as
   ``OUT/shards/shard-NNNNN.npz`` (ids, float32 vectors and a SHA-256 of the vectors). Because a
   shard is always encoded as one unit, one process and N processes produce the same vectors, bit
   for bit, on the same hardware.
3. A shard already on disk is checked and reused, so a killed build picks up where it stopped.
4. Rank 0 checks every shard, assembles them in corpus order into one ``DenseIndex`` and saves it
   atomically to ``OUT/index`` (trained kinds train on a seeded sample of all the vectors).

``OUT/build.json`` records what the shards were built from (model fingerprint, settings, corpus
hash); a resumed build with another model, corpus or shard size stops with an error instead of
mixing vectors. With several machines, ``OUT`` must be on a file system they share.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bgekit._io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["build_index", "main", "read_shard", "shard_path"]

BUILD_FORMAT = "bgekit.index_build"
#: vectors used to train IVF / PQ / SQ kinds (a seeded sample when the corpus is larger)
MAX_TRAIN = 200_000


def shard_path(out: Path, shard: int) -> Path:
    """``OUT/shards/shard-NNNNN.npz``."""
    return Path(out) / "shards" / f"shard-{shard:05d}.npz"


def _digest(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


def write_shard(path: Path, ids: Sequence[str], vectors: np.ndarray) -> None:
    """Write one shard atomically: ids, float32 vectors and their SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(list(ids), dtype=str), vectors=np.ascontiguousarray(vectors, dtype=np.float32),
             sha256=np.array(_digest(vectors)))
    atomic_write_bytes(path, buf.getvalue())


def read_shard(path: Path, ids: Sequence[str], dim: int) -> np.ndarray:
    """The vectors of a shard, after checking that it holds exactly ``ids``, ``(len(ids), dim)``
    finite float32 vectors and the checksum it was written with.

    Raises:
        ValueError: a damaged or foreign shard, naming the file, what is wrong and what to do.
    """
    fix = "delete it and run the build again: that shard is encoded again, the others are reused"
    try:
        with np.load(path, allow_pickle=False) as z:
            got_ids, vectors, digest = z["ids"].tolist(), z["vectors"], str(z["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable shard ({type(e).__name__}: {e}); {fix}") from None
    if got_ids != list(ids):
        first = next((i for i, (a, b) in enumerate(zip(got_ids, ids)) if a != b), min(len(got_ids), len(ids)))
        raise ValueError(f"{path}: holds {len(got_ids)} ids that differ from the corpus at position {first} "
                         f"(expected {len(ids)} ids); {fix}")
    if vectors.dtype != np.float32 or vectors.shape != (len(ids), dim):
        raise ValueError(f"{path}: vectors are {vectors.dtype} {vectors.shape}, expected float32 ({len(ids)}, {dim}); "
                         f"{fix}")
    if _digest(vectors) != digest:
        raise ValueError(f"{path}: vectors do not match their checksum (the file is damaged); {fix}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{path}: vectors contain NaN or inf; {fix}")
    return vectors


def _read_corpus(data: Path) -> tuple[list[str], list[str]]:
    from bgekit.data import _read_corpus as read
    from bgekit.data import doc_text

    path = data / "corpus.jsonl" if data.is_dir() else data
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data must be a BEIR folder with corpus.jsonl (or that file)")
    corpus = read(path)
    if not corpus:
        raise ValueError(f"{path} holds no documents")
    return list(corpus), [doc_text(d) for d in corpus.values()]


def _corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        for part in (i, t):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a one-process stand-in."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist = None
        if self.world > 1:
            import torch
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
            self.dist = dist

    def all_ok(self, ok: bool) -> bool:
        """True when every process reports ``ok`` (a collective: every process must call it)."""
        if self.dist is None:
            return ok
        import torch

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        if self.dist.get_backend() == "nccl":
            flag = flag.cuda()
        self.dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _encoder(model: str | None, device: str | None, dist: _Dist, **kw: Any):
    from bgekit.embedder import Embedder

    if device is None and dist.world > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{dist.local_rank}"
    return Embedder(model, device=device, **{k: v for k, v in kw.items() if v is not None})


def build_index(data: str | os.PathLike, out: str | os.PathLike, model: str | None = None, *, kind: str = "flat",
                knobs: dict[str, Any] | None = None, shard_size: int = 1024, batch_size: int | None = None,
                max_length: int | None = None, dtype: str | None = None, truncate_dim: int | None = None,
                device: str | None = None, show_progress: bool = False) -> Path | None:
    """Encode ``data``'s corpus in shards (this process's share of them) and assemble the index.

    Args:
        data: a BEIR folder (``corpus.jsonl`` in it) or a ``corpus.jsonl`` file.
        out: output folder: ``build.json``, ``shards/`` and, when done, ``index/``.
        model: embedding model name or folder (``None``: the mode's default).
        kind, knobs: the :class:`~bgekit.index.DenseIndex` kind and its knobs.
        shard_size: documents per shard (the unit of work, of resuming, and of bitwise equality
            between runs with different numbers of processes).
        batch_size, max_length, dtype, truncate_dim, device: passed to :class:`~bgekit.embedder.Embedder`.

    Returns:
        The saved index folder (``OUT/index``) on rank 0, ``None`` on the other ranks.

    Raises:
        ValueError: a resumed build whose settings differ from ``build.json``, a damaged shard,
            or a bad ``kind``/knob (checked before any encoding).
        FileNotFoundError: no corpus.
    """
    from bgekit.cache import model_fingerprint
    from bgekit.index import DenseIndex

    out = Path(out)
    knobs = dict(knobs or {})
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    dist = _Dist()
    try:
        ids, texts = _read_corpus(Path(data))
        enc = _encoder(model, device, dist, batch_size=batch_size, max_length=max_length, dtype=dtype,
                       truncate_dim=truncate_dim)
        DenseIndex(enc.dim, kind=kind, **knobs)  # bad kind / knobs fail here, before any encoding
        n_shards = (len(ids) + shard_size - 1) // shard_size
        plan = {
            "format": BUILD_FORMAT,
            "model": enc.name,
            "model_fingerprint": model_fingerprint(enc.model, enc.tokenizer),
            "encoder": {"pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length,
                        "dtype": str(enc.dtype).replace("torch.", ""), "truncate_dim": enc.truncate_dim,
                        "dim": enc.dim},
            "corpus_sha256": _corpus_hash(ids, texts),
            "documents": len(ids),
            "shard_size": shard_size,
            "shards": n_shards,
        }
        ok, err = True, None
        if dist.rank == 0:
            try:
                _check_or_write_plan(out, plan)
            except Exception as e:  # noqa: BLE001 - reported to every rank, raised here
                ok, err = False, e
        if not dist.all_ok(ok):
            raise err if err is not None else RuntimeError("rank 0 refused the build plan (see its error)")

        mine = range(dist.rank, n_shards, dist.world)
        ok, err = True, None
        try:
            _encode_shards(out, enc, ids, texts, shard_size, mine, dist, show_progress)
        except Exception as e:  # noqa: BLE001 - make every process stop, not wait for this one
            ok, err = False, e
        if not dist.all_ok(ok):
            raise err if err is not None else RuntimeError("another process failed while encoding (see its error)")
        if dist.rank != 0:
            return None
        return _assemble(out, ids, shard_size, n_shards, enc.dim, kind, knobs)
    finally:
        dist.close()


def _check_or_write_plan(out: Path, plan: dict[str, Any]) -> None:
    path = out / "build.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: unreadable ({e}); delete it (and {out / 'shards'}) to start over") from None
        diff = sorted(k for k in plan if k != "model" and old.get(k) != plan[k])
        if diff:
            raise ValueError(
                f"{out} holds a build with other settings ({', '.join(diff)} differ from build.json): "
                f"pick another --out, or delete {path} and {out / 'shards'} to start over"
            )
        logger.info("resuming the build in %s", out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, plan)


def _encode_shards(out: Path, enc: Any, ids: list[str], texts: list[str], shard_size: int,
                   mine: range, dist: _Dist, show_progress: bool) -> None:
    from tqdm.auto import tqdm

    encoded = reused = 0
    t0 = time.perf_counter()
    for s in tqdm(mine, desc=f"rank {dist.rank} shards", unit="shard", disable=not show_progress):
        lo, hi = s * shard_size, min(len(ids), (s + 1) * shard_size)
        path = shard_path(out, s)
        if path.exists():
            read_shard(path, ids[lo:hi], enc.dim)  # a damaged shard stops the build with a clear error
            reused += 1
            continue
        vectors = enc.encode(texts[lo:hi], show_progress=False)
        write_shard(path, ids[lo:hi], vectors)
        encoded += 1
    logger.info("rank %d/%d: encoded %d shard(s), reused %d, in %.1fs", dist.rank, dist.world, encoded, reused,
                time.perf_counter() - t0)


def _assemble(out: Path, ids: list[str], shard_size: int, n_shards: int, dim: int, kind: str,
              knobs: dict[str, Any]) -> Path:
    from bgekit.index import DenseIndex

    missing = [str(shard_path(out, s)) for s in range(n_shards) if not shard_path(out, s).exists()]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) missing after encoding, e.g. {missing[0]}")
    parts = []
    for s in range(n_shards):
        lo, hi = s * shard_size, min(len(ids), (s + 1) * shard_size)
        parts.append(read_shard(shard_path(out, s), ids[lo:hi], dim))
    vectors = np.concatenate(parts)
    index = DenseIndex(dim, kind=kind, **knobs)
    if kind not in ("flat", "hnsw"):  # trained kinds: train on all vectors, or a seeded sample of them
        sample = vectors
        if len(vectors) > MAX_TRAIN:
            pick = np.sort(np.random.default_rng(0).choice(len(vectors), MAX_TRAIN, replace=False))
            sample = vectors[pick]
        if not index.is_trained:
            index.train(sample)
    index.add(ids, vectors)
    path = index.save(out / "index")
    logger.info("assembled %d shards into %r at %s", n_shards, index, path)
    return path


def _parse_knob(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--knob takes NAME=VALUE, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        return name, value


def build_parser() -> argparse.ArgumentParser:
    from bgekit.index import KINDS

    ap = argparse.ArgumentParser(prog="python -m bgekit.index", description="bgekit index tools.")
    sub = ap.add_subparsers(dest="command", metavar="command", required=True)
    p = sub.add_parser("build", help="encode a corpus (in shards, across processes) and build a DenseIndex",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="BEIR folder with corpus.jsonl (or the corpus.jsonl file)")
    p.add_argument("--model", default=None, help="embedding model name or folder (default: the mode's embedder)")
    p.add_argument("--out", required=True, help="output folder: build.json, shards/, index/")
    p.add_argument("--kind", default="flat", choices=KINDS, help="DenseIndex kind (default: flat)")
    p.add_argument("--knob", action="append", default=[], type=_parse_knob, metavar="NAME=VALUE",
                   help="a DenseIndex knob, e.g. --knob rescore=4 --knob nlist=1024 (repeatable)")
    p.add_argument("--shard-size", type=int, default=1024, help="documents per shard (default: 1024)")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch size")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per document")
    p.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--truncate-dim", type=int, default=None, help="keep the first N dimensions of each vector")
    p.add_argument("--device", default=None, help="cuda / cpu / ... (default: each process's own GPU, else CPU)")
    p.add_argument("--progress", action="store_true", help="progress bar per process")
    p.add_argument("-v", "--verbose", action="store_true", help="INFO log lines")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bgekit.index build ...`` (see :func:`build_parser`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"[rank {os.environ.get('RANK', '0')}] %(name)s: %(message)s")
    try:
        path = build_index(args.data, args.out, args.model, kind=args.kind, knobs=dict(args.knob),
                           shard_size=args.shard_size, batch_size=args.batch_size, max_length=args.max_length,
                           dtype=args.dtype, truncate_dim=args.truncate_dim, device=args.device,
                           show_progress=args.progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    if path is not None:
        print(f"index written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The full-mode rehearsal: run the course notebooks in full mode on a CPU, with no hub and no GPU.

Full mode loads ``BAAI/bge-large-en-v1.5`` and ``BAAI/bge-reranker-large`` from the Hugging Face hub (and, on a
laptop with the hub reachable, small mode loads ``BAAI/bge-small-en-v1.5``). Here those ids resolve to tiny,
randomly initialised models of the same shape (BERT for the embedders, XLM-RoBERTa for the reranker) written into a
local Hugging Face cache (``HF_HOME`` in a temporary folder, ``HF_HUB_OFFLINE=1``), so every full-mode code path runs
for real through ``transformers``, only with random weights. The tokenizers are real: the BERT WordPiece vocabulary of
the bundled all-MiniLM-L6-v2, and for XLM-R a SentencePiece-style Unigram tokenizer trained with the ``tokenizers``
library on the course corpus (so it has XLM-R's special tokens and pair template, ``<s> A </s></s> B </s>``).

The LLM is the real thing as well: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) with the
bundled SmolLM2-135M GGUF, started with an ``--api_key``, and reached by the notebooks through the *OpenAI* preset
(``OPENAI_API_KEY`` plus the openai package's ``OPENAI_BASE_URL``), which is the path a learner with a key takes.

``BGEKIT_REHEARSAL=1`` turns failed quality claims (random weights cannot beat anything) into printed
``skipped in rehearsal: ...`` lines (:func:`bgekit.config.quality_claim`); ``BGEKIT_FORCE_FP16=1`` loads the models in
fp16 on the CPU to stand in for a GPU's numerics.

    python tests/rehearsal.py                  # all notebooks, fp32 then fp16, timings at the end
    python tests/rehearsal.py --dtype fp16 05  # one notebook, one dtype
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"

EMBEDDER_IDS = ("BAAI/bge-large-en-v1.5", "BAAI/bge-small-en-v1.5")
RERANKER_ID = "BAAI/bge-reranker-large"
#: the model name the OpenAI preset sends (bgekit.llm.PROVIDERS["openai"].model); the local server answers to it
OPENAI_MODEL = "gpt-4o-mini"
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


# --------------------------------------------------------------------------- the local Hugging Face cache


def _snapshot(hub: Path, repo_id: str) -> Path:
    """Create the cache folders of ``repo_id`` (``models--ORG--NAME``), point ``refs/main`` at one snapshot."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"bgekit-rehearsal:{repo_id}".encode()).hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def _tiny_bert(snap: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    from bgekit.models import offline_model_path

    src = offline_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, snap / name)
    vocab = sum(1 for _ in (src / "vocab.txt").open(encoding="utf-8"))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(snap)
    # what the real hub repos carry for sentence-transformers: CLS pooling, normalised
    (snap / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (snap / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": True}))
    (snap / "1_Pooling").mkdir(exist_ok=True)
    (snap / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (snap / "2_Normalize").mkdir(exist_ok=True)


def xlmr_tokenizer(texts: list[str], vocab_size: int = 3000):
    """A real XLM-R-style fast tokenizer (Unigram, Metaspace, XLM-R's special tokens and pair template), trained on
    ``texts`` with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)


def _tiny_xlmr_reranker(snap: Path, seed: int) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from bgekit.data import doc_text, load_beir

    data = load_beir(ROOT / "data", split="test")
    texts = [doc_text(d) for d in data.corpus.values()] + list(data.queries.values())
    tok = xlmr_tokenizer(texts)
    tok.save_pretrained(snap)
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, type_vocab_size=1, num_labels=1,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    XLMRobertaForSequenceClassification(cfg).save_pretrained(snap)


def build_hf_cache(hf_home: Path) -> Path:
    """Write the stand-ins into ``hf_home/hub``; return ``hf_home``. Idempotent (a finished cache is kept)."""
    hub = Path(hf_home) / "hub"
    done = Path(hf_home) / ".rehearsal-complete"
    if done.exists():
        return Path(hf_home)
    for i, repo_id in enumerate(EMBEDDER_IDS):
        _tiny_bert(_snapshot(hub, repo_id), seed=i)
    _tiny_xlmr_reranker(_snapshot(hub, RERANKER_ID), seed=7)
    done.write_text("ok")
    return Path(hf_home)


# --------------------------------------------------------------------------- a smaller course collection


def build_data_subset(dest: Path, n_test: int = 30, n_train: int = 130, n_extra_docs: int = 80, seed: int = 0) -> Path:
    """The course collection cut down for the rehearsal: the first ``n_test`` test and ``n_train`` train queries (by
    id), every passage judged for them, ``n_extra_docs`` other passages (seeded) and the general pairs unchanged.
    Full mode's code paths stay the same; only the amount of data they run over shrinks (random weights make the
    numbers meaningless anyway). The notebooks read it through ``BGEKIT_DATA``."""
    import random

    src = ROOT / "data"
    dest = Path(dest)
    if (dest / "corpus.jsonl").is_file():
        return dest
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(src / "source", dest / "source", dirs_exist_ok=True)   # the passages' topics (notebook 02, section 7)
    keep_q: set[str] = set()
    keep_d: set[str] = set()
    for split, n in (("test", n_test), ("train", n_train)):
        lines = (src / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        head, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
        qids = sorted({r[0] for r in rows})[:n]
        kept = [r for r in rows if r[0] in qids]
        keep_q.update(qids)
        keep_d.update(r[1] for r in kept)
        (dest / "qrels" / f"{split}.tsv").write_text("\n".join([head] + ["\t".join(r) for r in kept]) + "\n",
                                                    encoding="utf-8")
    corpus = [json.loads(ln) for ln in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    others = sorted(d["_id"] for d in corpus if d["_id"] not in keep_d)
    keep_d.update(random.Random(seed).sample(others, min(n_extra_docs, len(others))))
    import re

    # passages a notebook names by id (notebook 06's support-check cases) stay in
    named = {m for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")
             for m in re.findall(r'"(p\d{4})"', nb.read_text(encoding="utf-8"))}
    keep_d.update(named & {d["_id"] for d in corpus})
    (dest / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus if d["_id"] in keep_d),
                                       encoding="utf-8")
    queries = [json.loads(ln) for ln in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    (dest / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in keep_q),
                                        encoding="utf-8")
    shutil.copytree(src / "general", dest / "general", dirs_exist_ok=True)
    return dest


# --------------------------------------------------------------------------- the LLM: llama.cpp behind an API key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class KeyedServer:
    base_url: str
    api_key: str = field(repr=False)
    process: subprocess.Popen

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (Linux /proc; 0.0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


@contextlib.contextmanager
def llama_server_with_key(startup_timeout: float = 180.0) -> Iterator[KeyedServer]:
    """Start ``python -m llama_cpp.server`` with the bundled GGUF and a random ``--api_key``; stop it on exit."""
    from bgekit.llm import default_threads, find_local_gguf

    key = "sk-rehearsal-" + secrets.token_hex(8)
    port = _free_port()
    threads = str(default_threads())
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(find_local_gguf()), "--model_alias", OPENAI_MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", threads,
           "--n_threads_batch", threads, "--api_key", key]
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {proc.returncode}")
            req = urllib.request.Request(base + "/models", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not answer at {base} within {startup_timeout:g} s")
            time.sleep(0.3)
        yield KeyedServer(base, key, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------- running notebooks


def rehearsal_env(hf_home: Path, work: Path, *, fp16: bool, server: KeyedServer | None,
                  mode: str = "full", data: Path | None = None) -> dict[str, str]:
    """The environment the notebooks' kernel runs under (``data``: a BEIR folder instead of the course data)."""
    env = dict(os.environ)
    for k in ("NOVITA_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "BGEKIT_EMBEDDER", "BGEKIT_GGUF", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(k, None)
    env.update(BGEKIT_MODE=mode, BGEKIT_REHEARSAL="1", BGEKIT_FORCE_FP16="1" if fp16 else "0", BGEKIT_WORK=str(work),
               HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if server is not None:
        env.update(OPENAI_API_KEY=server.api_key, OPENAI_BASE_URL=server.base_url)
    if data is not None:
        env["BGEKIT_DATA"] = str(data)
    else:
        env.pop("BGEKIT_DATA", None)
    return env


@dataclass
class NotebookRun:
    name: str
    seconds: float
    text: str  # every stream and text/plain output, in order
    cell_seconds: list[tuple[float, str]] = field(default_factory=list)  # (seconds, first line), slowest first
    cpu_seconds: float = 0.0  # CPU time of the notebook's kernel (all threads): a measure that load does not inflate

    @property
    def skips(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.startswith("skipped in rehearsal:")]


def run_notebook(path: Path, env: dict[str, str], cwd: Path, timeout: int = 900) -> NotebookRun:
    """Execute notebook ``path`` in a fresh kernel whose environment is ``env``; raise on the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel is a subprocess: it inherits this environment
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        client.execute()  # starts the kernel, runs every cell, shuts the kernel down (and waits for it)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    parts, timed = [], []
    for cell in nb.cells:
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            from datetime import datetime

            t = (datetime.fromisoformat(ex["shell.execute_reply"].replace("Z", "+00:00"))
                 - datetime.fromisoformat(ex["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()
            timed.append((t, cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"] + "\n")
    return NotebookRun(path.stem, seconds, "".join(parts), sorted(timed, reverse=True), cpu)


def notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still stops the server and the kernels

    ap = argparse.ArgumentParser(description="run the notebooks in full mode with tiny stand-in models")
    ap.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "both"], default="both")
    ap.add_argument("--mode", choices=["full", "small"], default="full",
                    help="small: the 'BGE on a laptop' track (bge-small stand-in)")
    ap.add_argument("--whole-data", action="store_true", help="the whole course collection (slower)")
    args = ap.parse_args(argv)
    chosen = [p for p in notebooks() if not args.only or any(p.name.startswith(o) for o in args.only)]
    dtypes = ["fp32", "fp16"] if args.dtype == "both" else [args.dtype]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bgekit-rehearsal-") as tmp:
        hf = build_hf_cache(Path(tmp) / "hf")
        data = None if args.whole_data else build_data_subset(Path(tmp) / "data")
        with llama_server_with_key() as server:
            for dt in dtypes:
                work = Path(tmp) / f"work-{dt}"
                env = rehearsal_env(hf, work, fp16=dt == "fp16", server=server, mode=args.mode, data=data)
                for nb in chosen:
                    llm_cpu = server.cpu_seconds()
                    try:
                        run = run_notebook(nb, env, SOLUTIONS)
                    except Exception as e:  # noqa: BLE001 - report and go on with the next notebook
                        failed += 1
                        print(f"{dt} {nb.stem}: FAILED\n{str(e)[-3000:]}", flush=True)
                        continue
                    llm_cpu = server.cpu_seconds() - llm_cpu
                    print(f"{dt} {run.name}: {run.seconds:.0f} s wall, {run.cpu_seconds:.0f} s kernel CPU, "
                          f"{llm_cpu:.0f} s LLM server CPU, {len(run.skips)} quality claim(s) skipped", flush=True)
                    for s in run.skips:
                        print("   ", s)
                    for t, first in run.cell_seconds[:3]:
                        print(f"    {t:6.1f} s  {first}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

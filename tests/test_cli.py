"""Tests of the command line ``python -m bgekit`` (run as a real subprocess on a tiny BEIR folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgekit.metrics import evaluate
from bgekit.retrieval import BM25Retriever, DenseRetriever, rrf

REPO = Path(__file__).resolve().parent.parent

DOCS = {
    "p1": ("Yellow leaves", "Tomato leaves yellow from the bottom up when the plant is short of nitrogen."),
    "p2": ("Leggy seedlings", "Seedlings grow tall and thin and fall over when the light is too weak."),
    "p3": ("Cactus watering", "Water a cactus only after the soil has dried out completely."),
    "p4": ("Fungus gnats", "Tiny black flies around houseplants breed in constantly wet potting mix."),
    "p5": ("Pinching basil", "Cut basil just above a pair of leaves to make it bushy."),
    "p6": ("Root rot", "Mushy brown roots and a sour smell mean the pot has stayed waterlogged."),
}
QUERIES = {
    "t1": "my tomato has yellow leaves at the bottom",
    "t2": "seedlings keep flopping over",
    "t3": "when should I water a cactus",
    "t4": "little flies in my houseplant soil",
    "p5": "how do I make basil bushier",  # shares its id with a passage: kept unless asked (ArguAna/Quora only)
}
QRELS = {"t1": {"p1": 2}, "t2": {"p2": 1}, "t3": {"p3": 1, "p6": 1}, "t4": {"p4": 1, "p6": 0}, "p5": {"p1": 1}}


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in DOCS.items()), encoding="utf-8"
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()), encoding="utf-8"
    )
    (root / "qrels").mkdir(exist_ok=True)
    rows = "".join(f"{q}\t{d}\t{r}\n" for q, j in QRELS.items() for d, r in j.items())
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return root


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "BGEKIT_MODE": "small", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bgekit", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )


def parse_tables(stdout: str) -> dict[str, dict[str, float]]:
    """Read every Markdown table printed: {system: {metric@k: value}}."""
    out: dict[str, dict[str, float]] = {}
    header = None
    for line in stdout.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "system":
            header = cells[1:]
        elif header and not cells[0].startswith(":"):
            out.setdefault(cells[0], {}).update({h: float(v) for h, v in zip(header, cells[1:])})
    return out


@pytest.fixture(scope="module")
def offline_model() -> str:
    from bgekit.models import offline_model_path

    return str(offline_model_path())


def test_eval_prints_the_metrics_of_the_runs(tmp_path, offline_model):
    root = write_beir(tmp_path / "tiny beir")  # a space in the path on purpose
    out_json = tmp_path / "res.json"
    proc = run_cli(
        "eval", "--data", str(root), "--model", offline_model, "--k", "1", "3", "10",
        "--methods", "dense,bm25,hybrid", "--output", str(out_json), "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    printed = parse_tables(proc.stdout)
    assert list(printed) == ["dense", "bm25", "hybrid"]

    # reference: the same runs built in this process, scored by bgekit.metrics.evaluate
    from bgekit.embedder import Embedder

    corpus = {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}
    enc = Embedder(offline_model, device="cpu", show_progress=False)
    dense = DenseRetriever(enc, corpus).run(QUERIES, k=100)
    bm25 = BM25Retriever(corpus).run(QUERIES, k=100)
    assert all("p5" in hits for hits in (dense["p5"], bm25["p5"]))  # the identical id is kept by default
    ks = (1, 3, 10)
    expect = {
        "dense": evaluate({q: dict(list(h.items())[:10]) for q, h in dense.items()}, QRELS, ks=ks),
        "bm25": evaluate(bm25, QRELS, ks=ks),
        "hybrid": evaluate(rrf([dense, bm25], k_rrf=60, top_k=10), QRELS, ks=ks),
    }
    saved = json.loads(out_json.read_text())["results"]
    for method, table in expect.items():
        assert set(printed[method]) == set(table) == set(saved[method])  # 5 metrics x 3 cut-offs
        for key, val in table.items():
            assert printed[method][key] == pytest.approx(val, abs=5e-5), (method, key)  # printed with 4 digits
            assert saved[method][key] == pytest.approx(val, abs=1e-12), (method, key)


def test_eval_identical_ids_kept_unless_asked_and_a_dropped_relevant_hit_is_reported(tmp_path):
    # query "1" is judged relevant to doc "1": separate namespaces, so the hit must count
    docs = {"1": ("Watering cacti", "Water a cactus every two to three weeks, only when the soil is dry."),
            "2": ("Pruning roses", "Cut rose stems back by a third in early spring."),
            "3": ("Basil", "Pinch basil tips so the plant branches.")}
    root = tmp_path / "cactus"
    root.mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in docs.items()), encoding="utf-8")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "how often should I water my cactus"}) + "\n",
                                        encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t1\t1\n", encoding="utf-8")
    args = ("eval", "--data", str(root), "--methods", "bm25", "--k", "10", "--metrics", "recall")
    kept = run_cli(*args)
    assert kept.returncode == 0, kept.stderr
    assert parse_tables(kept.stdout) == {"bm25": {"recall@10": 1.0}}
    assert "relevant" not in kept.stderr
    dropped = run_cli(*args, "--ignore-identical-ids")
    assert dropped.returncode == 0, dropped.stderr
    assert parse_tables(dropped.stdout) == {"bm25": {"recall@10": 0.0}}
    assert "dropped doc '1' from the hits of query '1'" in dropped.stderr and "relevant" in dropped.stderr
    both = run_cli(*args, "--ignore-identical-ids", "--keep-identical-ids")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_eval_bm25_only_needs_no_model_and_bad_input_is_reported(tmp_path):
    root = write_beir(tmp_path / "tiny")
    proc = run_cli("eval", "--data", str(root), "--methods", "bm25", "--k", "5", "--metrics", "recall,mrr")
    assert proc.returncode == 0, proc.stderr
    printed = parse_tables(proc.stdout)
    corpus = {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}
    ref = evaluate(BM25Retriever(corpus).run(QUERIES, k=5), QRELS, ks=(5,), metrics=("recall", "mrr"))
    assert printed == {"bm25": pytest.approx(ref, abs=5e-5)}

    missing = run_cli("eval", "--data", str(tmp_path / "nowhere"), "--methods", "bm25")
    assert missing.returncode == 1 and "nowhere" in missing.stderr and "not found" in missing.stderr
    bad_split = run_cli("eval", "--data", str(root), "--methods", "bm25", "--split", "dev")
    assert bad_split.returncode == 1 and "dev" in bad_split.stderr and "test" in bad_split.stderr
    bad_k = run_cli("eval", "--data", str(root), "--methods", "bm25", "--k", "0")
    assert bad_k.returncode == 2 and "--k" in bad_k.stderr
    bad_method = run_cli("eval", "--data", str(root), "--methods", "splade")
    assert bad_method.returncode == 1 and "splade" in bad_method.stderr


def test_help_documents_beir_and_mteb_figures():
    proc = run_cli("eval", "--help")
    assert proc.returncode == 0
    assert "BEIR" in proc.stdout and "scifact" in proc.stdout and "0.746" in proc.stdout and "0.645" in proc.stdout
    top = run_cli("--help")
    assert "demo" in top.stdout and "eval" in top.stdout
    from bgekit.__main__ import main

    assert main([]) == 2  # no command: prints help


def test_forwarded_commands_reach_their_module(capsys):
    import importlib.util

    from bgekit.__main__ import FORWARDED, main

    present = {cmd: mod for cmd, mod in FORWARDED.items() if importlib.util.find_spec(mod) is not None}
    if not present:
        pytest.skip("no forwarded module (bgekit.mine / bgekit.train) in this checkout")
    argv = list(sys.argv)
    for cmd, _mod in present.items():
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage:"), (cmd, out[:200])  # the module's own argparse help
        assert sys.argv == argv  # restored


def test_demo_on_a_tiny_folder(tmp_path, offline_model):
    root = write_beir(tmp_path / "tiny")
    proc = run_cli("demo", "--data", str(root), "--model", offline_model, "-q", "flies in my plant pot", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Q: flies in my plant pot" in proc.stdout
    assert "1. [" in proc.stdout and "p4:" in proc.stdout  # the fungus-gnat passage is shown
    table = parse_tables(proc.stdout)
    assert list(table) == ["dense", "bm25", "hybrid"]
    assert all(set(row) == {"ndcg@10", "recall@100", "mrr@10"} for row in table.values())

"""The full-mode rehearsal in CI: every notebook of notebooks/solutions/ runs in full mode on a CPU with tiny random
stand-ins under the hub ids full mode loads, and the real llama.cpp server behind an API key (see tests/rehearsal.py).

* every notebook, in order, in one work folder (04 writes the mined file 05 trains on, 02 the embedding cache 03
  and 06 read): in fp32, except ``FP16_NOTEBOOKS``, the notebooks whose checks compare numbers the dtype moves,
  which run with fp16 forced on the CPU (``BGEKIT_FORCE_FP16=1``, standing in for a GPU's numerics: a GPU is
  where full mode runs); their fp32 code is the same code in another dtype, run by the small-mode notebooks;
* the "BGE on a laptop" track: small mode with ``BAAI/bge-small-en-v1.5`` in the cache (a stand-in), notebook 01.

The collection is cut down (tests/rehearsal.py: build_data_subset; 30 test and 130 train queries, the passages
judged for them and 80 others) so that the rehearsal fits CI: the code paths are full mode's, the amounts smaller.
No failure is allowed; quality claims random weights cannot meet are printed as ``skipped in rehearsal: ...`` by
:func:`bgekit.config.quality_claim`, and each one must name its claim.
"""
from __future__ import annotations

import pytest
import rehearsal

ALL = [p.stem for p in rehearsal.notebooks()]
# fp16 where a check compares numbers across dtypes or batch layouts: 03 (reranker scores, the exercise's tolerance)
# and 04 (mining scores, the margin and reranker guards); 01, 02, 05 and 06 run the same encoder code in fp32
FP16_NOTEBOOKS = ["03_reranking", "04_hard_negative_mining"]
LAPTOP_NOTEBOOKS = ["01_embeddings"]
RUNS = [("fp16" if nb in FP16_NOTEBOOKS else "fp32", nb) for nb in ALL] + [("laptop", nb) for nb in LAPTOP_NOTEBOOKS]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return rehearsal.build_hf_cache(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def data_subset(tmp_path_factory):
    return rehearsal.build_data_subset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def llm_server():
    with rehearsal.llama_server_with_key() as server:
        yield server


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory):
    full = tmp_path_factory.mktemp("work-full")   # one chain: 03 and 04 (fp16) hand their files on to 05 (fp32)
    return {"fp32": full, "fp16": full, "laptop": tmp_path_factory.mktemp("work-laptop")}


@pytest.mark.parametrize("kind, name", RUNS, ids=[f"{k}-{n}" for k, n in RUNS])
def test_notebook_in_full_mode(kind, name, hf_home, data_subset, llm_server, work_dirs, record_property):
    path = rehearsal.SOLUTIONS / f"{name}.ipynb"
    env = rehearsal.rehearsal_env(hf_home, work_dirs[kind], fp16=kind == "fp16", server=llm_server,
                                  mode="small" if kind == "laptop" else "full", data=data_subset)
    llm_cpu = llm_server.cpu_seconds()
    run = rehearsal.run_notebook(path, env, rehearsal.SOLUTIONS)
    llm_cpu = llm_server.cpu_seconds() - llm_cpu
    record_property("seconds", round(run.seconds, 1))
    print(f"rehearsal {kind} {name}: {run.seconds:.0f} s wall, {run.cpu_seconds:.0f} s kernel CPU, {llm_cpu:.0f} s "
          "LLM CPU; slowest cells: "
          + "; ".join(f"{t:.0f} s {first!r}" for t, first in run.cell_seconds[:3]))
    for line in run.skips:
        print("   ", line)
        assert "(random stand-in weights cannot meet it" in line
    if kind == "laptop":
        assert "embedder: BAAI/bge-small-en-v1.5 (BGE on a laptop" in run.text
        assert "| mode: small (BGEKIT_MODE=small)" in run.text
    else:
        assert "| mode: full (BGEKIT_MODE=full)" in run.text
        assert "embedder: BAAI/bge-large-en-v1.5 (full mode)" in run.text
    if kind == "fp16":
        assert "rehearsal: BGEKIT_REHEARSAL=1 BGEKIT_FORCE_FP16=1 (models load in float16)" in run.text
    if name.startswith("06"):
        assert "LLMClient(provider='openai', base_url='http://127.0.0.1:" in run.text   # the API path, with a key


def test_notebook_06_without_a_key_or_a_local_model_skips_clearly(tmp_path, hf_home, data_subset, work_dirs):
    """No API key and no local model (the llama.cpp model file is missing): section 1 says how to add a key (Colab
    Secrets, the environment) and how to run offline, and every later cell that needs an LLM says it is skipped;
    the notebook runs to the end (it used to stop with a LocalServerError, then fail cell after cell).

    Full mode, in the work folder of the chain above (its embeddings are cached there), so this run costs little
    beyond the notebook's own cells; the LLM-free paths it checks are the same in both modes."""
    env = rehearsal.rehearsal_env(hf_home, work_dirs["fp32"], fp16=False, server=None, mode="full",
                                  data=data_subset)
    env["BGEKIT_GGUF"] = str(tmp_path / "missing.gguf")
    run = rehearsal.run_notebook(rehearsal.SOLUTIONS / "06_llm_integration.ipynb", env, rehearsal.SOLUTIONS)
    assert "No LLM: no API key is set, and the local model cannot start" in run.text
    assert "Secrets panel" in run.text and "NOVITA_API_KEY" in run.text and "[offline]" in run.text
    skipped = [line for line in run.text.splitlines() if line.startswith("skipped (")]
    source = (rehearsal.SOLUTIONS.parent / "06_llm_integration.py").read_text(encoding="utf-8")
    assert len(skipped) == source.count("if llm_ready(") >= 9, skipped   # every cell that needs an LLM says so
    assert "exercise 'catch an on-topic but wrong answer': correct" in run.text   # needs no LLM

"""Local LLM server threads: seconds per RAG answer with 1, 2, ... llama.cpp threads.

The course's local server (``bgekit.llm.local_server``, SmolLM2-135M through llama.cpp) answers RAG prompts in
notebook 06 and in the tests. This times ``bgekit.rag.answer`` on the first test questions (four passages in the
prompt, a new prompt each time, so the server reads every prompt in full) and, for comparison, the same prompt
sent again (llama.cpp reuses the cached prompt: only generation is timed then).

    python bench/llm_threads.py                  # 1 and 2 threads, 3 questions, 96 tokens per answer
    python bench/llm_threads.py --threads 1 2 4 --questions 5
"""
from __future__ import annotations

import argparse
import time

from bgekit import Embedder, rag
from bgekit.data import course_data_dir, load_beir
from bgekit.llm import local_server
from bgekit.retrieval import DenseRetriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    a = ap.parse_args()
    data = load_beir(course_data_dir(), split="test")
    enc = Embedder()
    retriever = DenseRetriever(enc, data.corpus, show_progress=False)
    qids = sorted(data.queries)[: a.questions]
    for threads in a.threads:
        with local_server(n_ctx=2048, n_threads=threads) as llm:
            llm.chat("hi", max_tokens=4)   # load the model
            t = time.perf_counter()
            for q in qids:
                res = rag.answer(data.queries[q], retriever, llm, k=20, top_n=4, max_tokens=a.max_tokens)
            new = (time.perf_counter() - t) / len(qids)
            t = time.perf_counter()
            for _ in qids:
                llm.chat(res.prompt, system=res.system, max_tokens=a.max_tokens)
            cached = (time.perf_counter() - t) / len(qids)
        print(f"{threads} thread(s): {new:.2f} s per RAG answer (new prompts), {cached:.2f} s with the prompt cached")


if __name__ == "__main__":
    main()

"""sentence-transformers' inference backends, run in their own environment (called by ``bench/encode.py --st-python``).

sentence-transformers' ONNX and OpenVINO backends need Optimum (``sentence-transformers[onnx,openvino]``), whose
current releases pin ``transformers<4.58`` (optimum-onnx) or pull a CUDA torch (optimum-intel); bgekit stays on
transformers 5. So ``bench/encode.py`` runs this script with the Python of a second virtual environment, in the
same run, on the same model folder and texts, and reads back docs/s and the vectors (for nDCG@10 and cosines)::

    python3 -m venv ../stenv && ../stenv/bin/pip install torch==2.13.0 "sentence-transformers[onnx,openvino]"
    python bench/encode.py --course --backends torch,onnx,onnx-int8 --st-python ../stenv/bin/python

Each backend: load (the ONNX / OpenVINO export happens here, untimed), one warm-up, then ``--rounds`` timed
``encode`` calls of all texts; the best time is reported. int8 for ONNX is sentence-transformers'
``export_dynamic_quantized_onnx_model(..., "avx2")`` (this CPU has AVX2, no VNNI); int8 for OpenVINO is
``export_static_quantized_openvino_model``, whose calibration set comes from the Hugging Face hub by default
(``glue/sst2``): offline it is reported as skipped, with the reason.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def load(backend: str, folder: Path, work: Path):
    from sentence_transformers import SentenceTransformer

    kind, _, quant = backend.partition("-")
    if kind == "torch":
        return SentenceTransformer(str(folder), device="cpu")
    if not quant:
        return SentenceTransformer(str(folder), device="cpu", backend=kind)
    copy = work / f"{kind}-int8"
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    base = SentenceTransformer(str(copy), device="cpu", backend=kind)
    if kind == "onnx":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(base, "avx2", str(copy))
        (q8,) = (copy / "onnx").glob("model_*int8_avx2.onnx")   # model_quint8_avx2.onnx in sentence-transformers 5
        return SentenceTransformer(str(copy), device="cpu", backend="onnx",
                                   model_kwargs={"file_name": f"onnx/{q8.name}"})
    from sentence_transformers import export_static_quantized_openvino_model

    export_static_quantized_openvino_model(base, None, str(copy))
    return SentenceTransformer(str(copy), device="cpu", backend="openvino",
                               model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a sentence-transformers model folder")
    ap.add_argument("--inputs", required=True, help='JSON {"texts": [...], "queries": [...]}')
    ap.add_argument("--out", required=True, help="folder for results.json and the vectors (.npy)")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino,openvino-int8")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-seq-length", type=int, default=None)
    args = ap.parse_args()
    import sentence_transformers
    import torch
    import transformers

    torch.set_grad_enabled(False)
    inputs = json.loads(Path(args.inputs).read_text(encoding="utf-8"))
    texts, queries = inputs["texts"], inputs.get("queries", [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"versions": {"sentence-transformers": sentence_transformers.__version__,
                                  "transformers": transformers.__version__, "torch": torch.__version__},
                     "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            try:
                model = load(backend, Path(args.model), Path(tmp))
                if args.max_seq_length:
                    model.max_seq_length = args.max_seq_length
                kw = dict(batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)
                model.encode(texts[:64], **kw)   # warm-up
                times, vecs = [], None
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    vecs = model.encode(texts, **kw)
                    times.append(time.perf_counter() - t)
                np.save(out / f"{backend}-docs.npy", np.asarray(vecs, dtype=np.float32))
                if queries:
                    np.save(out / f"{backend}-queries.npy",
                            np.asarray(model.encode(queries, prompt_name="query" if "query" in model.prompts else None,
                                                    **kw), dtype=np.float32))
                results["backends"][backend] = {"seconds": times}
            except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                results["backends"][backend] = {"skipped": f"{type(e).__name__}: {str(e)[:300]}",
                                                "trace": traceback.format_exc()[-1500:]}
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

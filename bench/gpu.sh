#!/usr/bin/env bash
# The GPU checks of issues 15 and 16 in one run (a few minutes on an H100/H200), from the repository root:
#
#   1. encoding throughput of a bge-large-shaped model (BERT-large, random weights) in fp16 at 256 tokens, bgekit
#      against sentence-transformers, and the share of the GPU's peak each reaches (bench/encode.py --gpu-bert-large);
#   2. fine-tuning through transformers.Trainer with DeepSpeed ZeRO stage 0 and stage 1 in fp16
#      (bench/deepspeed/stage*.json, FlagEmbedding's example settings), against plain fp16 on the same data and seed:
#      `python -m bgekit.train --deepspeed ...` under torchrun, then each saved folder loaded by bgekit.
#
#   bash bench/gpu.sh OUT MODEL TRAIN_JSONL [TOKENIZER] [PEAK_TFLOPS]
#
# MODEL: an embedder folder or hub id to fine-tune; TRAIN_JSONL: FlagEmbedding rows ({query, pos, neg});
# TOKENIZER: a BERT WordPiece tokenizer folder for the bge-large-shaped model (default: the bundled MiniLM's);
# PEAK_TFLOPS: the datasheet dense fp16 tensor peak (989 for an H100/H200 SXM). Needs `pip install deepspeed`.
set -uo pipefail
out=${1:?OUT}; model=${2:?MODEL}; data=${3:?TRAIN_JSONL}; tok=${4:-}; peak=${5:-989}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, transformers, sentence_transformers, deepspeed; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| sentence-transformers', sentence_transformers.__version__, \
'| deepspeed', deepspeed.__version__)" 2>&1 | tee -a "$out/gpu.txt"

python bench/encode.py --gpu-bert-large --n 4096 --batch-size 128 --rounds 3 --peak-tflops "$peak" \
    ${tok:+--tokenizer "$tok"} 2>&1 | tee "$out/encode.txt"

for run in plain stage0 stage1; do
    ds=()
    [ "$run" != plain ] && ds=(--deepspeed "bench/deepspeed/$run.json")
    SECONDS=0
    torchrun --nproc_per_node 1 -m bgekit.train --output_dir "/tmp/bgekit-gpu-$run" --model_name_or_path "$model" \
        --train_data "$data" --fp16 --per_device_train_batch_size 32 --train_group_size 8 --query_max_len 32 \
        --passage_max_len 128 --learning_rate 1e-4 --warmup_ratio 0.1 --max_steps 40 --logging_steps 10 \
        --temperature 0.02 --seed 0 --report_to none --dataloader_drop_last True --save_strategy no \
        "${ds[@]}" > "$out/train-$run.txt" 2>&1
    echo "$run: exit $? in ${SECONDS} s (start-up included)" | tee -a "$out/train.txt"
done

python - "$out" <<'PY' 2>&1 | tee -a "$out/train.txt"
import json, sys
import numpy as np
from bgekit import Embedder
texts = ["why are the lower leaves of my tomato yellow", "how often should a cactus be watered in winter"]
vecs = {}
for run in ("plain", "stage0", "stage1"):
    try:
        state = json.load(open(f"/tmp/bgekit-gpu-{run}/trainer_state.json"))
    except OSError as e:
        print(f"{run}: no trainer_state.json ({e})"); continue
    losses = [round(h["loss"], 4) for h in state["log_history"] if "loss" in h]
    vecs[run] = Embedder(f"/tmp/bgekit-gpu-{run}", device="cuda").encode(texts)
    print(f"{run}: losses every 10 steps {losses}; vectors finite {bool(np.isfinite(vecs[run]).all())}")
for run in ("stage0", "stage1"):
    if run in vecs and "plain" in vecs:
        print(f"{run} vs plain fp16: min cosine of the two test vectors {float((vecs[run] * vecs['plain']).sum(1).min()):.4f}")
PY

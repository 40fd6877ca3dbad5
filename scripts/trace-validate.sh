#!/usr/bin/env bash
# Regenerate validation/trace: Llama 3.2 3B traced through the real transformers forward
# (--device trace: fake tensors, every storage's allocation and free counted; no GPU needed),
# then compare every point with the estimator. Resumable: rerun to finish an interrupted sweep.
#   bash scripts/trace-validate.sh [OUT_DIR]        (default validation/trace; ~20-40 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-validation/trace}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
R="$OUT/sweep.jsonl"
sweep() { "$PY" -m runtime sweep --model llama-3.2-3b --device trace --isolation in-process --out "$R" "$@"; }

# every quant the runtime loads on a GPU, 1K-128K windows, batch 1, plus batch 4 at 8K
sweep --quants bf16,fp16,int8,nf4,nf4-dq,fp4 --contexts 1K,4K,8K,16K,32K,64K,128K --batches 1 --extra 8K:4
# windows where a K/V tensor's 2 MiB round-up leaves <= 1 MiB (prompts 5,632 and 7,680)
sweep --quants bf16 --contexts 5664,7712 --batches 1
# eager attention: bf16 (softmax copy) and fp16 (CUDA's fused half_to_float softmax, no copy)
sweep --quants bf16 --attn eager --contexts 1K,4K,8K --batches 1 --extra 2K:2
sweep --quants fp16 --attn eager --contexts 1K,2K,8K --batches 1
# 4-bit with fp32 compute (transformers' own bnb_4bit_compute_dtype default)
sweep --quants nf4 --bnb-compute-dtype fp32 --contexts 1K,8K,32K --batches 1
# chunked prefill
sweep --quants bf16,int8,nf4 --prefill-chunk 2048 --contexts 4K,8K --batches 1,2
# full logits with the fp32 copy
sweep --quants bf16 --logits full-fp32 --contexts 2K,4K --batches 1,2

"$PY" -m runtime validate --results "$R" --out-dir "$OUT" --quiet
echo "wrote $R, $OUT/validation.md, $OUT/validation.json"

#!/usr/bin/env bash
# The training proof grid, traced (fake tensors, no GPU): Llama 3.2 3B LoRA r=16 all-linear and
# QLoRA (NF4 base, prepare_model_for_kbit_training) at 512, 2K and 8K tokens with and without
# gradient checkpointing, full fine-tuning with AdamW at 512 and 2K; then the Trainer's bf16=True
# (--mixed-precision bf16: autocast around the forward): LoRA and QLoRA at 2K and 8K with and
# without checkpointing, full fine-tuning with fp32 master weights at 512 and 2K; packed rows.
# Appends to validation/training/trace.jsonl (one JSON line per point);
# on the trace device also LoRA and QLoRA at 8K with Liger's fused linear cross-entropy (--loss liger) to validation/training/liger.jsonl;
# `python -m estimator train --compare validation/training/trace.jsonl` compares it.
#   bash validation/training/grid.sh [OUT.jsonl] [--device trace|cuda]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-validation/training/trace.jsonl}"
DEVICE="${2:-trace}"
PY="${PYTHON:-.venv/bin/python}"
run() { "$PY" -m runtime train-measure --device "$DEVICE" --out "$OUT" --json "$@" >/dev/null; }
for method in lora qlora; do
  for gc in off non-reentrant; do
    for t in 512 2048 8192; do
      run --method "$method" --rank 16 --targets all-linear --seq-len "$t" --grad-checkpointing "$gc"
    done
  done
done
for t in 512 2048; do
  run --method full --optimizer adamw --seq-len "$t"
done
for method in lora qlora; do
  for gc in off non-reentrant; do
    for t in 2048 8192; do
      run --method "$method" --rank 16 --targets all-linear --seq-len "$t" --grad-checkpointing "$gc" --mixed-precision bf16
    done
  done
done
for t in 512 2048; do
  run --method full --quant fp32 --optimizer adamw --seq-len "$t" --mixed-precision bf16
done
# packed (padding-free) batches: 4 sequences of 2K in one row, SDPA and flash_attention_2, and the
# unpacked micro-batch they replace
run --method lora --rank 16 --targets all-linear --seq-len 2048 --micro-batch 4
for impl in sdpa flash_attention_2; do
  run --method lora --rank 16 --targets all-linear --seq-len 2048 --micro-batch 4 --packed --attn-implementation "$impl"
done
for impl in sdpa flash_attention_2; do
  run --method lora --rank 16 --targets all-linear --seq-len 2048 --micro-batch 4 --packed --attn-implementation "$impl" \
    --grad-checkpointing non-reentrant
done
for gc in off non-reentrant; do
  run --method qlora --rank 16 --targets all-linear --seq-len 2048 --micro-batch 4 --packed --grad-checkpointing "$gc"
done
if [ "$DEVICE" = trace ]; then
  for method in lora qlora; do
    for gc in off non-reentrant; do
      "$PY" -m runtime train-measure --device trace --out "${LIGER_OUT:-validation/training/liger.jsonl}" --json \
        --method "$method" --rank 16 --targets all-linear --seq-len 8192 --grad-checkpointing "$gc" --loss liger >/dev/null
    done
  done
fi

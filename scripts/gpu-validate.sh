#!/usr/bin/env bash
# Validate the estimator against real GPU memory: Llama 3.2 3B (random weights), one CUDA GPU.
#
#   scripts/gpu-validate.sh OUT_DIR [--device cuda|cpu] [--reduced] [--budget-s SECONDS]
#                           [--train-budget-s SECONDS] [--bnb-wheels DIR]
#
# Grid (cuda): bf16, fp16, int8, nf4, nf4-dq, fp4 x 1K, 4K, 8K, 16K, 32K, 64K, 128K at batch 1,
# plus batch 4 at 8K, plus bf16 SDPA at 5,664 and 7,712 (batch 1, run first); 32 new tokens.
# One subprocess per quant (model loaded once; cache emptied and peak stats reset between points,
# contexts ascending); an OOM point is recorded and the sweep goes on. Writes OUT_DIR/sweep.jsonl (one line per point, flushed as it finishes),
# OUT_DIR/validation.md + validation.json, OUT_DIR/environment.txt and OUT_DIR/progress.log.
# Re-running with the same OUT_DIR resumes and skips finished points.
#
# Budget: --budget-s (default 480 s, for a 9-minute slot) covers the sweep and the training
# grid; setup time counts against it. --train-budget-s (default 150 s when peft is installed) is
# kept out of the sweep's share for the training grid (section 6), so a long sweep cannot starve it. No network is needed: bitsandbytes is installed from a wheel folder (--bnb-wheels,
# $BNB_WHEEL_DIR, ./.whl or ./shared/wheels) when it is missing. Random quantized loads read a
# bf16 checkpoint saved once to $LLM_VRAM_CHECKPOINTS (default /tmp/llm-vram-checkpoints),
# never to OUT_DIR.
#
# CPU rehearsal (same code path, narrow 2-layer model, reduced grid):
#   scripts/gpu-validate.sh /tmp/rehearsal --device cpu --reduced
set -euo pipefail

START=$(date +%s)
OUT=""; DEVICE=cuda; REDUCED=0; BUDGET=480; TRAIN_BUDGET=""; WHEELS="${BNB_WHEEL_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --reduced) REDUCED=1; shift ;;
    --budget-s) BUDGET="$2"; shift 2 ;;
    --train-budget-s) TRAIN_BUDGET="$2"; shift 2 ;;
    --bnb-wheels) WHEELS="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
[ -z "$TRAIN_BUDGET" ] || [[ "$TRAIN_BUDGET" =~ ^[0-9]+$ ]] \
  || { echo "error: --train-budget-s must be a whole number of seconds: $TRAIN_BUDGET" >&2; exit 2; }
[ -n "$OUT" ] || { echo "error: OUT_DIR is required (scripts/gpu-validate.sh OUT_DIR)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
export LLM_VRAM_CHECKPOINTS="${LLM_VRAM_CHECKPOINTS:-/tmp/llm-vram-checkpoints}"
log() { echo "[gpu-validate $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/progress.log" >&2; }

# 1. Dependencies: only bitsandbytes is expected to be missing on the GPU image.
if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then
  for d in "$WHEELS" ./.whl ./shared/wheels; do
    if [ -n "$d" ] && ls "$d"/bitsandbytes-*.whl >/dev/null 2>&1; then
      log "installing bitsandbytes from $d"
      "$PY" -m pip install -q --no-deps --no-index --find-links "$d" bitsandbytes
      break
    fi
  done
fi
MISSING=$("$PY" - <<'PY'
import importlib.util
mods = ["torch", "transformers", "accelerate", "safetensors", "psutil", "pynvml", "bitsandbytes"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$MISSING" ]; then
  log "missing: $MISSING; trying pip (needs a package index)"
  PKGS=$(echo "$MISSING" | sed 's/pynvml/nvidia-ml-py/')
  "$PY" -m pip install -q $PKGS || { log "could not install: $MISSING"; [[ "$MISSING" == *bitsandbytes* ]] && log "bnb quants will record status=error"; }
fi

# 2. Environment record.
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import json, sys, runtime.measure as m; print(json.dumps(m.environment(sys.argv[1]), indent=1))' "$DEVICE"
} > "$OUT/environment.txt" 2>&1 || true
log "environment: $(tr '\n' ' ' < "$OUT/environment.txt" | cut -c1-300)"

# 3. Grid.
QUANTS=bf16,nf4,int8,fp16,nf4-dq,fp4   # most-used first, so a cut-short run still covers them
if [ "$REDUCED" = 1 ]; then
  MODEL="$OUT/narrow-model"
  mkdir -p "$MODEL"
  "$PY" - "$MODEL/config.json" <<'PY'
import json, sys
from estimator.model import preset_config
d = preset_config("llama-3.2-3b")  # the Llama 3.2 layout, narrowed: 2 layers, hidden 256
d.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=64, vocab_size=1024, bos_token_id=None, eos_token_id=None)
json.dump(d, open(sys.argv[1], "w"), indent=1)
PY
  CONTEXTS=64,128,256,512; EXTRA=128:4; NEW=4
else
  MODEL=llama-3.2-3b; CONTEXTS=1K,4K,8K,16K,32K,64K,128K; EXTRA=8K:4; NEW=32
fi

# 4. The random bf16 checkpoint that quantized loads read (saved once; seconds on a GPU).
if [ "$DEVICE" = cuda ] || [ "$REDUCED" = 1 ]; then
  log "random checkpoint for $MODEL -> $LLM_VRAM_CHECKPOINTS"
  "$PY" -c 'import sys; from runtime.load import random_checkpoint, config_dict, quiet; quiet(); print(random_checkpoint(config_dict(sys.argv[1]), sys.argv[2]))' \
    "$MODEL" "$DEVICE" >> "$OUT/progress.log" 2>&1 \
    || log "checkpoint creation failed; bnb points will record status=error"
fi

# 5. Sweeps within what is left of the budget, then the report. Arguments reach Python as argv,
#    never pasted into source.
left() { local l=$(( BUDGET - ( $(date +%s) - START ) - 20 )); [ "$l" -gt 30 ] && echo "$l" || echo 30; }
# the training grid's reserve (section 6): only where it runs (peft installed)
HAS_PEFT=0; "$PY" -c 'import peft' >/dev/null 2>&1 && HAS_PEFT=1
if [ -z "$TRAIN_BUDGET" ]; then
  TRAIN_BUDGET=0; [ "$HAS_PEFT" = 1 ] && TRAIN_BUDGET=150
fi
sweep_left() { local l=$(( $(left) - TRAIN_BUDGET )); [ "$l" -gt 30 ] && echo "$l" || echo 30; }
sweep() {
  "$PY" -m runtime sweep --device "$DEVICE" --model "$MODEL" --new-tokens "$NEW" --isolation shared-process \
    --out "$OUT/sweep.jsonl" "$@" 2>&1 | tee -a "$OUT/progress.log" >&2 || log "sweep exited non-zero"
}
# bf16 SDPA windows where a K/V tensor's 2 MiB round-up leaves <= 1 MiB (prompts 5,632 and 7,680
# with 32 new tokens; as in scripts/trace-validate.sh): the GPU settles how the caching allocator
# places the growing K/V. Two points and one bf16 load, capped at 120 s so the grid keeps its time.
KV_CONTEXTS=5664,7712
KV_BUDGET=$(sweep_left); [ "$KV_BUDGET" -lt 120 ] || KV_BUDGET=120
log "sweep: bf16 sdpa x $KV_CONTEXTS on $DEVICE, budget ${KV_BUDGET}s"
sweep --quants bf16 --attn sdpa --contexts "$KV_CONTEXTS" --batches 1 --budget-s "$KV_BUDGET"
LEFT=$(sweep_left)
log "sweep: $QUANTS x $CONTEXTS (+$EXTRA) on $DEVICE, budget ${LEFT}s"
sweep --quants "$QUANTS" --contexts "$CONTEXTS" --batches 1 --extra "$EXTRA" --budget-s "$LEFT"
log "validation report"
"$PY" -m runtime validate --results "$OUT/sweep.jsonl" --out-dir "$OUT" --quiet 2>&1 | tee -a "$OUT/progress.log" >&2 \
  || log "validate failed"
[ -f "$OUT/validation.md" ] && sed -n '1,20p' "$OUT/validation.md" >&2
log "done: $(wc -l < "$OUT/sweep.jsonl" 2>/dev/null || echo 0) points in $OUT/sweep.jsonl"

# 6. Training (issue 13, docs/training.md): one real training step per point
#    (python -m runtime train-measure: forward, backward, optimizer), then the estimate vs the
#    torch/NVML counters in OUT_DIR/training.md. On cuda the Llama 3.2 3B points below; the CPU
#    rehearsal (--device cpu --reduced) runs two points of the narrow model on the CPU to exercise
#    the same path (its activations follow the CPU kernels: the report's numbers are not a check).
#    Needs peft (the runtime extra); each point is capped by what is left of the budget.
if [ "$HAS_PEFT" = 1 ] && { [ "$DEVICE" = cuda ] || [ "$REDUCED" = 1 ]; }; then
  if [ "$DEVICE" = cuda ]; then
    # method seq-len checkpointing mixed-precision quant (the Trainer's bf16=True points last)
    POINTS=("lora 512 off off bf16" "lora 2048 off off bf16" "lora 2048 non-reentrant off bf16"
      "qlora 512 non-reentrant off nf4" "full 512 off off bf16" "qlora 2048 non-reentrant bf16 nf4"
      "lora 2048 off bf16 bf16" "full 512 off bf16 fp32")
  else
    POINTS=("lora 64 off off bf16" "full 64 non-reentrant off bf16")
  fi
  for pt in "${POINTS[@]}"; do
    set -- $pt
    L=$(left)
    [ "$L" -gt 40 ] || { log "training: out of budget before '$pt'"; break; }
    log "training: $pt on $DEVICE (cap ${L}s)"
    timeout "$L" "$PY" -m runtime train-measure --device "$DEVICE" --model "$MODEL" --method "$1" --seq-len "$2" \
      --grad-checkpointing "$3" --mixed-precision "$4" --quant "$5" \
      --out "$OUT/training.jsonl" --json >/dev/null 2>>"$OUT/progress.log" \
      || log "training point '$pt' exited non-zero"
  done
  if [ -f "$OUT/training.jsonl" ]; then
    "$PY" validation/training/report.py "$OUT/training.jsonl" "$OUT/training.md" 2>&1 | tee -a "$OUT/progress.log" >&2 \
      || log "training report failed"
  fi
elif [ "$DEVICE" = cuda ]; then
  log "training: peft is not installed; training grid skipped"
fi

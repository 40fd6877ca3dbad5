"""Speed targets of the training estimator (issue 13): run `python benchmarks/bench_training.py`.

- one estimate_training() call: under 1 ms (a fresh sequence length each call: the saved
  activations are recomputed; the static parts are cached per method, optimizer and adapters);
- a 64-point sweep (sequence lengths 128 to 131,072 x LoRA / QLoRA / full, and micro-batches):
  under 50 ms.
Prints the median (and the best) of repeated runs and exits 1 if a median misses its target.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.training import estimate_train_settings, make_train_settings  # noqa: E402

ESTIMATE_TARGET_MS = 1.0
SWEEP_TARGET_MS = 50.0


def bench_estimate(n: int = 500, start: int = 0) -> float:
    s = make_train_settings("llama-3.2-3b", method="lora", gpu="rtx-4090-24gb")
    settings = [replace(s, seq_len=512 + start + 7 * i) for i in range(n)]
    estimate_train_settings(replace(s, seq_len=100))  # static parts cached
    t = time.perf_counter()
    for x in settings:
        estimate_train_settings(x)
    return (time.perf_counter() - t) / n * 1e3


def _grid(k: int) -> list:
    base = make_train_settings("llama-3.2-3b", method="lora", gpu="h100-sxm-80gb")
    methods = [base, replace(base, method="qlora", quant="nf4"), replace(base, method="full")]
    pts = []
    for i in range(64):  # 64 points: 16 sequence lengths x (3 methods + a micro-batch of 2)
        s = methods[i % 3] if i % 4 < 3 else replace(base, micro_batch=2)
        pts.append(replace(s, seq_len=128 * (1 + (i // 4) * 64) + k))
    return pts


def bench_sweep(k: int) -> float:
    pts = _grid(k)
    t = time.perf_counter()
    for s in pts:
        estimate_train_settings(s)
    return (time.perf_counter() - t) * 1e3


def main() -> int:
    ests = [bench_estimate(start=5000 * i) for i in range(7)]
    swps = [bench_sweep(k) for k in range(1, 32)]  # each run new sequence lengths: nothing cached
    est, swp = statistics.median(ests), statistics.median(swps)
    print(
        f"estimate_training(): median {est:.3f} ms per call, best {min(ests):.3f} ms (target < {ESTIMATE_TARGET_MS} ms)"
    )
    print(f"64-point sweep: median {swp:.1f} ms, best {min(swps):.1f} ms (target < {SWEEP_TARGET_MS:.0f} ms)")
    return 0 if est < ESTIMATE_TARGET_MS and swp < SWEEP_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())

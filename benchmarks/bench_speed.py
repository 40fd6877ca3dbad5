"""Speed targets of estimator.speed (issue 15): run `python benchmarks/bench_speed.py`.

- one speed() call, warm (the bytes per step and the fractions are cached): under 200 us;
- the Engines page's three concurrency curves (transformers with its max_batch search, vLLM, llama.cpp): under 0.5 s;
- the leave-one-out replay of every public row (python -m estimator speed --validation), cold: under 2 s.
Prints the median of repeated runs and exits 1 if one misses its target.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator import speed as S  # noqa: E402

SPEED_TARGET_US = 200.0
CURVES_TARGET_S = 0.5
VALIDATION_TARGET_S = 2.0


def bench_speed(n: int = 2000) -> float:
    contexts = [1024 + 61 * i for i in range(n)]
    for c in contexts[:20]:
        S.speed("llama-3.1-8b", "q4_k_m", "rtx-4090-24gb", engine="llama.cpp", context=c)
    t = time.perf_counter()
    for c in contexts:
        S.speed("llama-3.1-8b", "q4_k_m", "rtx-4090-24gb", engine="llama.cpp", context=c)
    return (time.perf_counter() - t) / n * 1e6


def bench_curves() -> float:
    t = time.perf_counter()
    S.concurrency_curve("llama-3.2-3b", "bf16", "rtx-4090-24gb", context=8192)
    S.concurrency_curve("llama-3.2-3b", "bf16", "rtx-4090-24gb", engine="vllm", context=8192)
    S.concurrency_curve("llama-3.2-3b", "q4_k_m", "rtx-4090-24gb", engine="llama.cpp", context=8192, cap=4)
    return time.perf_counter() - t


def bench_validation() -> float:
    for cached in (S._fractions, S.measurements, S._weights_read_bytes, S.matmul_params):
        cached.cache_clear()
    t = time.perf_counter()
    S.validation()
    return time.perf_counter() - t


def main() -> int:
    results = [
        ("speed() call (us)", statistics.median(bench_speed() for _ in range(5)), SPEED_TARGET_US),
        ("three concurrency curves (s)", statistics.median(bench_curves() for _ in range(3)), CURVES_TARGET_S),
        ("validation replay (s)", statistics.median(bench_validation() for _ in range(3)), VALIDATION_TARGET_S),
    ]
    ok = True
    for name, value, target in results:
        miss = value > target
        ok &= not miss
        print(f"{name:<30} {value:10.4f}  target {target:g}{'  MISSED' if miss else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed targets of the estimator (issue 2): run `python benchmarks/bench_estimator.py`.

- one estimate() call: under 50 us (warm: the replay plan of the setting is cached);
- sweep of 256 contexts x every quantization: under 20 ms (warm).
Prints the median (and the best) of repeated runs and exits 1 if a median misses its target.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator import QUANTS, context_grid, estimate_settings, make_settings, sweep  # noqa: E402

ESTIMATE_TARGET_US = 50.0
SWEEP_TARGET_MS = 20.0


def bench_estimate(n: int = 5000) -> float:
    s = make_settings("llama-3.2-3b", gpu="h100-sxm-80gb")
    window = s.model.max_position_embeddings  # contexts spread over the window (the context is the window)
    settings = [replace(s, context=1024 + (37 * i) % (window - 1024)) for i in range(n)]
    for x in settings[:50]:
        estimate_settings(x)
    t = time.perf_counter()
    for x in settings:
        estimate_settings(x)
    return (time.perf_counter() - t) / n * 1e6


def bench_sweep() -> float:
    grid = context_grid(256)
    quants = list(QUANTS)
    rows = sweep(quants=quants, contexts=grid, gpu="rtx-4090-24gb")
    assert len(rows) == 256 * len(quants)
    t = time.perf_counter()
    sweep(quants=quants, contexts=grid, gpu="rtx-4090-24gb")
    return (time.perf_counter() - t) * 1e3


def main() -> int:
    ests = [bench_estimate() for _ in range(7)]
    swps = [bench_sweep() for _ in range(31)]
    est, swp = statistics.median(ests), statistics.median(swps)
    print(f"estimate(): median {est:.1f} us per call, best {min(ests):.1f} us (target < {ESTIMATE_TARGET_US:.0f} us)")
    print(
        f"sweep 256 contexts x {len(QUANTS)} quants: median {swp:.1f} ms, best {min(swps):.1f} ms "
        f"(target < {SWEEP_TARGET_MS:.0f} ms)"
    )
    return 0 if est < ESTIMATE_TARGET_US and swp < SWEEP_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())

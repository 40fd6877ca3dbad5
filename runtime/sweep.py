"""Sweep a grid of points into a JSONL file, one JSON result per line, flushed per point.

Isolation (recorded per point in ``settings.isolation``):

- ``process``: every point runs in a fresh ``python -m runtime measure`` subprocess, so no
  allocator state leaks between points (vLLM's ``create_new_process_for_each_test``). Costs an
  import of torch/transformers and a model load per point.
- ``shared-process``: one subprocess per model/quant measures its points with contexts
  ascending, loading the model once; between points the cache is dropped, ``empty_cache()``
  runs and peak statistics are reset (``runtime.measure.measure_points``). This is what fits the
  GPU time budget. If that subprocess dies, its current point is recorded as an error and a new
  subprocess takes the remaining points.

An out-of-memory point is recorded with ``"status": "oom"`` and the sweep goes on. An
interrupted sweep resumes: points whose settings match a finished line (status ok or oom) of
the output file are skipped; error points are retried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from .settings import make_settings, point_key

FINISHED = ("ok", "oom")


def grid(quants: Iterable[str], contexts: Iterable[int], batches: Iterable[int],
         extra: Iterable[tuple[int, int]] = (), **common: Any) -> list[dict[str, Any]]:
    """Validated settings for quants x contexts x batches, plus (context, batch) ``extra`` points
    for every quant; ordered by quant, then batch, then context ascending."""
    pts = []
    for q in quants:
        pairs = sorted({(b, c) for b in batches for c in contexts} | {(b, c) for c, b in extra})
        for b, c in pairs:
            pts.append(make_settings(quant=q, context=c, batch=b, **common))
    return pts


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Every parseable line of a JSONL results file (a torn last line is ignored)."""
    p = Path(path)
    out = []
    if p.is_file():
        for line in p.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def finished_keys(path: str | Path) -> set[tuple]:
    return {point_key(r["settings"]) for r in read_results(path)
            if r.get("status") in FINISHED and isinstance(r.get("settings"), dict)}


def _append(path: Path, result: dict[str, Any]) -> None:
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(result) + "\n")  # never glue onto a torn line
        f.flush()
        os.fsync(f.fileno())


def _cli_args(s: dict[str, Any]) -> list[str]:
    args = []
    for k, v in s.items():
        if k in ("engine", "cache", "padding", "isolation") or v is None:
            continue
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _error_result(s: dict[str, Any], msg: str) -> dict[str, Any]:
    from .measure import _empty_result, _finish

    r = _empty_result(s)
    r["status"], r["error"] = "error", msg[-2000:]
    return _finish(r)


class Progress:
    """One line per finished point on stderr: count, bar, point, status, elapsed and ETA."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.t0, self.stream = total, 0, time.monotonic(), stream

    def step(self, r: dict[str, Any]) -> None:
        from estimator.units import format_bytes

        self.done += 1
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        width = 20
        fill = int(width * self.done / max(1, self.total))
        s = r["settings"]
        peak = r.get("peak_allocated_bytes")
        peak_s = format_bytes(peak) if isinstance(peak, int) else "-"
        print(f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {s['quant']} ctx={s['context']} "
              f"b={s['batch']} {r['status']} peak={peak_s} elapsed {el:.0f}s eta {eta:.0f}s",
              file=self.stream, flush=True)


def _run_process(s: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "runtime", "measure", "--json", *_cli_args(s)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _error_result(s, f"timeout after {timeout}s")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if lines:
        r = json.loads(lines[-1])
        r["settings"]["isolation"] = "process"
        return r
    return _error_result(s, f"exit {p.returncode}: {p.stderr.strip()[-1500:]}")


def _run_shared(group: list[dict[str, Any]], deadline: float | None, on_result) -> bool:
    """Run a group in one worker subprocess; restart it for the rest if it dies. Returns False
    when the deadline killed the worker (the remaining points stay unmeasured, for a resume)."""
    import threading

    todo = list(group)
    while todo:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        cmd = [sys.executable, "-m", "runtime", "_worker"]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        timer = None
        if deadline is not None:
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), p.kill)
            timer.start()
        err: list[str] = []
        drain = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
        drain.start()
        p.stdin.write(json.dumps(todo) + "\n")
        p.stdin.close()
        for line in p.stdout:
            if line.startswith("{"):
                todo.pop(0)
                on_result(json.loads(line))
        p.wait()
        drain.join(5)
        if timer is not None:
            timer.cancel()
        if todo:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            on_result(_error_result(todo.pop(0), f"worker exited {p.returncode}: {''.join(err).strip()[-1500:]}"))
    return True


def run_sweep(points: list[dict[str, Any]], out: str | Path, isolation: str = "shared-process",
              timeout: float | None = None, progress: bool = True,
              budget_s: float | None = None) -> list[dict[str, Any]]:
    """Measure every point not already finished in ``out``; returns the new results.

    ``timeout``: per point, ``process`` isolation only. ``budget_s``: stop starting points (and
    kill a running worker) after this many seconds; what was measured is already in ``out``."""
    deadline = time.monotonic() + budget_s if budget_s else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = finished_keys(out)
    todo = [dict(p, isolation=isolation) for p in points if point_key(p) not in done]
    skipped = len(points) - len(todo)
    if skipped and progress:
        print(f"resume: {skipped} of {len(points)} points already in {out}", file=sys.stderr, flush=True)
    bar = Progress(len(todo))
    results: list[dict[str, Any]] = []

    def on_result(r: dict[str, Any]) -> None:
        _append(out, r)
        results.append(r)
        if progress:
            bar.step(r)

    if isolation == "in-process":
        from .measure import measure_points, same_model

        for group in _groups(todo, same_model):
            for r in measure_points(group):
                on_result(r)
    elif isolation == "process":
        for s in todo:
            if deadline is not None and time.monotonic() >= deadline:
                break
            left = deadline - time.monotonic() if deadline is not None else None
            on_result(_run_process(s, min(x for x in (timeout, left) if x) if (timeout or left) else None))
    else:
        from .measure import same_model

        for group in _groups(todo, same_model):
            if not _run_shared(group, deadline, on_result):
                break
    if progress and len(results) < len(todo):
        print(f"stopped by the time budget: {len(todo) - len(results)} points left; rerun to resume",
              file=sys.stderr, flush=True)
    return results


def _groups(points: list[dict[str, Any]], same) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for p in points:
        for g in groups:
            if same(g[0], p):
                g.append(p)
                break
        else:
            groups.append([p])
    for g in groups:
        g.sort(key=lambda s: (s["context"] * s["batch"], s["batch"]))
    return groups


def worker() -> int:
    """``python -m runtime _worker``: read a JSON list of points on stdin, print one result per line."""
    from .measure import measure_points

    points = json.loads(sys.stdin.readline())
    for r in measure_points(points):
        print(json.dumps(r), flush=True)
    return 0

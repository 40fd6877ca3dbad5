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
the output file are skipped; error points are retried (lines that are not a JSON object with
every point key are ignored). The output file is locked for the sweep's duration (one sweep per
file), and every worker process dies with the sweep that started it (``die_with_parent``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from estimator.units import shown

from .settings import POINT_KEYS, SettingsError, make_settings, point_key

FINISHED = ("ok", "oom")
PARENT_ENV = "RUNTIME_SWEEP_PID"  # set for worker processes: the pid of the sweep that started them
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: signal this process when the thread that forked it exits
PARENT_POLL_S = 1.0  # fallback check of os.getppid(): once a second (a sweep point takes seconds)
ORPHAN_EXIT = 137  # what a SIGKILL from PR_SET_PDEATHSIG would give the shell: 128 + 9


def grid(
    quants: Iterable[str],
    contexts: Iterable[int],
    batches: Iterable[int],
    extra: Iterable[tuple[int, int]] = (),
    **common: Any,
) -> list[dict[str, Any]]:
    """Validated settings for quants x contexts x batches, plus (context, batch) ``extra`` points
    for every quant; ordered by quant, then batch, then context ascending."""
    pts = []
    for q in quants:
        pairs = sorted({(b, c) for b in batches for c in contexts} | {(b, c) for c, b in extra})
        for b, c in pairs:
            pts.append(make_settings(quant=q, context=c, batch=b, **common))
    return pts


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a JSONL results file that is a JSON object; torn, non-UTF-8, non-JSON and
    non-object lines are skipped. Lines are split on b"\\n" only (json.dumps never writes one inside
    a record), so a U+2028 in a value cannot split a record."""
    p = Path(path)
    out = []
    if not p.is_file():
        return out
    for raw in p.read_bytes().split(b"\n"):
        try:
            r = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def _finished_key(r: dict[str, Any]) -> tuple | None:
    """The point key of a finished record, or None when it is not one (unfinished, settings not an
    object, a point key missing, or a value that cannot be a key)."""
    s = r.get("settings")
    if r.get("status") not in FINISHED or not isinstance(s, dict) or any(k not in s for k in POINT_KEYS):
        return None
    key = point_key(s)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def finished_keys(path: str | Path) -> set[tuple]:
    """Keys of the points a results file already holds as ok or oom (resume skips those)."""
    return {k for k in map(_finished_key, read_results(path)) if k is not None}


def check_seconds(value: Any, field: str) -> float | None:
    """``value`` as seconds: None (no limit), or a finite number > 0; ASCII text is parsed."""
    if value is None:
        return None
    x = value
    if isinstance(x, str):
        try:
            x = float(x) if x.isascii() else math.nan
        except ValueError:
            x = math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise SettingsError(f"{field} must be a finite number of seconds > 0: {shown(value)}")
    return float(x)


@contextlib.contextmanager
def locked_output(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the results file while a sweep writes it. The file is checked
    (and created) first, so a bad ``--out`` is refused before anything is measured; a second sweep
    on the same file gets a SettingsError instead of measuring every point again."""
    if path.is_dir():
        raise SettingsError(f"out is a folder, not a results file: {shown(str(path))}")
    if not path.parent.is_dir():
        raise SettingsError(f"out: its folder does not exist: {shown(str(path))}")
    try:
        f = path.open("a")
    except OSError as e:
        raise SettingsError(f"out: cannot write {shown(str(path))}: {e.strerror}") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SettingsError(
                f"out: {shown(str(path))} is in use by another sweep (locked); "
                "wait for it to finish or use another file"
            ) from None
        yield  # closing the file releases the lock, also when this process is killed


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
        print(
            f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {s['quant']} ctx={s['context']} "
            f"b={s['batch']} {r['status']} peak={peak_s} elapsed {el:.0f}s eta {eta:.0f}s",
            file=self.stream,
            flush=True,
        )


def _worker_env() -> dict[str, str]:
    """The environment of a worker process: this one's, plus this sweep's pid (``die_with_parent``)."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a worker started by a sweep (``PARENT_ENV`` set): exit when that sweep dies, so a killed
    sweep leaves no worker holding the GPU. Linux: ``PR_SET_PDEATHSIG`` = SIGKILL; everywhere: a
    daemon thread that exits when ``os.getppid()`` changes (the worker was re-parented)."""
    raw = os.environ.pop(PARENT_ENV, "")
    if not raw.isdigit():
        return
    parent = int(raw)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the thread below still notices
    if os.getppid() != parent:  # the sweep died before the prctl took effect
        os._exit(ORPHAN_EXIT)
    threading.Thread(target=_watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT)


def _run_process(s: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "runtime", "measure", "--json", *_cli_args(s)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env())
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
    todo = list(group)
    while todo:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        cmd = [sys.executable, "-m", "runtime", "_worker"]
        p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_worker_env()
        )
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        timer = None
        if deadline is not None:
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), p.kill)
            timer.start()
        err: list[str] = []
        drain = threading.Thread(target=lambda p=p, err=err: err.append(p.stderr.read()), daemon=True)
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


def run_sweep(
    points: list[dict[str, Any]],
    out: str | Path,
    isolation: str = "shared-process",
    timeout: float | None = None,
    progress: bool = True,
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Measure every point not already finished in ``out``; returns the new results.

    ``timeout``: per point, ``process`` isolation only. ``budget_s``: stop starting points (and
    kill a running worker) after this many seconds; what was measured is already in ``out``. Both
    are None (no limit) or finite and > 0. ``out`` is locked for the sweep's duration: a second
    sweep on it, an ``out`` that is a folder or cannot be written raise SettingsError before
    anything is measured."""
    timeout = check_seconds(timeout, "timeout")
    budget_s = check_seconds(budget_s, "budget_s")
    out = Path(out)
    with locked_output(out):
        return _sweep_locked(points, out, isolation, timeout, progress, budget_s)


def _sweep_locked(
    points: list[dict[str, Any]],
    out: Path,
    isolation: str,
    timeout: float | None,
    progress: bool,
    budget_s: float | None,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + budget_s if budget_s is not None else None
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
            limits = [
                x for x in (timeout, deadline - time.monotonic() if deadline is not None else None) if x is not None
            ]
            on_result(_run_process(s, max(0.0, min(limits)) if limits else None))
    else:
        from .measure import same_model

        for group in _groups(todo, same_model):
            if not _run_shared(group, deadline, on_result):
                break
    if progress and len(results) < len(todo):
        print(
            f"stopped by the time budget: {len(todo) - len(results)} points left; rerun to resume",
            file=sys.stderr,
            flush=True,
        )
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

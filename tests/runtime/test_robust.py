"""The runtime keeps its promises: --weights is checked against --model, the random-checkpoint
cache survives concurrent loads, resume reads any results file, one sweep per output file,
workers die with their sweep, host OOM is an oom, time limits are sane, and gpu-validate.sh never
pastes arguments into Python source."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.settings import SettingsError, make_settings, point_key
from runtime.sweep import finished_keys, grid, read_results, run_sweep

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def _one_error_line(p: subprocess.CompletedProcess, *words: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# 1. --weights must be the checkpoint of --model


def test_weights_config_must_match_model_in_trace(model_dirs):
    """A 2-layer checkpoint folder given as the weights of the 1B is refused, not measured as the 1B."""
    p = _run(
        "measure",
        "--model",
        "llama-3.2-1b",
        "--weights",
        model_dirs["narrow"],
        "--context",
        "64",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--json",
    )
    _one_error_line(p, "weights", "num_hidden_layers")


def test_weights_config_must_match_model_in_sweep(model_dirs, tmp_path):
    out = tmp_path / "s.jsonl"
    p = _run(
        "sweep",
        "--model",
        "llama-3.2-1b",
        "--weights",
        model_dirs["narrow"],
        "--contexts",
        "64",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--isolation",
        "in-process",
        "--out",
        str(out),
    )
    _one_error_line(p, "weights")
    assert not out.exists() or out.read_text() == ""  # nothing measured


def test_weights_check_names_each_field(model_dirs):
    from runtime.measure import check_weights

    s = make_settings(
        model=model_dirs["real-width-1layer"], weights=model_dirs["narrow"], device="cpu", context=64, new_tokens=2
    )
    with pytest.raises(SettingsError, match="weights.*hidden_size"):
        check_weights(s)
    check_weights(
        make_settings(
            model=model_dirs["narrow"], weights=model_dirs["narrow"], device="trace", context=64, new_tokens=2
        )
    )  # the same config passes


def test_trace_refuses_hub_weights():
    from runtime.measure import check_weights

    with pytest.raises(SettingsError, match="weights"):
        check_weights(make_settings(model="llama-3.2-1b", weights="meta-llama/Llama-3.2-1B", device="trace"))


def test_matching_local_checkpoint_loads_on_cpu(model_dirs):
    from runtime.load import config_dict, random_checkpoint

    ckpt = random_checkpoint(config_dict(model_dirs["narrow"]))
    p = _run(
        "measure",
        "--model",
        model_dirs["narrow"],
        "--weights",
        str(ckpt),
        "--context",
        "32",
        "--new-tokens",
        "2",
        "--device",
        "cpu",
        "--json",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["status"] == "ok" and r["settings"]["weights"] == str(ckpt)


# 2. the random-checkpoint cache under concurrent loads


def test_checkpoint_cache_concurrent_first_use(model_dirs, tmp_path, monkeypatch):
    """Three processes asking for the same uncached checkpoint all get it; no temp folder is left."""
    from runtime.load import config_dict, random_checkpoint

    root = tmp_path / "ckpt"
    monkeypatch.setenv("LLM_VRAM_CHECKPOINTS", str(root))  # inherited by the spawned processes
    cfg = config_dict(model_dirs["narrow"])
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that has run torch
    with ctx.Pool(3) as pool:
        jobs = [pool.apply_async(random_checkpoint, (cfg, "cpu")) for _ in range(3)]
        paths = []
        for j in jobs:
            paths.append(j.get(timeout=240))
    assert len(set(paths)) == 1
    final = Path(paths[0])
    assert (final / "config.json").is_file() and any(final.glob("*.safetensors"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [final.name]  # no .tmp left behind


def test_checkpoint_cache_cleans_up_a_failed_save(model_dirs, tmp_path, monkeypatch):
    import transformers

    from runtime.load import config_dict, random_checkpoint

    root = tmp_path / "ckpt"
    monkeypatch.setenv("LLM_VRAM_CHECKPOINTS", str(root))

    def boom(self, *a, **kw):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        random_checkpoint(config_dict(model_dirs["narrow"]))
    assert [p for p in root.iterdir() if p.is_dir()] == []


# 3. resume reads anything; one sweep per output file; --out checked upfront


def test_resume_skips_junk_lines(model_dirs, tmp_path):
    pts = grid(["bf16"], [16, 32], [1], model=model_dirs["narrow"], device="trace", new_tokens=2)
    out = tmp_path / "s.jsonl"
    run_sweep(pts[:1], out, isolation="in-process", progress=False)
    good = out.read_bytes()
    junk = [
        b"[1, 2]",
        b"42",
        b'"text"',
        b"null",
        b"\xff\xfe not utf-8 \x80",
        b'{"status": "ok"}',
        b'{"status": "ok", "settings": {"model": "x"}}',
        b'{"status": "ok", "settings": [1]}',
        b'{"status": "ok", "settings": {"model": [1], "quant": {}}}',
        b"\xc3\x28{}",
    ]
    out.write_bytes(b"\n".join(junk) + b"\n" + good + b"\xe2\x80\xa8\n")
    rows = read_results(out)
    assert all(isinstance(r, dict) for r in rows)
    assert finished_keys(out) == {point_key(pts[0])}
    new = run_sweep(pts, out, isolation="in-process", progress=False)
    assert [r["settings"]["context"] for r in new] == [32]


@pytest.mark.parametrize("kind", ["folder", "no-parent"])
def test_out_refused_before_measuring(model_dirs, tmp_path, kind):
    out = tmp_path if kind == "folder" else tmp_path / "missing" / "s.jsonl"
    p = _run(
        "sweep",
        "--model",
        model_dirs["narrow"],
        "--contexts",
        "32",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--isolation",
        "in-process",
        "--out",
        str(out),
    )
    _one_error_line(p, "out")
    assert "resume" not in p.stderr and not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_unwritable_folder_refused(model_dirs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    p = _run(
        "sweep",
        "--model",
        model_dirs["narrow"],
        "--contexts",
        "32",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--isolation",
        "in-process",
        "--out",
        str(ro / "s.jsonl"),
    )
    _one_error_line(p, "out")


def test_second_sweep_on_same_file_is_refused(model_dirs, tmp_path):
    import fcntl

    out = tmp_path / "s.jsonl"
    with out.open("a") as f:  # what a running sweep holds
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        p = _run(
            "sweep",
            "--model",
            model_dirs["narrow"],
            "--contexts",
            "32",
            "--new-tokens",
            "2",
            "--device",
            "trace",
            "--isolation",
            "in-process",
            "--out",
            str(out),
        )
        _one_error_line(p, "out", "in use")
        pts = grid(["bf16"], [32], [1], model=model_dirs["narrow"], device="trace", new_tokens=2)
        with pytest.raises(SettingsError, match="in use"):
            run_sweep(pts, out, isolation="in-process", progress=False)
    assert out.read_text() == ""
    assert len(run_sweep(pts, out, isolation="in-process", progress=False)) == 1  # free again


# 4. workers die with their sweep


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("isolation", ["process", "shared-process"])
def test_worker_dies_with_killed_sweep(tmp_path, isolation):
    # the full 3B traced at 64K takes ~12 s on the 2-core CI machine: a worker outliving its sweep
    # would still be alive after the 5 s this test waits
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "sweep",
            "--model",
            "llama-3.2-3b",
            "--contexts",
            "64K",
            "--new-tokens",
            "2",
            "--device",
            "trace",
            "--isolation",
            isolation,
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        t0 = time.monotonic()
        while worker is None and time.monotonic() - t0 < 20:
            kids = _children(sweep.pid)
            worker = kids[0] if kids else None
            time.sleep(0.1)
        assert worker is not None, "the sweep started no worker"
        time.sleep(1.0)  # the worker is past its start-up
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(10)
        t1 = time.monotonic()
        while _alive(worker) and time.monotonic() - t1 < 5:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its sweep"
    finally:
        if sweep.poll() is None:
            sweep.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


_NO_PRCTL_CHILD = """
import ctypes, time
def no_libc(*a, **kw):
    raise OSError("no prctl here")
ctypes.CDLL = no_libc  # as on a platform without PR_SET_PDEATHSIG: only the getppid() thread is left
from runtime.sweep import die_with_parent
die_with_parent()
time.sleep(60)
"""

_PARENT = """
import os, subprocess, sys, time
env = dict(os.environ, RUNTIME_SWEEP_PID=str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_fallback_without_prctl_exits_when_orphaned():
    from runtime.sweep import PARENT_ENV

    assert PARENT_ENV == "RUNTIME_SWEEP_PID"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _NO_PRCTL_CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.5)  # the child is past die_with_parent
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        t0 = time.monotonic()
        while _alive(child) and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        assert not _alive(child), "the worker outlived its parent without prctl"
    finally:
        if parent.poll() is None:
            parent.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)


# 5. host allocation failures are out-of-memory


@pytest.mark.parametrize(
    "exc,status",
    [
        (MemoryError(), "oom"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "oom",
        ),
        (RuntimeError("can't allocate memory: you tried to allocate 10 bytes"), "oom"),
        (RuntimeError("shape mismatch"), "error"),
        (ValueError("can't allocate memory"), "error"),
    ],
)
def test_failure_classifier(exc, status):
    from runtime.measure import failure_status

    assert failure_status(exc) == status


def test_host_allocation_failure_is_recorded_as_oom(model_dirs, monkeypatch):
    import runtime.measure as m

    def no_memory(s, r, loaded):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(m, "_measure_trace", no_memory)
    r = m.measure(model=model_dirs["narrow"], context=32, new_tokens=2, device="trace")
    assert r["status"] == "oom" and "allocate" in r["error"]


# 6. time limits


@pytest.mark.parametrize("flag", ["--budget-s", "--timeout"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "x", "٣"])
def test_time_limits_finite_and_positive(model_dirs, tmp_path, flag, value):
    p = _run(
        "sweep",
        "--model",
        model_dirs["narrow"],
        "--contexts",
        "32",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--isolation",
        "in-process",
        f"{flag}={value}",
        "--out",
        str(tmp_path / "s.jsonl"),
    )
    _one_error_line(p, flag[2:].replace("-", "_"))
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize(
    "kw", [{"budget_s": 0}, {"budget_s": float("nan")}, {"timeout": float("inf")}, {"timeout": -1.0}]
)
def test_run_sweep_refuses_bad_time_limits(model_dirs, tmp_path, kw):
    pts = grid(["bf16"], [32], [1], model=model_dirs["narrow"], device="trace", new_tokens=2)
    with pytest.raises(SettingsError, match=next(iter(kw))):
        run_sweep(pts, tmp_path / "s.jsonl", isolation="in-process", progress=False, **kw)


# 7. gpu-validate.sh


def test_gpu_validate_passes_arguments_as_argv():
    text = (ROOT / "scripts" / "gpu-validate.sh").read_text()
    python_lines = [ln for ln in text.splitlines() if " -c " in ln]
    assert python_lines
    for ln in python_lines:
        src = ln.split(" -c ", 1)[1]
        quote = src[0]
        body = src[1 : src.index(quote, 1)]
        assert "$" not in body, ln  # no shell variable inside the Python source
    assert "5664" in text and "7712" in text


def test_gpu_validate_keeps_a_training_reserve(tmp_path):
    """The sweep's budget leaves --train-budget-s for the training grid (a sweep that used the
    whole budget left the training points 30 s, under their 40 s floor: they never ran); a bad
    reserve exits 2 with one line naming the flag, before any work."""
    text = (ROOT / "scripts" / "gpu-validate.sh").read_text()
    assert "sweep_left() { local l=$(( $(left) - TRAIN_BUDGET ))" in text
    assert "LEFT=$(sweep_left)" in text and "KV_BUDGET=$(sweep_left)" in text
    p = subprocess.run(
        ["bash", "scripts/gpu-validate.sh", str(tmp_path / "o"), "--train-budget-s", "1; touch x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--train-budget-s" in p.stderr
    assert not (tmp_path / "o").exists()


def test_gpu_validate_device_with_quote_is_not_code(tmp_path):
    """A --device value that would be Python code if pasted into source is just a bad device."""
    marker = tmp_path / "pwned"
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.run(
        [
            "bash",
            "scripts/gpu-validate.sh",
            str(tmp_path / "o"),
            "--device",
            f"cpu'))); open('{marker}', 'w').write('1'); print(max(dict(a='",
            "--budget-s",
            "40",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert not marker.exists(), p.stderr[-2000:]

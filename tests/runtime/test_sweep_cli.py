"""Sweeps (resume, OOM, isolation), the CLI contract and bad input, and the validation report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import SettingsError, make_settings
from runtime.sweep import grid, read_results, run_sweep
from runtime.validate import validate

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def test_grid_order_and_extra():
    pts = grid(["bf16", "nf4"], [4096, 1024], [1], extra=[(8192, 4)], device="trace")
    assert [(p["quant"], p["context"], p["batch"]) for p in pts] == [
        ("bf16", 1024, 1),
        ("bf16", 4096, 1),
        ("bf16", 8192, 4),
        ("nf4", 1024, 1),
        ("nf4", 4096, 1),
        ("nf4", 8192, 4),
    ]


def test_sweep_resume_and_simulated_oom(model_dirs, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    pts = grid(["bf16"], [16, 32, 64], [1], model=model_dirs["narrow"], device="trace", new_tokens=2)
    monkeypatch.setenv("RUNTIME_SIMULATE_OOM_ABOVE", "40")
    first = run_sweep(pts[:2], out, isolation="in-process", progress=False)
    assert [r["status"] for r in first] == ["ok", "ok"]
    with out.open("a") as f:
        f.write('{"settings": {"torn')  # an interrupted write
    second = run_sweep(pts, out, isolation="in-process", progress=False)  # resumes: only the 64 point runs
    assert [(r["settings"]["context"], r["status"]) for r in second] == [(64, "oom")]
    assert "simulated out of memory" in second[0]["error"]
    assert second[0]["weights_bytes"] is not None  # what was measured before the OOM is kept
    assert run_sweep(pts, out, isolation="in-process", progress=False) == []  # oom counts as finished
    rows = read_results(out)
    assert [r["settings"]["context"] for r in rows] == [16, 32, 64]
    assert all(r["settings"]["isolation"] == "in-process" for r in rows)


def test_sweep_subprocess_isolations(model_dirs, tmp_path):
    out = tmp_path / "s.jsonl"
    pts = grid(["bf16"], [16, 32], [1], model=model_dirs["narrow"], device="cpu", new_tokens=2)
    shared = run_sweep(pts, out, isolation="shared-process", progress=False)
    assert [r["status"] for r in shared] == ["ok", "ok"]
    assert shared[1]["details"]["model_loaded_by_earlier_point"] is True
    proc = run_sweep(
        grid(["fp32"], [16], [1], model=model_dirs["narrow"], device="cpu", new_tokens=2),
        out,
        isolation="process",
        progress=False,
    )
    assert proc[0]["status"] == "ok" and proc[0]["settings"]["isolation"] == "process"
    assert len(read_results(out)) == 3


def test_cli_measure_contract(model_dirs):
    p = _run(
        "measure",
        "--model",
        model_dirs["narrow"],
        "--quant",
        "bf16",
        "--context",
        "64",
        "--batch",
        "1",
        "--device",
        "trace",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)  # exactly one JSON object
    for key in (
        "settings",
        "status",
        "weights_bytes",
        "kv_cache_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "device_used_bytes",
        "phases",
        "environment",
    ):
        assert key in r
    assert set(r["phases"]) == {"load", "prefill", "decode"}
    # trace reads no device: reserved comes from the allocator simulation (runtime/allocsim.py),
    # at least the simulated allocated peak; the device counter (NVML) stays unmeasured.
    assert r["device_used_bytes"] is None
    assert r["peak_reserved_bytes"] >= r["peak_allocated_bytes"] > 0
    assert "SIMULATED" in r["counters"]["peak_reserved_bytes"]
    assert {"torch", "transformers", "bitsandbytes", "gpu_name", "driver", "cuda"} <= set(r["environment"])


@pytest.mark.parametrize(
    "args,field",
    [
        (["--quant", "int3"], "quant"),
        (["--context", "0"], "context"),
        (["--context", "8x"], "context"),
        (["--batch", "-1"], "batch"),
        (["--attn", "flash"], "attn"),
        (["--device", "tpu"], "device"),
        (["--model", "no-such-model"], "model"),
        (["--kv-dtype", "fp8"], "kv_dtype"),
        (["--new-tokens", "x"], "new_tokens"),
        (["--bnb-compute-dtype", "int8"], "bnb_compute_dtype"),
        (["--weights", "../nowhere"], "weights"),
    ],
)
def test_cli_bad_input_exit_2_one_line(args, field):
    p = _run("measure", "--device", "trace", "--context", "64", *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert field in lines[0]


def test_cli_cuda_without_gpu_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    p = _run("measure", "--device", "cuda", "--context", "64")
    assert p.returncode == 2 and "cuda" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_settings_errors_name_field():
    with pytest.raises(SettingsError, match="prefill_chunk"):
        make_settings(prefill_chunk=0)
    with pytest.raises(SettingsError, match="quant"):
        make_settings(quant="gptq-int4")


def test_validate_report(model_dirs, tmp_path):
    out = tmp_path / "s.jsonl"
    run_sweep(
        grid(["bf16", "nf4"], [32, 64], [1], model=model_dirs["narrow"], device="trace", new_tokens=2),
        out,
        isolation="in-process",
        progress=False,
    )
    rep = validate(read_results(out), tmp_path / "report")
    assert (tmp_path / "report" / "validation.md").read_text().startswith("# Estimator vs measurement")
    js = json.loads((tmp_path / "report" / "validation.json").read_text())
    # trace: live-tensor counters, and allocated/reserved from the allocator simulation
    assert set(js["summary"]) == {
        "weights_bytes",
        "kv_cache_bytes",
        "activations_bytes",
        "peak_live_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
    }
    assert js["summary"]["weights_bytes"]["max_abs_rel_error"] == 0
    assert js["summary"]["kv_cache_bytes"]["max_abs_rel_error"] == 0
    assert len(rep["rows"]) == 4


def test_cli_validate_runs_sweep(model_dirs, tmp_path):
    p = _run(
        "validate",
        "--model",
        model_dirs["narrow"],
        "--quants",
        "bf16",
        "--contexts",
        "32",
        "--new-tokens",
        "2",
        "--device",
        "trace",
        "--isolation",
        "in-process",
        "--results",
        str(tmp_path / "r.jsonl"),
        "--out-dir",
        str(tmp_path / "rep"),
    )
    assert p.returncode == 0, p.stderr
    assert "| weights_bytes | 1 | 0.000% |" in p.stdout
    assert (tmp_path / "rep" / "validation.json").is_file()


def test_gpu_mapping_for_cuda_results():
    from estimator.report import measured_gpu as measured_gpu

    h100 = measured_gpu(
        {"gpu_total_memory_bytes": 85_031_714_816, "gpu_capability": "9.0"}
    )  # torch's H100 80GB reading
    assert h100.arch == "sm90" and h100.key != "custom"
    odd = measured_gpu({"gpu_total_memory_bytes": 7 * 2**30, "gpu_capability": "9.0"})
    assert odd.key == "custom" and odd.memory_bytes == 7 * 2**30
    assert measured_gpu({"gpu_total_memory_bytes": None}) is None

"""The CLI contract other tools rely on: JSON fields, exit code 2 with one line for bad input."""

import json
import subprocess
import sys

import pytest

from estimator.cli import main

BYTE_FIELDS = (
    "weights_bytes",
    "kv_cache_bytes",
    "activations_bytes",
    "overhead_bytes",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "device_used_bytes",
    "total_bytes",
)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_contract(capsys):
    code, out, err = run(
        capsys, "estimate", "--model", "llama-3.2-3b", "--quant", "nf4", "--context", "8192", "--batch", "1", "--json"
    )
    assert code == 0 and err == ""
    d = json.loads(out)
    for f in BYTE_FIELDS:
        assert isinstance(d[f], int) and d[f] >= 0
    assert d["num_params"] == 3_212_749_824
    assert d["settings"]["quant"] == "nf4" and d["settings"]["context"] == 8192 and d["settings"]["batch"] == 1
    assert "fits" in d and d["fits"] is None


@pytest.mark.parametrize("ctx", ["8k", "8K", "8192"])
def test_context_forms_and_gpu(capsys, ctx):
    code, out, _ = run(capsys, "estimate", "--context", ctx, "--gpu", "rtx-4060-8gb", "--json")
    d = json.loads(out)
    assert d["settings"]["context"] == 8192 and isinstance(d["fits"], bool)
    assert d["headroom_bytes"] == d["gpu_memory_bytes"] - d["total_bytes"]


@pytest.mark.parametrize(
    "size,expected",
    [
        ("24GiB", 24 * 2**30),
        ("24 GB", 24 * 10**9),
        ("512MiB", 512 * 2**20),
        ("25769803776", 25769803776),
        ("1.5GiB", 3 * 2**29),
    ],
)
def test_gpu_memory_sizes(capsys, size, expected):
    code, out, _ = run(capsys, "estimate", "--gpu-memory", size, "--json")
    assert code == 0 and json.loads(out)["gpu_memory_bytes"] == expected


def test_config_path(capsys, tmp_path):
    from estimator.model import preset_config

    p = tmp_path / "config.json"
    p.write_text(json.dumps(preset_config("llama-3.2-1b")))
    code, out, _ = run(capsys, "estimate", "--model", str(p), "--json")
    assert code == 0 and json.loads(out)["num_params"] == 1_235_814_400


def test_fit_json(capsys):
    code, out, _ = run(capsys, "fit", "--model", "llama-3.2-3b", "--quant", "nf4", "--gpu", "rtx-4060-8gb", "--json")
    d = json.loads(out)
    assert code == 0 and d["max_context"] > 8192
    assert d["estimate"]["settings"]["context"] == d["max_context"] and d["estimate"]["fits"] is True


def test_gpus_and_quants_json(capsys):
    code, out, _ = run(capsys, "gpus", "--json")
    gpus = json.loads(out)
    assert len(gpus) >= 25 and {"key", "name", "memory_bytes", "source"} <= set(gpus[0])
    keys = {g["key"] for g in gpus}
    assert {
        "t4-16gb",
        "l4-24gb",
        "a10g-24gb",
        "a100-40gb",
        "a100-80gb",
        "h100-sxm-80gb",
        "h200-141gb",
        "mi300x-192gb",
        "rtx-4060-8gb",
    } <= keys
    code, out, _ = run(capsys, "quants", "--json")
    q = {r["name"]: r for r in json.loads(out)}
    assert q["bf16"]["bits_per_weight"] == 16.0 and 4 < q["nf4"]["bits_per_weight"] < 6


def test_table_output_says_gib(capsys):
    code, out, _ = run(capsys, "estimate", "--gpu", "l4-24gb")
    assert code == 0 and "GiB" in out and " GB" not in out and "fits" in out
    # the context is the window: the header splits it into prompt + generated tokens
    code, out, _ = run(capsys, "estimate", "--context", "8192", "--new-tokens", "32")
    assert code == 0 and "context 8,192 (prompt 8,160 + 32 new)" in out.splitlines()[0]


def test_sweep_csv(capsys):
    code, out, _ = run(capsys, "sweep", "--quants", "bf16,nf4", "--contexts", "1k,8k")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5 and "device_used_bytes" in lines[0]


@pytest.mark.parametrize(
    "argv,field",
    [
        (["estimate", "--quant", "nf5"], "quant"),
        (["estimate", "--context", "abc"], "--context"),
        (["estimate", "--context", "0"], "--context"),
        (["estimate", "--batch", "x"], "--batch"),
        (["estimate", "--batch", "0"], "--batch"),
        (["estimate", "--gpu", "rtx-9999"], "gpu"),
        (["estimate", "--gpu-memory", "12XB"], "--gpu-memory"),
        (["estimate", "--gpu-memory", "-5GB"], "--gpu-memory"),
        (["estimate", "--kv-dtype", "int3"], "kv_dtype"),
        (["estimate", "--attn", "flash"], "attn"),
        (["estimate", "--model", "/no/such/config.json"], "model"),
        (["fit", "--quant", "bf16"], "--gpu"),
        (["estimate", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, field):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and field in err and "Traceback" not in err


def test_bad_config_file_one_line(capsys, tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "mixtral", "num_local_experts": 8}')
    code, _, err = run(capsys, "estimate", "--model", str(p))
    assert code == 2 and "num_local_experts" in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "estimator", "estimate", "--quant", "int8", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(r.stdout)["settings"]["quant"] == "int8"
    r = subprocess.run([sys.executable, "-m", "estimator", "estimate", "--quant", "q9"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1

"""``python -m estimator speed`` and ``Estimate.speed``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from estimator import estimate
from estimator import speed as S
from estimator.cli import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_speed_json_matches_the_library(capsys):
    """The CLI prints the library's numbers for the same setting (llama.cpp flags included)."""
    argv = ["speed", "--model", "llama-3.1-8b", "--quant", "q4_k_m", "--engine", "llama.cpp"]
    argv += ["--gpu", "rtx-3080-10gb", "--context", "4096", "--new-tokens", "128", "--json"]
    d = _json(capsys, argv)
    lib = S.speed("llama-3.1-8b", "q4_k_m", "rtx-3080-10gb", engine="llama.cpp", context=4096, new_tokens=128)
    assert d == json.loads(json.dumps(lib.to_dict()))
    assert d["weights_read_bytes"] == 4_617_396_480


def test_cli_speed_ollama_is_llamacpp(capsys):
    """--engine ollama is llama.cpp's kernels (the engines' CLI maps it)."""
    base = ["speed", "--model", "llama-3.2-3b", "--quant", "q4_k_m", "--gpu", "rtx-4090-24gb", "--json"]
    a = _json(capsys, [*base, "--engine", "ollama"])
    b = _json(capsys, [*base, "--engine", "llama.cpp"])
    assert a == b


def test_cli_speed_table_and_concurrency(capsys):
    argv = ["speed", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--engine", "vllm", "--concurrency"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decode tok/s per sequence" in out and "GiB" in out and "few public vllm rows" in out
    cap = S.max_concurrency("llama-3.1-8b", "bf16", "h100-sxm-80gb", engine="vllm", context=8192)
    assert f"{cap:>6} seqs:" in out


def test_cli_speed_validation_prints_the_published_error(capsys):
    d = _json(capsys, ["speed", "--validation", "--json"])
    assert d["summary"] == S.error_summary()
    assert len(d["rows"]) == len(S.measurements())
    assert main(["speed", "--validation"]) == 0
    assert "decode_tok_s/consumer" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["speed", "--model", "llama-3.1-8b"], "--gpu"),
        (["speed", "--gpu", "h100-sxm-80gb", "--batch", "0"], "--batch"),
        (["speed", "--gpu", "nope"], "gpu"),
        (["speed", "--gpu", "rtx-4090-24gb", "--engine", "llama.cpp", "--quant", "nf4"], "quant"),
        (["speed", "--gpu", "rtx-4090-laptop-16gb"], "bandwidth"),
        (["speed", "--gpu", "h100-sxm-80gb", "--engine", "vllm", "--quant", "q4_k_m"], "quant"),
    ],
)
def test_cli_speed_bad_input_exits_2_with_one_line(capsys, argv, field):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err


def test_cli_speed_custom_gpu_from_bandwidth_and_tflops(capsys):
    """--bandwidth GB/s (and --tflops) describe a GPU the catalog lacks; they override a catalog GPU's."""
    argv = ["speed", "--model", "llama-3.1-8b", "--quant", "q4_k_m", "--engine", "llama.cpp", "--json"]
    d = _json(capsys, [*argv, "--bandwidth", "960", "--tflops", "112.6"])
    from estimator.gpus import Gpu

    g = Gpu("custom", "Custom GPU", "nvidia", "generic", 0, "entered by the user", "custom", 960_000_000_000)
    g = dataclasses.replace(g, flops_per_s=(("bf16", 112_600_000_000_000), ("fp16", 112_600_000_000_000)))
    lib = S.speed("llama-3.1-8b", "q4_k_m", g, engine="llama.cpp", context=8192)
    assert d["gpu"] == "custom" and d["decode_tok_s"] == lib.decode_tok_s.to_dict(2)
    assert d["prefill_tok_s"] == lib.prefill_tok_s.to_dict(1)
    faster = _json(capsys, [*argv, "--gpu", "rtx-3060-12gb", "--bandwidth", "720"])
    slower = _json(capsys, [*argv, "--gpu", "rtx-3060-12gb"])
    assert faster["decode_tok_s"]["point"] > slower["decode_tok_s"]["point"]
    assert main(["speed", "--bandwidth", "0"]) == 2 and "--bandwidth" in capsys.readouterr().err


def test_estimate_speed_is_the_transformers_speed_of_its_settings():
    """``estimate(...).speed`` is ``speed(...)`` of the same settings; None without a GPU."""
    e = estimate(model="llama-3.2-3b", quant="nf4", context=4096, batch=2, new_tokens=64, gpu="a100-80gb")
    s = e.speed
    assert s is not None
    assert s == S.speed("llama-3.2-3b", "nf4", "a100-80gb", context=4096, new_tokens=64, batch=2)
    assert s.aggregate_tok_s.point == pytest.approx(2 * s.decode_tok_s.point)
    assert estimate(model="llama-3.2-3b").speed is None
    assert estimate(model="llama-3.2-3b", gpu="rtx-4090-laptop-16gb").speed is None


def test_cli_speed_partial_offload_flags(capsys):
    """--n-gpu-layers and --host-bandwidth (GB/s) reach the library; a bad bandwidth exits 2."""
    argv = ["speed", "--model", "llama-3.1-8b", "--quant", "q4_k_m", "--engine", "llama.cpp"]
    argv += ["--gpu", "rtx-3060-12gb", "--n-gpu-layers", "16", "--host-bandwidth", "51.2", "--json"]
    d = _json(capsys, argv)
    lib = S.speed(
        "llama-3.1-8b",
        "q4_k_m",
        "rtx-3060-12gb",
        engine="llama.cpp",
        n_gpu_layers=16,
        host_bandwidth_bytes_per_s=51_200_000_000,
    )
    assert d["decode_tok_s"] == lib.decode_tok_s.to_dict(2) and d["host_read_bytes"] > 0
    assert main([*argv[:-3], "--host-bandwidth", "-3"]) == 2
    assert "--host-bandwidth" in capsys.readouterr().err

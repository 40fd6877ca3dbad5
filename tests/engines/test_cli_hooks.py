"""The --engine hooks, exercised on a parser built here (independent of estimator/cli.py wiring)."""

from __future__ import annotations

import argparse
import json

import pytest

from estimator.engines import EngineRefusal
from estimator.engines import cli as ecli
from estimator.errors import EstimatorError, InvalidSpecError
from estimator.model import load_preset

GiB = 1 << 30
MiB = 1 << 20
S3 = load_preset("llama-3.2-3b")
CORE_BYTES = (
    "weights_bytes",
    "kv_cache_bytes",
    "activations_bytes",
    "overhead_bytes",
    "device_used_bytes",
    "total_bytes",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    # the core parser's own options (estimator/cli.py _common)
    p.add_argument("--model", default="llama-3.2-3b")
    p.add_argument("--quant", default="bf16")
    p.add_argument("--context", default="8192")
    p.add_argument("--batch", default="1")
    p.add_argument("--kv-dtype", default="auto")
    p.add_argument("--gpu", default=None)
    p.add_argument("--gpu-memory", default=None)
    p.add_argument("--json", action="store_true")
    ecli.add_engine_arguments(p)
    return p


def run(argv: list[str], fit: bool = False, total: int | None = None) -> dict:
    a = parser().parse_args(argv)
    f = ecli.engine_fit if fit else ecli.engine_estimate
    return f(a, S3, None, total)


def test_adds_flags_without_clobbering_core_ones():
    p = parser()
    a = p.parse_args(
        [
            "--engine",
            "vllm",
            "--gpu-memory-utilization",
            "0.8",
            "--max-num-batched-tokens",
            "4096",
            "--max-num-seqs",
            "64",
            "--enforce-eager",
            "--vllm-version",
            "v0",
            "--parallel",
            "4",
            "--ubatch",
            "256",
            "--flash-attn",
            "--n-gpu-layers",
            "20",
        ]
    )
    assert (
        a.engine,
        a.gpu_memory_utilization,
        a.max_num_batched_tokens,
        a.max_num_seqs,
        a.enforce_eager,
        a.vllm_version,
        a.parallel,
        a.ubatch,
        a.flash_attn,
        a.n_gpu_layers,
    ) == ("vllm", 0.8, 4096, 64, True, "v0", 4, 256, True, 20)
    assert p.parse_args(["--engine", "ollama"]).engine == "llama.cpp"
    with pytest.raises(SystemExit):
        p.parse_args(["--engine", "tgi"])
    with pytest.raises(argparse.ArgumentError):  # each flag is added once, by its owner
        ecli.add_engine_arguments(p)


def test_vllm_estimate_fields():
    d = run(
        [
            "--engine",
            "vllm",
            "--quant",
            "fp16",
            "--context",
            "2048",
            "--max-num-seqs",
            "192",
            "--max-num-batched-tokens",
            "2048",
            "--gpu-memory-utilization",
            "0.894",
            "--vllm-version",
            "v0",
        ],
        total=round(14.74 * GiB),
    )
    for k in CORE_BYTES + ("kv_pool_bytes", "num_gpu_blocks", "max_concurrency"):
        assert k in d
    assert (
        d["weights_bytes"] + d["kv_cache_bytes"] + d["activations_bytes"] + d["overhead_bytes"]
        == d["device_used_bytes"]
    )
    assert d["settings"]["engine"] == "vllm" and d["settings"]["context"] == 2048
    assert abs(d["num_gpu_blocks"] - 3637) <= 36
    json.dumps(d)  # JSON-able


def test_vllm_refusal_is_engine_reason():
    with pytest.raises(EngineRefusal, match="larger than the maximum number of tokens that can be stored"):
        run(
            ["--engine", "vllm", "--context", "131072", "--vllm-version", "v0", "--max-num-batched-tokens", "2048"],
            total=16 * GiB,
        )
    assert issubclass(EngineRefusal, EstimatorError) and ecli.EngineRefusal is EngineRefusal


def test_vllm_needs_gpu_and_valid_quant():
    with pytest.raises(InvalidSpecError, match="--gpu"):
        run(["--engine", "vllm"])
    with pytest.raises(InvalidSpecError, match="--quant for vLLM"):
        run(["--engine", "vllm", "--quant", "q4_k_m"], total=80 * GiB)


def test_vllm_quant_takes_in_flight_quantization():
    """--quant bitsandbytes / fp8 become vLLM's --quantization: smaller weights, a larger KV pool."""
    from estimator.engines import vllm as vl

    base = run(["--engine", "vllm"], total=24 * GiB)
    bnb = run(["--engine", "vllm", "--quant", "bitsandbytes"], total=24 * GiB)
    fp8 = run(["--engine", "vllm", "--quant", "fp8"], total=24 * GiB)
    assert bnb["weights_bytes"] == sum(vl.weights_bytes_per_gpu(S3, 2, quantization="bitsandbytes").values())
    assert bnb["weights_bytes"] < fp8["weights_bytes"] < base["weights_bytes"]
    assert base["num_gpu_blocks"] < fp8["num_gpu_blocks"] < bnb["num_gpu_blocks"]


def test_llamacpp_estimate_fields_match_gt011():
    d = run(
        [
            "--engine",
            "llama.cpp",
            "--quant",
            "q4_k_m",
            "--context",
            "8192",
            "--parallel",
            "4",
            "--llamacpp-version",
            "2025-01",
        ],
        total=12 * GiB,
    )
    assert d["model_buffer_bytes"] == 2_011_539_712
    assert d["kv_buffer_bytes"] == 896 * MiB
    assert abs(d["compute_buffer_bytes"] / MiB - 424.0) < 0.01
    assert d["host_buffer_bytes"] == 323_205_120
    assert d["fits"] is True
    for k in CORE_BYTES:
        assert isinstance(d[k], int)


def test_llamacpp_bad_inputs():
    with pytest.raises(InvalidSpecError, match="--quant for llama.cpp"):
        run(["--engine", "llama.cpp", "--quant", "nf4"])
    with pytest.raises(InvalidSpecError, match="--kv-dtype"):
        run(["--engine", "llama.cpp", "--quant", "q4_k_m", "--kv-dtype", "fp8"])
    with pytest.raises(InvalidSpecError, match="flash-attn"):
        run(["--engine", "llama.cpp", "--quant", "q4_k_m", "--kv-dtype", "q8_0"])


def test_fit_hooks():
    d = run(["--engine", "llama.cpp", "--quant", "q4_k_m"], fit=True, total=12 * GiB)
    assert d["max_context"] > 8192 and d["estimate"]["device_used_bytes"] <= 12 * GiB
    d = run(["--engine", "vllm", "--vllm-version", "v1"], fit=True, total=16 * GiB)
    assert 0 < d["max_context"] < 131072 and d["estimate"]["num_gpu_blocks"] * 16 >= d["max_context"]
    with pytest.raises(InvalidSpecError):
        run(["--engine", "vllm"], fit=True)


def test_format_table_in_gib():
    for argv in (["--engine", "vllm", "--context", "4096"], ["--engine", "llama.cpp", "--quant", "q8_0"]):
        t = ecli.format_engine_table(run(argv, total=24 * GiB))
        assert "GiB" in t and " GB" not in t
    t = ecli.format_engine_table(run(["--engine", "llama.cpp", "--quant", "q4_k_m"], fit=True, total=12 * GiB))
    assert "largest context" in t


def test_safetensors_weights_override(tmp_path):
    """--safetensors: the checkpoint's exact tensor bytes replace the derived parameters."""
    import struct

    raw = json.dumps({"w": {"dtype": "BF16", "shape": [1000, 1000], "data_offsets": [0, 2_000_000]}}).encode()
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 2_000_000)
    d = run(["--engine", "vllm", "--context", "4096", "--safetensors", str(p)], total=24 * GiB)
    assert d["weights_bytes"] == 2_000_000 + 131072 * 128 * 2


def test_quant_vocabulary_one_per_engine_named_in_errors(capsys):
    """--quant: one list per engine, in --help and in the one-line error."""
    from estimator.cli import main

    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    for q in ecli.VLLM_QUANTS + ecli.LLAMACPP_QUANTS:
        assert q in flat
    with pytest.raises(InvalidSpecError) as e:
        run(["--engine", "vllm", "--quant", "q4_k_m"], total=24 * GiB)
    assert ", ".join(ecli.VLLM_QUANTS) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InvalidSpecError) as e:
        run(["--engine", "llama.cpp", "--quant", "nf4"])
    assert ", ".join(ecli.LLAMACPP_QUANTS) in str(e.value) and "\n" not in str(e.value)
    assert run(["--engine", "llama.cpp", "--quant", "q3_k_l"], total=24 * GiB)["settings"]["quant"] == "q3_k_l"

"""The estimate's range where derivation stops (CUDA context, allocator fragmentation), the
three-way fit verdict, and both in the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import estimator
from estimator import cli, overhead
from estimator.report import RANGE_FIELDS, VERDICTS, MemoryReport, fit_verdict
from estimator.units import GiB, MiB

GPUS = [None, "rtx-4060-8gb", "t4-16gb", "rtx-3090-24gb", "a100-40gb", "rtx-6000-ada-48gb"]


@given(
    model=st.sampled_from(["llama-3.2-1b", "llama-3.2-3b"]),
    quant=st.sampled_from(["bf16", "fp16", "int8", "nf4", "fp4"]),
    context=st.integers(min_value=64, max_value=16384),
    batch=st.integers(min_value=1, max_value=4),
    attn=st.sampled_from(["sdpa", "eager"]),
    gpu=st.sampled_from(GPUS),
)
def test_low_le_point_le_high(model, quant, context, batch, attn, gpu):
    e = estimator.estimate(model, quant, context, batch, attn=attn, gpu=gpu)
    assert e.peak_reserved_low_bytes <= e.peak_reserved_bytes <= e.peak_reserved_high_bytes
    assert e.device_used_low_bytes <= e.device_used_bytes <= e.device_used_high_bytes
    # allocated is derived term by term: its range is the point, so at most the reserved low end
    assert e.peak_allocated_bytes <= e.peak_reserved_low_bytes
    ctx_low, ctx_high = overhead.cuda_context_range_bytes(e.settings.gpu.cls if e.settings.gpu else "generic")
    assert e.device_used_low_bytes - e.peak_reserved_low_bytes == ctx_low
    assert e.device_used_high_bytes - e.peak_reserved_high_bytes == ctx_high


def test_exact_terms_have_no_spread():
    """Weights, KV, activations and allocated are exact: no range field, and with no fragmentation
    and the smallest context the low end is reserved + context, nothing else."""
    e = estimator.estimate("llama-3.2-3b", "bf16", 8192, gpu="rtx-4090-24gb")
    d = e.to_dict()
    for k in ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_allocated_bytes"):
        assert k.replace("_bytes", "_low_bytes") not in d and k.replace("_bytes", "_high_bytes") not in d
    assert e.peak_reserved_low_bytes == e.peak_reserved_bytes  # fragmentation low: 0
    frac = overhead.FRAGMENTATION_HIGH["sdpa"]
    assert e.peak_reserved_high_bytes - e.peak_reserved_bytes == math.ceil(
        frac * (e.peak_reserved_bytes - e.weights_bytes)
    )
    assert (e.device_used_low_bytes, e.device_used_high_bytes) == (
        e.peak_reserved_bytes + 256 * MiB,
        e.peak_reserved_high_bytes + 426 * MiB,
    )


def test_context_ranges_hold_the_point_and_eager_is_wider():
    for cls, (lo, hi) in overhead.CUDA_CONTEXT_RANGE_BYTES.items():
        assert 0 < lo <= overhead.cuda_context_bytes(cls) <= hi
    assert overhead.FRAGMENTATION_HIGH["eager"] > overhead.FRAGMENTATION_HIGH["sdpa"] > 0
    sdpa = estimator.estimate("llama-3.2-3b", "bf16", 4096)
    eager = estimator.estimate("llama-3.2-3b", "bf16", 4096, attn="eager")
    assert (eager.peak_reserved_high_bytes - eager.peak_reserved_bytes) > (
        sdpa.peak_reserved_high_bytes - sdpa.peak_reserved_bytes
    )


def test_fragmentation_bounds_reproduce_from_the_trace():
    """The committed constants are the trace validation's largest excess, rounded up to 0.001."""
    from pathlib import Path

    rows = json.loads((Path(__file__).resolve().parents[2] / "validation/trace/validation.json").read_text())["rows"]
    for attn, frac in overhead.FRAGMENTATION_HIGH.items():
        c = [r["counters"] for r in rows if r["settings"]["attn"] == attn]
        worst = max(
            (x["peak_reserved_bytes"]["measured"] - x["peak_reserved_bytes"]["estimate"])
            / (x["peak_reserved_bytes"]["estimate"] - x["weights_bytes"]["estimate"])
            for x in c
        )
        assert frac == math.ceil(worst * 1000) / 1000


def _report(low: int, point: int, high: int) -> MemoryReport:
    return MemoryReport(settings={}, device_used_bytes=point, device_used_low_bytes=low, device_used_high_bytes=high)


def test_verdict_three_cases_by_construction():
    r = _report(100, 110, 130)
    assert fit_verdict(r, 130) == "fits" and fit_verdict(r, 1000) == "fits"
    assert fit_verdict(r, 129) == "may fit" and fit_verdict(r, 110) == "may fit" and fit_verdict(r, 100) == "may fit"
    assert fit_verdict(r, 99) == "does not fit" and fit_verdict(r, 1) == "does not fit"
    point_only = MemoryReport(settings={}, device_used_bytes=110)
    assert fit_verdict(point_only, 110) == "fits" and fit_verdict(point_only, 109) == "does not fit"
    with pytest.raises(ValueError):
        fit_verdict(MemoryReport(settings={}), 10)
    assert set(VERDICTS) == {"fits", "may fit", "does not fit"}


def test_verdict_on_an_estimate():
    e = estimator.estimate("llama-3.2-3b", "bf16", 8192, gpu="rtx-4090-24gb")
    assert fit_verdict(e, e.device_used_high_bytes) == "fits"
    assert fit_verdict(e, e.device_used_bytes) == "may fit"
    assert fit_verdict(e, e.device_used_low_bytes - 1) == "does not fit"
    assert e.to_dict()["fit_verdict"] == fit_verdict(e, e.gpu_memory_bytes)
    assert estimator.estimate("llama-3.2-3b").to_dict()["fit_verdict"] is None  # no GPU: no verdict


def test_report_round_trip_keeps_the_range():
    e = estimator.estimate("llama-3.2-3b", "nf4", 8192, gpu="rtx-4060-8gb")
    back = MemoryReport.from_dict(e.to_dict(), source="estimate")
    assert all(getattr(back, k) == getattr(e, k) for k in RANGE_FIELDS)
    assert "fit_verdict" not in back.details
    d = back.to_dict()
    assert d["fit_verdict"] == e.to_dict()["fit_verdict"] and d["device_used_high_bytes"] == e.device_used_high_bytes
    plain = MemoryReport(settings={}, device_used_bytes=5)
    assert "fit_verdict" not in plain.to_dict() and "device_used_low_bytes" not in plain.to_dict()
    assert dataclasses.replace(plain).device_used_high_bytes is None


def test_cli_text_and_json(capsys):
    argv = ["estimate", "--quant", "nf4", "--context", "8k", "--gpu", "rtx-4060-8gb"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    e = estimator.estimate("llama-3.2-3b", "nf4", 8192, gpu="rtx-4060-8gb")
    lo, hi = e.device_used_low_bytes / GiB, e.device_used_high_bytes / GiB
    assert f"device used {lo:.3f}-{hi:.3f} GiB" in text
    assert f"on 8.00 GiB: fits, headroom {e.headroom_bytes / GiB:.2f} GiB; device used " in text
    assert f"({lo:.2f}-{hi:.2f} GiB)" in text
    assert cli.main([*argv, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fit_verdict"] == "fits"
    assert {k: d[k] for k in RANGE_FIELDS} == {k: getattr(e, k) for k in RANGE_FIELDS}


def test_cli_may_fit_and_does_not_fit(capsys):
    e = estimator.estimate("llama-3.2-3b", "bf16", 8192)
    for mem, want in ((e.device_used_bytes, "may fit"), (e.device_used_low_bytes - 1, "does not fit")):
        assert cli.main(["estimate", "--context", "8192", "--gpu-memory", str(mem)]) == 0
        assert f": {want}, headroom" in capsys.readouterr().out
        assert cli.main(["estimate", "--context", "8192", "--gpu-memory", str(mem), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["fit_verdict"] == want

"""Loading the runtime's result files and comparing them with the estimate (no Streamlit)."""

from __future__ import annotations

from pathlib import Path

import estimator

from app import measurements as m

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _est(**kw):
    return estimator.estimate(**kw).to_dict()


def test_load_results_empty_and_missing_dirs():
    assert m.load_results(FIXTURES / "empty").records == []
    assert m.load_results(FIXTURES / "does-not-exist").files == []


def test_load_results_skips_malformed_lines():
    loaded = m.load_results(FIXTURES / "with_gpu")
    kinds = [m.device_kind(r) for r in loaded.records]
    assert kinds.count("gpu") == 10 and kinds.count("trace") == 4
    assert len(loaded.problems) == 1 and "not JSON" in loaded.problems[0]


def test_compare_pairs_each_measured_counter():
    loaded = m.load_results(FIXTURES / "with_gpu")
    gpu = [r for r in loaded.records if m.device_kind(r) == "gpu"]
    points, problems = m.compare(gpu, _est)
    assert problems == []
    # 9 ok points x 5 counters; the OOM point is skipped
    assert len(points) == 45
    # Each point is a subtraction of the live estimate and the frozen measurement.
    for p in points:
        assert p["error_bytes"] == p["estimate_bytes"] - p["measured_bytes"]
        assert abs(p["error_pct"] - 100 * p["error_bytes"] / p["measured_bytes"]) < 1e-9
    table = {r["Counter"]: r for r in m.error_table(points)}
    assert table["weights"]["Exact matches"] == 9
    assert table["device used"]["Points"] == 9


def test_compare_trace_has_no_reserved_counters():
    loaded = m.load_results(FIXTURES / "trace_only")
    points, _ = m.compare(loaded.records, _est)
    # trace runs count live tensors: no reserved/device counters, and the live peak (not the CUDA
    # allocator's peak_allocated) is compared with weights + KV + activations.
    assert {p["counter"] for p in points} == {"weights_bytes", "kv_cache_bytes", "activations_bytes",
                                              "peak_live_bytes"}
    assert all(p["error_bytes"] == 0 for p in points)  # real trace lines (validation/trace): exact


def test_compare_reports_records_it_cannot_estimate():
    rec = {"settings": {"model": "no-such-model", "quant": "bf16", "context": 10}, "status": "ok",
           "peak_allocated_bytes": 1, "_source": "x.jsonl:1"}
    points, problems = m.compare([rec], _est)
    assert points == [] and "x.jsonl:1" in problems[0]


def test_environments_groups_points():
    loaded = m.load_results(FIXTURES / "with_gpu")
    envs = m.environments(loaded.records)
    h100 = next(e for e in envs if e["gpu_name"])
    assert h100["points"] == 10 and h100["driver"] == "570.86.15"

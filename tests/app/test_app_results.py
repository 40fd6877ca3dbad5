"""Loading the runtime's result files and comparing them with the estimate (no Streamlit)."""

from __future__ import annotations

import json
from pathlib import Path

import estimator
from app import results as m

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _est(**kw):
    return estimator.estimate(**kw)


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


def test_compare_trace_counters():
    loaded = m.load_results(FIXTURES / "trace_only")
    points, problems = m.compare(loaded.records, _est)
    assert not problems
    # trace runs: the live peak is compared with weights + KV + activations, and allocated/reserved
    # come from the allocator simulation (estimated for the GPU it names); no device counter.
    assert {p["counter"] for p in points} == {
        "weights_bytes",
        "kv_cache_bytes",
        "activations_bytes",
        "peak_live_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
    }
    by = {}
    for p in points:
        by.setdefault(p["counter"], []).append(p["error_bytes"])
    for c in ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_live_bytes"):
        assert by[c] == [0, 0, 0, 0], c  # real trace lines (validation/trace): exact
    # allocated: the estimate is below the simulation by the carved blocks the allocator charges
    # whole (at most 1 MiB each)
    assert all(-8 * 2**20 <= e <= 0 for e in by["peak_allocated_bytes"])
    # the page compares what `python -m runtime validate` compares, for the simulation's GPU
    from runtime.validate import compare as runtime_compare

    for rec in loaded.records:
        row = runtime_compare({k: v for k, v in rec.items() if k != "_source"})["counters"]
        mine = {p["counter"]: p for p in points if p["source"] == rec["_source"]}
        for c in ("peak_allocated_bytes", "peak_reserved_bytes"):
            assert mine[c]["estimate_bytes"] == row[c]["estimate"] and mine[c]["measured_bytes"] == row[c]["measured"]


def test_compare_old_trace_lines_skip_allocator_counters():
    """A trace line from before the allocator simulation (no details.allocator_sim): its
    peak_allocated is a rounded live peak, not comparable with the allocator's; it is left out."""
    rec = dict(m.load_results(FIXTURES / "trace_only").records[0])
    rec["details"] = {k: v for k, v in rec["details"].items() if k != "allocator_sim"}
    points, _ = m.compare([rec], _est)
    assert {p["counter"] for p in points} == {"weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_live_bytes"}


def test_compare_reports_records_it_cannot_estimate():
    rec = {
        "settings": {"model": "no-such-model", "quant": "bf16", "context": 10},
        "status": "ok",
        "peak_allocated_bytes": 1,
        "_source": "x.jsonl:1",
    }
    points, problems = m.compare([rec], _est)
    assert points == [] and "x.jsonl:1" in problems[0]


def test_environments_groups_points():
    loaded = m.load_results(FIXTURES / "with_gpu")
    envs = m.environments(loaded.records)
    h100 = next(e for e in envs if e["gpu_name"])
    assert h100["points"] == 10 and h100["driver"] == "570.86.15"


GOOD = {
    "settings": {"model": "llama-3.2-3b", "quant": "bf16", "context": 1024, "batch": 1, "device": "trace"},
    "status": "ok",
    "weights_bytes": 6425500160,
    "phases": {"load": {"weights_bytes": 6425500160}},
    "details": {"peak_live_bytes": 1},
    "environment": {"torch": "2.6"},
}
BAD_LINES = [
    b'{"settings": {}, "weights_bytes": 1.5}',  # float counter
    b'{"settings": {}, "weights_bytes": NaN}',
    b'{"settings": {}, "kv_cache_bytes": Infinity}',
    b'{"settings": {}, "device_used_bytes": -Infinity}',
    b'{"settings": {}, "weights_bytes": true}',  # bool counter
    b'{"settings": {}, "weights_bytes": "12"}',
    b'{"settings": {}, "weights_bytes": -1}',
    b'{"settings": {}, "weights_bytes": 1' + b"0" * 5000 + b"}",  # huge integer
    b'{"settings": {}, "weights_bytes": 100000000000000000000000}',  # over 1 EiB
    b'{"settings": [], "status": "ok"}',  # non-dict settings
    b'{"settings": "x"}',
    b'{"settings": {}, "phases": []}',  # non-dict phases
    b'{"settings": {}, "phases": {"load": 5}}',
    b'{"settings": {}, "phases": {"load": {"weights_bytes": 1e999}}}',
    b'{"settings": {}, "environment": [1]}',
    b'{"settings": {}, "environment": {"gpu_name": {"a": 1}}}',
    b'{"settings": {}, "environment": {"gpu_total_memory_bytes": 8.5e10}}',
    b'{"settings": {}, "details": "x"}',
    b'{"settings": {}, "details": {"peak_live_bytes": [1]}}',
    b'{"settings": {}, "status": ["ok"]}',
    b"[1, 2, 3]",  # a list instead of an object
    b'"just a string"',
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError
    b'{"settings": {"model": "' + b"\xff\xfe" + b'"}}',  # not UTF-8
    b"\xc3\x28",
    b"not json at all",
]


def _write(tmp_path, name: str = "bad.jsonl") -> Path:
    lines = [json.dumps(GOOD).encode(), *BAD_LINES, b"", json.dumps(GOOD).encode()]
    (tmp_path / name).write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path


def test_load_results_skips_every_hostile_line(tmp_path):
    """Bad lines are skipped, each reported with its file:line; good lines around them load."""
    loaded = m.load_results(_write(tmp_path))
    assert [r["_source"] for r in loaded.records] == ["bad.jsonl:1", f"bad.jsonl:{len(BAD_LINES) + 3}"]
    assert loaded.skipped == len(loaded.problems) == len(BAD_LINES)
    for i, p in enumerate(loaded.problems, 2):
        assert p.startswith(f"bad.jsonl:{i}: ") and len(p) < 400
    why = " ".join(loaded.problems)
    for text in (
        "not a byte count",
        "not JSON",
        "nested too deeply",
        "not UTF-8",
        "no 'settings' object",
        "'phases' is not an object",
        "not a JSON object (a list)",
    ):
        assert text in why
    points, problems = m.compare(loaded.records, _est)
    assert problems == [] and points
    assert all(isinstance(p["measured_bytes"], int) for p in points)


def test_load_results_caps_the_problem_list(tmp_path):
    (tmp_path / "many.jsonl").write_bytes(b"x\n" * (m.MAX_PROBLEMS + 50))
    loaded = m.load_results(tmp_path)
    assert loaded.skipped == m.MAX_PROBLEMS + 50 and len(loaded.problems) == m.MAX_PROBLEMS


def test_compare_ignores_counters_that_are_not_byte_counts():
    rec = {
        **GOOD,
        "settings": {**GOOD["settings"], "device": "cuda"},
        "weights_bytes": float("nan"),
        "kv_cache_bytes": True,
        "peak_allocated_bytes": "1",
        "_source": "x.jsonl:1",
    }
    points, problems = m.compare([rec], _est)
    assert problems == [] and points == []


def test_point_label_and_environments_are_bounded_text():
    rec = {"settings": {"model": ["x"] * 1000, "device": {"a": 1}}, "environment": {"gpu_name": "y" * 1000}}
    assert len(m.point_label(rec)) < 400
    env = m.environments([rec])[0]
    assert isinstance(env["device"], str) and len(env["gpu_name"]) <= 200

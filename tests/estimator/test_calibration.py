"""The calibration report: every public row the estimator reproduces, its residual and whether
the estimate covers it; the coverage is a recount of ``public.compare()``."""

from __future__ import annotations

import json
from pathlib import Path

from estimator import calibration, cli
from estimator.engines import public

ROOT = Path(__file__).resolve().parents[2]


def test_rows_match_public_compare():
    rep = calibration.report()
    rows = {r["id"]: r for r in rep["rows"] if r["source"] == "public log"}
    cmp = public.compare()
    assert set(rows) == {r["id"] for r in cmp}
    for r in cmp:
        c = rows[r["id"]]
        assert c["measured"] == r["measured"] and c["estimate"] == r["estimate"]
        if r["estimate"] is None:
            assert c["covered"] is None and c["residual"] is None
        else:
            assert c["residual"] == r["estimate"] - r["measured"]
            if r["id"] in public.RANGES:
                # a vLLM non-torch / CUDA-graph row: covered inside the estimate's range
                low, high = public.RANGES[r["id"]]()
                assert (c["low"], c["high"]) == (low, high) and c["covered"] == (low <= r["measured"] <= high)
                continue
            # no range on the other public rows: covered only within its tolerance
            assert c["low"] is None and c["covered"] == (r["within"] is True)
            assert c["covered"] == (abs(c["residual"]) <= c["tolerance"]) or r["id"] in public.NOT_DERIVABLE


def test_coverage_is_a_recount():
    rep = calibration.report()
    cmp = public.compare()
    in_range = {rid: f() for rid, f in public.RANGES.items()}
    covered = sum(
        (in_range[r["id"]][0] <= r["measured"] <= in_range[r["id"]][1]) if r["id"] in in_range else r["within"] is True
        for r in cmp
        if r["estimate"] is not None
    ) + sum(r["covered"] for r in rep["rows"] if r["source"] == "cuda sweep")
    total = sum(r["estimate"] is not None for r in cmp) + rep["summary"]["cuda_points"]
    s = rep["summary"]
    assert (s["covered"], s["total"]) == (covered, total)
    assert s["coverage"] == covered / total and s["target"] == 0.95
    assert s["meets_target"] == (covered / total >= 0.95)
    assert s["not_estimated"] == [r["id"] for r in cmp if r["estimate"] is None]


def test_cuda_rows_cover_inside_the_range(tmp_path):
    """A cuda point: reserved and device used covered inside [low, high], the rest within tolerance."""
    import estimator

    e = estimator.estimate("llama-3.2-1b", "bf16", 2048, gpu="rtx-4090-24gb")
    rec = {
        "settings": {**e.settings.to_dict(), "device": "cuda:0"},
        "status": "ok",
        "weights_bytes": e.weights_bytes,
        "kv_cache_bytes": e.kv_cache_bytes,
        "peak_allocated_bytes": e.peak_allocated_bytes,
        "peak_reserved_bytes": e.peak_reserved_high_bytes,
        "device_used_bytes": e.device_used_high_bytes + 1,
    }
    d = tmp_path / "run"
    d.mkdir()
    (d / "sweep.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "status": "oom"}) + "\nnot json\n")
    pts = calibration.cuda_points(tmp_path)
    assert len(pts) == 1
    rows = {r["counter"]: r for r in calibration.cuda_rows(pts)}
    assert rows["peak_reserved_bytes"]["covered"] and rows["peak_reserved_bytes"]["low"] == e.peak_reserved_bytes
    assert rows["device_used_bytes"]["covered"] is False  # one byte above the high end
    assert rows["weights_bytes"]["covered"] and rows["peak_allocated_bytes"]["covered"]


def test_committed_validation_has_no_cuda_points_yet():
    assert calibration.cuda_points() == [] or all(
        r["settings"]["device"].startswith("cuda") for r in calibration.cuda_points()
    )


def test_cli_calibration(capsys):
    assert cli.main(["calibration"]) == 0
    text = capsys.readouterr().out
    assert calibration.summary_line(calibration.report()) in text and "GT-001" in text
    assert cli.main(["calibration", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["summary"] == calibration.report()["summary"]


def test_committed_report_is_current():
    """validation/calibration.md and .json are the command's output (regenerate: see the .md)."""
    rep = calibration.report()
    assert (ROOT / "validation/calibration.md").read_text(encoding="utf-8") == calibration.format_markdown(rep)
    assert json.loads((ROOT / "validation/calibration.json").read_text(encoding="utf-8")) == json.loads(json.dumps(rep))

"""`python -m estimator check`: the runtime's own JSONL against the estimate, the CLI's table and
JSON, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import estimator
from estimator.check import CheckResult, LogNotRecognised, check_log
from estimator.report import compare_record, estimate_arguments

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "validation" / "trace" / "sweep.jsonl"


def _cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "estimator", "check", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def test_runtime_jsonl_terms_are_the_validation_comparison():
    lines = TRACE.read_text().splitlines()[:3]
    r = check_log("\n".join(lines))
    assert isinstance(r, CheckResult) and r.engine == "runtime" and r.inferred["points"] == 3
    recs = [json.loads(x) for x in lines]
    want = [v for rec in recs for v in compare_record(rec, estimator.estimate(**estimate_arguments(rec))).values()]
    assert [(t.logged, t.predicted) for t in r.terms] == [(v["measured"], v["estimate"]) for v in want]
    assert all(t.owner for t in r.terms)


def test_cli_table_and_json(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(TRACE.read_text().splitlines()[:1]) + "\n")
    p = _cli(str(f))
    assert p.returncode == 0 and "runtime log (transformers" in p.stdout and "GiB" in p.stdout
    d = json.loads(_cli(str(f), "--json").stdout)
    assert d["engine"] == "runtime" and d["terms"][0]["name"].endswith("weights")
    assert d["terms"][0]["difference"] == 0


def test_nothing_recognisable_exits_2_with_one_line(tmp_path):
    p = _cli("-", stdin="just some text\n")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: log:")
    with pytest.raises(LogNotRecognised):
        check_log("nothing here")
    missing = _cli(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_oversized_input_is_refused():
    from estimator.check import MAX_LOG_BYTES

    with pytest.raises(estimator.InvalidSpecError, match="MiB"):
        check_log(b"x" * (MAX_LOG_BYTES + 1))

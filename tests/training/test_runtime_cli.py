"""python -m runtime train-measure: the JSONL record, and bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", "train-measure", *args], capture_output=True, text=True)


def test_trace_record_appended(narrow_dir, tmp_path):
    out = tmp_path / "t.jsonl"
    p = _run("--model", narrow_dir, "--seq-len", "32", "--optimizer", "sgd", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r == json.loads(out.read_text())
    assert r["status"] == "ok" and r["settings"]["device"] == "trace"
    assert set(r["phases"]) == {"load", "forward", "backward", "optimizer"}
    t = r["training"]
    assert t["trainable_params"] == 2 * (16 * (256 + 256) * 2 + 16 * (256 + 128) * 2 + 16 * (256 + 512) * 3)
    assert t["optimizer_states_bytes"] == 0  # SGD without momentum keeps nothing
    assert r["peak_allocated_bytes"] == max(
        r["phases"][p]["peak_allocated_bytes"] for p in ("forward", "backward", "optimizer")
    )


@pytest.mark.parametrize(
    "args,field",
    [
        (["--method", "prefix"], "method"),
        (["--seq-len", "x"], "seq_len"),
        (["--dropout", "1.5"], "dropout"),
        (["--device", "tpu"], "device"),
        (["--device", "cuda"], "cuda"),
        (["--grad-checkpointing", "always"], "grad_checkpointing"),
    ],
)
def test_bad_input_exits_2(args, field):
    p = _run(*args)
    if field == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]

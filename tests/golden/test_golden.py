"""Golden snapshot: what the CLI prints for the README's examples, and what `python -m runtime validate`
writes for the committed validation data, to the byte.

Taken before the issue-11 refactor (which changes no number). A deliberate change of a number
regenerates the snapshot with ``UPDATE_GOLDEN=1 python -m pytest tests/golden`` and the diff is
reviewed in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAP = Path(__file__).resolve().parent / "snapshots"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# (name, argv of `python -m estimator`): the README's examples plus the JSON form of each table.
CLI = [
    (
        "estimate-3b-nf4-8k-4060",
        [
            "estimate",
            "--model",
            "llama-3.2-3b",
            "--quant",
            "nf4",
            "--context",
            "8k",
            "--batch",
            "1",
            "--gpu",
            "rtx-4060-8gb",
        ],
    ),
    (
        "estimate-3b-nf4-8k-4060-json",
        [
            "estimate",
            "--model",
            "llama-3.2-3b",
            "--quant",
            "nf4",
            "--context",
            "8k",
            "--batch",
            "1",
            "--gpu",
            "rtx-4060-8gb",
            "--json",
        ],
    ),
    (
        "estimate-bf16-128k-json",
        ["estimate", "--model", "llama-3.2-3b", "--quant", "bf16", "--context", "128K", "--json"],
    ),
    (
        "estimate-int8-32k-eager-json",
        ["estimate", "--quant", "int8", "--context", "32768", "--attn", "eager", "--gpu-memory", "24GiB", "--json"],
    ),
    (
        "estimate-8b-nf4-t4-chunk",
        [
            "estimate",
            "--model",
            "llama-3.1-8b",
            "--quant",
            "nf4",
            "--context",
            "8k",
            "--gpu",
            "t4-16gb",
            "--prefill-chunk",
            "1024",
            "--json",
        ],
    ),
    ("fit-3b-nf4-4060-json", ["fit", "--model", "llama-3.2-3b", "--quant", "nf4", "--gpu", "rtx-4060-8gb", "--json"]),
    ("sweep-csv", ["sweep", "--quants", "bf16,nf4", "--contexts", "1k,8k,32k,128k"]),
    ("gpus-json", ["gpus", "--json"]),
    ("quants-json", ["quants", "--json"]),
    ("vllm-h100-128k", ["estimate", "--engine", "vllm", "--gpu", "h100-sxm-80gb", "--context", "131072"]),
    (
        "vllm-h100-128k-json",
        ["estimate", "--engine", "vllm", "--gpu", "h100-sxm-80gb", "--context", "131072", "--json"],
    ),
    ("vllm-t4-128k-refusal", ["estimate", "--engine", "vllm", "--gpu", "t4-16gb", "--context", "131072"]),
    (
        "vllm-t4-bnb-8k-json",
        ["estimate", "--engine", "vllm", "--quant", "bitsandbytes", "--gpu", "t4-16gb", "--context", "8192", "--json"],
    ),
    ("vllm-fit-l4-json", ["fit", "--engine", "vllm", "--gpu", "l4-24gb", "--json"]),
    (
        "llamacpp-q4km-4070",
        [
            "estimate",
            "--engine",
            "llama.cpp",
            "--quant",
            "q4_k_m",
            "--context",
            "8192",
            "--parallel",
            "4",
            "--gpu",
            "rtx-4070-12gb",
        ],
    ),
    (
        "llamacpp-q4km-4070-json",
        [
            "estimate",
            "--engine",
            "llama.cpp",
            "--quant",
            "q4_k_m",
            "--context",
            "8192",
            "--parallel",
            "4",
            "--gpu",
            "rtx-4070-12gb",
            "--json",
        ],
    ),
    (
        "llamacpp-fit-4060-json",
        ["fit", "--engine", "llama.cpp", "--quant", "q4_k_m", "--gpu", "rtx-4060-8gb", "--json"],
    ),
    (
        "llamacpp-offload-json",
        [
            "estimate",
            "--engine",
            "llama.cpp",
            "--model",
            "llama-3.1-8b",
            "--quant",
            "q8_0",
            "--context",
            "32768",
            "--n-gpu-layers",
            "20",
            "--gpu",
            "rtx-4060-8gb",
            "--json",
        ],
    ),
    # issue 13: the training step (the CLI example as it ran in PEFT's plain loop, and under
    # the Trainer's bf16=True with gradient checkpointing), fp32 master weights, and a solver
    (
        "train-qlora-4090",
        "train --method qlora --rank 16 --targets all-linear --optimizer paged-adamw-8bit --seq-len 4096 "
        "--micro-batch 2 --gpu rtx-4090-24gb".split(),
    ),
    (
        "train-qlora-4090-bf16-gc-json",
        "train --method qlora --rank 16 --targets all-linear --optimizer paged-adamw-8bit --seq-len 4096 "
        "--micro-batch 2 --gpu rtx-4090-24gb --mixed-precision bf16 --grad-checkpointing non-reentrant --json".split(),
    ),
    (
        "train-full-fp32-h100-json",
        "train --method full --quant fp32 --mixed-precision bf16 --seq-len 2048 --gpu h100-sxm-80gb --json".split(),
    ),
    (
        "train-lora-solve-seq-len",
        "train --method lora --gpu rtx-4090-24gb --mixed-precision bf16 --solve seq-len".split(),
    ),
]


def _cli(argv: list[str]) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "estimator", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"


def _check(name: str, text: str) -> None:
    path = SNAP / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no snapshot {path.name}: run UPDATE_GOLDEN=1 python -m pytest tests/golden"
    assert text == path.read_text(), f"{name} changed; diff it against {path}"


@pytest.mark.parametrize("name,argv", CLI, ids=[n for n, _ in CLI])
def test_cli_output_unchanged(name, argv):
    """Tables to the byte; JSON as parsed objects (every key and number, in any key order)."""
    text = _cli(argv)
    if "--json" not in argv or UPDATE:
        _check(f"cli/{name}.txt", text)
        return
    want = (SNAP / "cli" / f"{name}.txt").read_text()
    head, _, body = text.partition("--- stdout\n")
    whead, _, wbody = want.partition("--- stdout\n")
    out, _, err = body.partition("--- stderr\n")
    wout, _, werr = wbody.partition("--- stderr\n")
    assert (head, err) == (whead, werr)
    assert json.loads(out) == json.loads(wout), f"{name}: JSON changed"


@pytest.mark.parametrize("data", ["trace", "cpu-rehearsal"])
def test_committed_validation_reproduced_to_the_byte(data, tmp_path):
    """`python -m runtime validate` on a committed sweep rewrites its committed report byte for byte."""
    pytest.importorskip("torch")
    src = ROOT / "validation" / data
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "validate",
            "--results",
            str(src / "sweep.jsonl"),
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    for f in ("validation.json", "validation.md"):
        assert (tmp_path / f).read_bytes() == (src / f).read_bytes(), f"{data}/{f} differs"


def test_public_engine_logs_reproduced_unchanged():
    from estimator.engines import public

    _check("public-compare.json", json.dumps(public.compare(), indent=1, sort_keys=True, default=str) + "\n")

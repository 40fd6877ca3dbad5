"""python -m estimator train (table, --json, --solve, exit 2) and the training solvers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from estimator.cli import main
from estimator.estimate import PRE_SM80_ARCHS
from estimator.gpus import get_gpu, gpu_catalog
from estimator.training import estimate_training
from estimator.training.solve import best_method, max_micro_batch, max_seq_len, smallest_gpu

ISSUE_CMD = [
    "train",
    "--method",
    "qlora",
    "--rank",
    "16",
    "--targets",
    "all-linear",
    "--optimizer",
    "paged-adamw-8bit",
    "--seq-len",
    "4096",
    "--micro-batch",
    "2",
    "--gpu",
    "rtx-4090-24gb",
]


def test_issue_command_json(capsys):
    assert main(ISSUE_CMD + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    e = estimate_training(
        method="qlora",
        rank=16,
        targets="all-linear",
        optimizer="paged-adamw-8bit",
        seq_len=4096,
        micro_batch=2,
        gpu="rtx-4090-24gb",
    )
    assert d["device_used_bytes"] == e.device_used_bytes
    assert d["trainable_line"] == "trainable params: 24,313,856 || all params: 3,237,063,680 || trainable%: 0.7511"
    assert d["settings"]["quant"] == "nf4" and d["fit_verdict"] in ("fits", "may fit", "does not fit")
    for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "gradients_bytes"):
        assert type(d[k]) is int


def test_table_names_every_part(capsys):
    assert main(["train", "--seq-len", "1k", "--gpu", "rtx-4090-24gb"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "adapter weights", "gradients", "optimizer states", "activations saved", "GiB", "fits"):
        assert word in out


@pytest.mark.parametrize(
    "args,field",
    [
        (["--method", "dora"], "method"),
        (["--optimizer", "lion"], "optimizer"),
        (["--seq-len", "abc"], "seq-len"),
        (["--rank", "0"], "rank"),
        (["--targets", "wq"], "targets"),
        (["--dropout", "x"], "dropout"),
        (["--gpu", "nope"], "gpu"),
        (["--solve", "everything", "--gpu", "rtx-4090-24gb"], "solve"),
        (["--solve", "seq-len"], "gpu"),
        (["--method", "qlora", "--quant", "int8"], "quant"),
        (["--gpu", "v100-32gb"], "gpu"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, field):
    p = subprocess.run([sys.executable, "-m", "estimator", "train", *args], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0]


def test_max_seq_len_is_the_boundary():
    g = get_gpu("rtx-4090-24gb")
    t = max_seq_len(method="lora", gpu=g)
    assert estimate_training(method="lora", seq_len=t, gpu=g).device_used_bytes <= g.memory_bytes
    assert estimate_training(method="lora", seq_len=t + 1, gpu=g).device_used_bytes > g.memory_bytes
    assert max_seq_len(method="lora", gpu=g, grad_checkpointing="non-reentrant") > t


def test_max_micro_batch_and_smallest_gpu():
    g = get_gpu("h100-sxm-80gb")
    b = max_micro_batch(method="lora", seq_len=2048, gpu=g)
    assert b >= 1
    assert estimate_training(method="lora", seq_len=2048, micro_batch=b, gpu=g).fits
    assert not estimate_training(method="lora", seq_len=2048, micro_batch=b + 1, gpu=g).fits
    s = smallest_gpu(method="lora", seq_len=2048)
    assert s is not None
    assert s.arch not in PRE_SM80_ARCHS
    smaller = [x for x in gpu_catalog() if x.memory_bytes < s.memory_bytes and x.arch not in PRE_SM80_ARCHS]
    for x in smaller:
        assert not estimate_training(method="lora", seq_len=2048, gpu=x).fits


def test_best_method_order():
    # 80 GB: a full fine-tune of 3B at 512 tokens (weights, bf16 grads, AdamW states: ~30 GiB) fits
    assert best_method(seq_len=512, gpu="h100-sxm-80gb") == "full"
    # 24 GB: full does not (6 B x 3.2 B of grads and states alone), LoRA at 512 tokens does
    assert best_method(seq_len=512, gpu="rtx-4090-24gb") == "lora"
    assert best_method(seq_len=512, gpu_memory_bytes=1 << 30) is None


def test_solve_cli(capsys):
    assert main(["train", "--solve", "seq-len", "--gpu", "rtx-4090-24gb", "--json"]) == 0
    n = json.loads(capsys.readouterr().out)["max_seq_len"]
    assert n == max_seq_len(method="lora", gpu="rtx-4090-24gb")

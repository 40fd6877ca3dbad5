"""Fuzz the CLI and the library with random valid and invalid input.

Contract (issue 9): every CLI run exits 0 or 2; exit 2 prints exactly one stderr line; nothing
prints a traceback; every run ends within a time bound. Library calls either return or raise an
``EstimatorError`` (``InvalidSpecError``/``UnknownNameError``), never another exception.

The GGUF/safetensors readers are fuzzed in tests/engines/test_gguf_file.py and the app's query
parameters in tests/app/test_app_fuzz.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from estimator import cli
from estimator.errors import EstimatorError
from estimator.estimate import estimate
from estimator.solve import best_quant, max_batch, max_context, sweep

ROOT = Path(__file__).resolve().parents[2]
# A hang bound, not a speed target: the slowest valid command here (fit on a random setting,
# 1-2 s on a 2-core CI machine) is far below it, a loop over a 2^62-item header is far above.
HANG_BOUND_S = 60.0

# numbers as users type them, plus the hostile ones the issue names
NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=140_000).map(str),
    st.sampled_from(
        [
            "0",
            "1",
            "8k",
            "8K",
            "128K",
            "1.5k",
            "1M",
            "100,000",
            "32_768",
            "24GiB",
            "80 GB",
            "512MiB",
            "0.9",
            "1e9",
            "nan",
            "inf",
            "-inf",
            "",
            " ",
            "²",
            "٣٢",
            "１２",
            "8x",
            "-1",
            "1" * 300,
            "9" * 30,
            "10" * 700,
            "0x10",
            "1_000_000_000_000",
            "1,2,3",
            ",",
            "\x00",
            "8k\n",
        ]
    ),
    st.text(max_size=12),
)
NAMES = st.one_of(
    st.sampled_from(
        [
            "bf16",
            "BF16",
            "nf4",
            "nf4-dq",
            "int8",
            "fp8",
            "fp32",
            "gptq-int4",
            "q4_k_m",
            "Q4_K_M",
            "auto",
            "int4",
            "sdpa",
            "eager",
            "static",
            "dynamic",
            "last",
            "full-fp32",
            "vllm",
            "llama.cpp",
            "transformers",
            "v0",
            "v1",
            "rtx-4090-24gb",
            "h100-80gb",
            "a100-40gb",
            "t4-16gb",
            "llama-3.2-1b",
            "llama-3.2-3b",
            "llama-3.1-8b",
            "no-such",
            "",
        ]
    ),
    st.text(max_size=10),
)
OPTIONS = {  # option -> values it is fuzzed with
    "--model": NAMES,
    "--quant": NAMES,
    "--context": NUMBERS,
    "--batch": NUMBERS,
    "--kv-dtype": NAMES,
    "--attn": NAMES,
    "--new-tokens": NUMBERS,
    "--cache": NAMES,
    "--logits": NAMES,
    "--prefill-chunk": NUMBERS,
    "--bnb-compute-dtype": NAMES,
    "--gpu": NAMES,
    "--gpu-memory": NUMBERS,
    "--engine": NAMES,
    "--gpu-memory-utilization": NUMBERS,
    "--max-num-batched-tokens": NUMBERS,
    "--max-num-seqs": NUMBERS,
    "--tensor-parallel-size": NUMBERS,
    "--pipeline-parallel-size": NUMBERS,
    "--parallel": NUMBERS,
    "--ubatch": NUMBERS,
    "--n-gpu-layers": NUMBERS,
    "--quants": NAMES,
    "--contexts": NUMBERS,
}
FLAGS = ["--json", "--padding", "--enforce-eager", "--flash-attn"]
COMMANDS = ["estimate", "fit", "sweep", "gpus", "quants"]


@st.composite
def argvs(draw) -> list[str]:
    argv = [draw(st.sampled_from(COMMANDS))]
    for opt in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=5, unique=True)):
        argv += [opt, draw(OPTIONS[opt])]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    return argv


def _run_in_process(argv: list[str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse: --help exits 0, a usage error exits 2
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue(), time.monotonic() - t0


def _check_cli_contract(argv: list[str], rc: int, out: str, err: str, took_s: float) -> None:
    assert rc in (0, 2), (argv, rc, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), (argv, err)
    else:
        assert not err.strip(), (argv, err)
        if "--json" in argv and argv[0] in ("estimate", "fit", "sweep"):
            json.loads(out)  # --json prints one JSON document
    assert took_s < HANG_BOUND_S, (argv, took_s)


@given(argvs())
def test_cli_fuzz_exit_0_or_2_one_line(argv):
    rc, out, err, took = _run_in_process(argv)
    _check_cli_contract(argv, rc, out, err, took)


def test_cli_fuzz_examples_as_a_subprocess():
    """The same contract through the real entry point (interpreter start, argv encoding)."""
    cases = [
        ["estimate", "--context", "1" * 300],
        ["estimate", "--context", "²"],
        ["fit", "--gpu-memory", "9" * 400],
        ["estimate", "--engine", "llama.cpp", "--context", str(10**28)],
        ["sweep", "--quants", ""],
        ["sweep", "--contexts", ","],
        ["estimate", "--engine", "vllm", "--max-num-seqs", "0"],
        ["estimate", "--model", "\udcff"],
        ["fit", "--gpu", "rtx-4090-24gb", "--batch", "8", "--json"],
    ]
    for argv in cases:
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "estimator", *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=HANG_BOUND_S,
            errors="replace",
        )
        _check_cli_contract(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=200_000),
    st.integers(min_value=10**20, max_value=10**40),
    st.floats(allow_nan=True),
    NAMES,
    NUMBERS,
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SETTING_KEYS = [
    "quant",
    "context",
    "batch",
    "kv_dtype",
    "attn",
    "new_tokens",
    "cache",
    "padding",
    "logits",
    "prefill_chunk",
    "bnb_compute_dtype",
]


@given(
    st.sampled_from(["llama-3.2-1b", "llama-3.2-3b", "no-such", 7, {"hidden_size": "x"}]),
    st.dictionaries(st.sampled_from(SETTING_KEYS), VALUES, max_size=4),
    st.sampled_from([None, "rtx-4090-24gb", "t4-16gb", "nope", 3]),
    st.one_of(st.none(), st.integers(min_value=-1, max_value=1 << 41), st.floats(), st.text(max_size=4)),
)
def test_library_fuzz_returns_or_raises_estimator_error(model, kw, gpu, mem):
    calls = [
        lambda: estimate(model, gpu=gpu, **kw),
        lambda: max_context(model, gpu=gpu, gpu_memory_bytes=mem, **{k: v for k, v in kw.items() if k != "context"}),
        lambda: max_batch(model, gpu=gpu, gpu_memory_bytes=mem, **kw),
        lambda: best_quant(model, gpu=gpu, gpu_memory_bytes=mem, **{k: v for k, v in kw.items() if k != "quant"}),
        lambda: sweep(
            model, contexts=[kw.get("context", 8192)], gpu=gpu, **{k: v for k, v in kw.items() if k != "context"}
        ),
    ]
    for call in calls:
        t0 = time.monotonic()
        try:
            call()
        except EstimatorError as e:
            assert str(e) and "\n" not in str(e), repr(e)
        assert time.monotonic() - t0 < HANG_BOUND_S

"""Packed (padding-free) batches: the micro-batch's sequences flattened into one row [1, N] with
position_ids restarting per sequence (transformers' DataCollatorWithFlattening), under SDPA
(a block-causal mask, mem-efficient kernel, repeat_kv) and flash_attention_2 (varlen). Traces at
narrow width equal the estimate to the byte; hand-derived goldens; bad input names the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_estimate import _check, _estimate

from estimator.errors import InvalidSpecError
from estimator.training import estimate_training
from estimator.training.activations import saved_tensors
from estimator.training.params import LAYER_TARGETS
from estimator.training.solve import best_method, max_micro_batch


def _saved(**kw):
    spec = estimate_training().settings.model
    args = dict(method="lora", targets=LAYER_TARGETS, rank=16, adapter_bytes=4, dropout=False)
    args.update(grad_checkpointing="off", seq_len=2048, micro_batch=4)
    args.update(kw)
    return saved_tensors(spec, **args)


def test_golden_mask_and_repeat_kv_3b_4x2k():
    """Llama 3.2 3B, LoRA r=16 all-linear, 4 sequences of 2,048 tokens packed (N = 8,192).

    SDPA: every layer's attention (q, k, v have adapters, so all 28 record a graph) keeps aten's
    additive bf16 mask [1, 1, N, N] (convert_boolean_attn_mask) and k, v repeated to the 24
    heads [1, 24, N, 128] instead of the 8 kv heads; flash_attention_2 (varlen) keeps neither but
    its int64 rng_state [2], int32 cu_seqlens [5] and 0-dim int32 max length. The logsumexps
    are equal: N is a multiple of 32, 4 x 24 x 8,192 B each."""
    N, L, qd, kvd = 4 * 2048, 28, 3072, 1024
    mask = 2 * N * N
    assert mask == 134_217_728
    sdpa = _saved(packed=True)
    rows: dict[str, int] = {}
    for name, n, c in sdpa.rows:  # layer 0 and layers 1..27 are separate rows
        rows[name] = rows.get(name, 0) + n * c
    assert rows["additive mask (convert_boolean_attn_mask)"] == L * mask == 3_758_096_384
    assert rows["k, v repeated to every head (repeat_kv)"] == L * 2 * (2 * N * qd)
    fa2 = _saved(packed=True, attn_implementation="flash_attention_2")
    per_layer = mask + 2 * 2 * N * (qd - kvd) - (8 * 2 + 4 * (4 + 1) + 4)
    assert sdpa.nbytes - fa2.nbytes == L * per_layer == 5_637_143_456


def test_golden_packed_vs_unpacked_inputs_3b():
    """flash_attention_2 packed vs SDPA's flash unpacked at 4 x 2K, what differs by mechanism:
    the rotary cos and sin are [1, N, 128] (positions differ per token) instead of [1, T, 128];
    the loss's labels are one padded row [1, N + 1] instead of the [4, T] shift_labels copy; the
    collator's position_ids and labels [1, N] int64 are inputs; each layer's flash-attn keeps an
    rng_state [2] int64, cu_seqlens [5] int32 and a 0-dim int32 max length."""
    N, T, d, L = 8192, 2048, 128, 28
    fa2 = _saved(packed=True, attn_implementation="flash_attention_2")
    flash = _saved()
    diff = 2 * 2 * (N - T) * d + (8 * (N + 1) - 8 * N) + 2 * 8 * N + L * (16 + 20 + 4)
    assert fa2.nbytes - flash.nbytes == diff == 3_277_928


def test_golden_qlora_flash_attention_2_3b_2k():
    """Llama 3.2 3B, QLoRA r=16 all-linear (fp32 adapters), 2,048 tokens, no autocast: SDPA runs
    the fp32 math path; flash_attention_2 casts q, k, v to bf16 (fa_peft_integration_check) and
    returns a bf16 output, which o_proj's fp32 adapter casts back to fp32 for lora_A. Per layer
    (N = T = 2,048, q_dim 3,072, kv_dim 1,024, 24 heads), math: scaled q, k^T and v expanded to
    every head (4 N q_dim each: h d = q_dim), the fp32 probabilities 4 h T^2 and o_proj's input
    (the output's contiguous copy, shared with its fp32 lora_A) 4 N q_dim; flash-attn: bf16 q and
    out (2 N q_dim each), k and v (2 N kv_dim each), lse 4 h N, rng_state 16 B, o's fp32 input
    cast 4 N q_dim. Under autocast both see bf16 q, k, v: only flash-attn's rng_state differs."""
    N, L, qd, kvd, h = 2048, 28, 3072, 1024, 24
    math = 3 * 4 * N * qd + 4 * h * N * N + 4 * N * qd
    fa2 = 2 * 2 * N * qd + 2 * 2 * N * kvd + 4 * h * N + 16 + 4 * N * qd
    assert math - fa2 == 444_399_600
    kw = dict(method="qlora", seq_len=2048, micro_batch=1)
    assert _saved(**kw).nbytes - _saved(**kw, attn_implementation="flash_attention_2").nbytes == L * 444_399_600
    on = _saved(**kw, mixed=True)
    assert _saved(**kw, mixed=True, attn_implementation="flash_attention_2").nbytes - on.nbytes == L * 16


def test_golden_qlora_packed_under_autocast_3b_4x2k():
    """QLoRA, 4 x 2K packed, SDPA (mem-efficient): without autocast q, the repeated k and v, the
    output and aten's additive mask are fp32; under bf16 autocast SDPA casts q and the repeated
    k, v to bf16 and the mask follows the query's dtype: every one of them halves."""

    def attn(**kw):
        rows: dict[str, int] = {}
        for name, n, c in _saved(method="qlora", packed=True, **kw).rows:
            rows[name] = rows.get(name, 0) + n * c
        return rows

    N, L, qd = 8192, 28, 3072
    off, on = attn(), attn(mixed=True)
    assert (
        off["additive mask (convert_boolean_attn_mask)"]
        == L * 4 * N * N
        == 2 * on["additive mask (convert_boolean_attn_mask)"]
    )
    assert off["k, v repeated to every head (repeat_kv)"] == L * 2 * 4 * N * qd
    for name in ("q after rotary", "k, v repeated to every head (repeat_kv)", "attention output"):
        assert off[name] == 2 * on[name]


@pytest.mark.parametrize(
    "kw",
    [
        {"micro_batch": 2},
        {"micro_batch": 3, "seq_len": 50},  # N = 150: the mask's columns padded to 152, lse rows to 160
        {"micro_batch": 2, "grad_checkpointing": "non-reentrant"},
        {"micro_batch": 3, "method": "qlora"},
        {"micro_batch": 2, "method": "qlora", "grad_checkpointing": "non-reentrant", "targets": "q,v,down"},
        {"micro_batch": 2, "method": "full"},
        {"micro_batch": 2, "method": "full", "grad_checkpointing": "reentrant", "optimizer": "sgd"},
        {"micro_batch": 2, "attn_implementation": "flash_attention_2"},
        # non-reentrant checkpointing keeps each layer's graph node, and with it ctx.max_seqlen_q
        {"micro_batch": 3, "attn_implementation": "flash_attention_2", "grad_checkpointing": "non-reentrant"},
        {"micro_batch": 2, "attn_implementation": "flash_attention_2", "grad_checkpointing": "reentrant"},
        {"micro_batch": 2, "attn_implementation": "flash_attention_2", "method": "full", "grad_accum": 2},
        # QLoRA: flash-attn casts the fp32 q, k, v to config.dtype (bf16) per call
        # (fa_peft_integration_check); o_proj's fp32 adapters then save an fp32 cast of the bf16 output
        {"micro_batch": 2, "attn_implementation": "flash_attention_2", "method": "qlora"},
        {
            "micro_batch": 2,
            "attn_implementation": "flash_attention_2",
            "method": "qlora",
            "grad_checkpointing": "non-reentrant",
        },
        {
            "micro_batch": 3,
            "attn_implementation": "flash_attention_2",
            "method": "qlora",
            "dropout": 0.1,
            "targets": "o",
        },
    ],
    ids=str,
)
def test_packed_trace_matches_each_phase(narrow_llama3_vocab_dir, kw):
    """A packed trace at narrow width (runtime/train.py: transformers' own mask building, the
    mem-efficient / flash-attn varlen stand-ins): each phase's peak equals the estimate's."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    kw = {"seq_len": 64, "packed": True, **kw}
    r = train_measure(train_settings(model=narrow_llama3_vocab_dir, device="trace", **kw))
    assert r["status"] == "ok", r["error"]
    assert r["settings"]["packed"] is True
    _check(r)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"method": "full", "micro_batch": 2, "grad_checkpointing": "reentrant"},
        {"method": "qlora"},
        {"method": "qlora", "grad_checkpointing": "non-reentrant", "micro_batch": 2},
        {"method": "qlora", "adapter_dtype": "bf16", "targets": "q,k,v,o"},
        {"method": "qlora", "quant": "nf4-dq", "dropout": 0.1, "grad_accum": 2},
    ],
    ids=str,
)
def test_flash_attention_2_unpacked_trace(narrow_llama3_vocab_dir, kw):
    """flash_attention_2 without packing: SDPA's flash path plus flash-attn's rng_state per layer
    (QLoRA: bf16 casts of the fp32 q, k, v instead of SDPA's fp32 math path, so the two differ)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    r = train_measure(
        train_settings(
            model=narrow_llama3_vocab_dir, device="trace", seq_len=64, attn_implementation="flash_attention_2", **kw
        )
    )
    assert r["status"] == "ok", r["error"]
    _check(r)
    if r["settings"]["method"] == "qlora":
        return
    sdpa = _estimate({**r["settings"], "attn_implementation": "sdpa"})
    assert _estimate(r["settings"]).peak_live_bytes - sdpa.peak_live_bytes in (0, 2 * 16)  # 2 layers' rng_state


def test_defaults_unchanged():
    e = estimate_training(seq_len=512)
    assert e.peak_live_bytes == 10_332_023_304  # the committed unpacked trace (test_estimate)
    assert e.settings.to_dict()["packed"] is False
    assert e.settings.to_dict()["attn_implementation"] == "sdpa"


def test_bad_input_names_the_field():
    for kw, field in (
        ({"packed": "yes", "micro_batch": 2}, "packed"),
        ({"attn_implementation": "eager"}, "attn_implementation"),
        ({"packed": True, "micro_batch": 1}, "micro_batch"),
    ):
        with pytest.raises(InvalidSpecError, match=field):
            estimate_training(**kw)


def test_cli_packed_header_and_bad_input(capsys):
    from estimator.cli import main

    assert main(["train", "--packed", "--micro-batch", "4", "--attn-implementation", "flash_attention_2"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.endswith(" packed attn=flash_attention_2")
    assert main(["train"]) == 0
    assert "packed" not in capsys.readouterr().out.splitlines()[0]
    p = subprocess.run(
        [sys.executable, "-m", "estimator", "train", "--attn-implementation", "eager"], capture_output=True, text=True
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "attn_implementation" in lines[0]


def test_solvers_with_packing():
    n = max_micro_batch(method="lora", gpu="h100-sxm-80gb", packed=True, seq_len=2048)
    assert n >= 2
    assert max_micro_batch(method="full", gpu="rtx-4090-24gb", packed=True) == 0  # full 3B does not fit 24 GB
    assert best_method(gpu="rtx-4090-24gb", attn_implementation="flash_attention_2") == "lora"


@pytest.mark.parametrize(
    "args,field", [(["--attn-implementation", "eager"], "attn_implementation"), (["--packed"], "micro_batch")]
)
def test_runtime_bad_input_exits_2(args, field):
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, "-m", "runtime", "train-measure", *args], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]


def test_fa2_target_dtype_follows_transformers():
    """runtime.train._fa_target_dtype is transformers 5.24's get_target_dtype (the dtype
    fa_peft_integration_check casts an fp32 q, k, v to): a 16-bit query is left alone; an fp32 one
    goes to autocast's dtype under autocast (torch's own CPU autocast here, the stand-in on
    fake tensors) and otherwise, for a quantized model, to config.dtype."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.integrations.flash_attention import get_target_dtype
    from transformers.models.llama.modeling_llama import LlamaAttention

    from runtime.autocast import Autocast
    from runtime.train import _fa_target_dtype

    conf = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, dtype=torch.bfloat16)
    attn = LlamaAttention(conf, layer_idx=0).to(torch.float32)  # an fp32 Linear: the fallback's dtype
    q32, q16 = torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16, dtype=torch.bfloat16)
    assert _fa_target_dtype(q16, attn) is None is get_target_dtype(q16, attn)
    assert _fa_target_dtype(q32, attn) == get_target_dtype(q32, attn) == torch.float32
    conf._is_quantized = True  # what the bnb quantizer sets (and runtime.train.build for QLoRA)
    assert _fa_target_dtype(q32, attn) == get_target_dtype(q32, attn) == torch.bfloat16
    del conf._is_quantized
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = get_target_dtype(q32, attn)
    with Autocast():
        standin = _fa_target_dtype(q32, attn)
    assert real == standin == torch.bfloat16


QLORA_ATTN_3B = Path(__file__).with_name("qlora_attn_3b.jsonl")


@pytest.mark.parametrize(
    "record",
    [json.loads(x) for x in QLORA_ATTN_3B.read_text().splitlines() if x.strip()],
    ids=lambda r: (
        "{method}-{quant}-{micro_batch}x{seq_len}-{attn_implementation}-{mixed_precision}".format(**r["settings"])
        + ("-packed" if r["settings"]["packed"] else "")
    ),
)
def test_committed_3b_fp32_rows_attention_traces(record):
    """Llama 3.2 3B traces (``python -m runtime train-measure --device trace``) of QLoRA r=16
    all-linear with flash_attention_2 (2K and 8K, with and without autocast) and packed 4 x 2K
    (SDPA under autocast, flash_attention_2 with and without), and fp32 master weights with
    flash_attention_2 (2K, packed 4 x 512): each phase equals the estimate to the byte."""
    assert record["status"] == "ok"
    _check(record)

"""estimate_training: hand-derived goldens, the committed 3B traces, and fresh traces at narrow
width, each phase to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.errors import InvalidSpecError
from estimator.training import estimate_training
from estimator.training.activations import attention_kernel, saved_tensors
from estimator.training.estimate import estimate_train_settings, record_settings
from estimator.training.params import LAYER_TARGETS

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "validation" / "training" / "trace.jsonl"


def test_saved_golden_lora_3b_512():
    """Llama 3.2 3B, LoRA r=16 all-linear, fp32 adapters, 512 tokens: what autograd saves."""
    T, H, I, qd, kvd, r, h, d, V, L = 512, 3072, 8192, 3072, 1024, 16, 24, 128, 128_256, 28
    per_layer = (
        2 * (4 * T * H + 4 * T)  # input and post-attention RMSNorm: fp32 input copy + rsqrt
        + 6 * 4 * T * H  # q, k, v, o, gate, up: the input cast to fp32 for lora_A
        + 4 * T * I  # down: its input cast to fp32
        + 7 * 4 * T * r  # lora_A outputs, saved by lora_B
        + 2 * T * qd
        + 2 * 2 * T * kvd
        + 2 * T * qd
        + 4 * h * T  # flash: q, k, v, out, lse
        + 3 * 2 * T * I  # gate and up outputs, silu output
    )
    assert per_layer == 100_945_920
    layers = L * per_layer - (4 * T * H + 4 * T)  # layer 0's input_layernorm: no grad, saves nothing
    once = (4 * T * H + 4 * T) + 2 * 2 * T * d + 4 * T * V + 8 * (T + 1) + 2 * 4 + 8 * T
    s = saved_tensors(estimate_training().settings.model, "lora", LAYER_TARGETS, 16, 4, False, "off", T, 1)
    assert s.nbytes == layers + once == 3_089_424_400
    e = estimate_training(seq_len=512)
    # backward at log_softmax: weights + adapters + AdamW states + saved - labels + 2 fp32 [T, V]
    assert e.peak_live_bytes == 6_425_500_160 + 4 * 24_313_856 * 3 + 3_089_424_400 - 8 * 513 + 2 * 4 * T * V
    assert e.peak_live_bytes == 10_332_023_304  # = the trace (validation/training/trace.jsonl)
    assert e.peak_phase == "backward (log_softmax)"


def _records():
    if not TRACES.is_file():
        return []
    return [json.loads(x) for x in TRACES.read_text().splitlines() if x.strip()]


def _estimate(s):
    return estimate_train_settings(record_settings(s))


PHASE_OF = {
    "forward": ("forward (loss)", "forward (lm_head LoRA)"),
    "backward": ("backward (log_softmax)", "backward (end)", "backward (lm_head weight grad)"),
}


def _math_path(s) -> bool:
    """QLoRA's fp32 attention on SDPA's math path (unpacked, no autocast, SDPA)."""
    mixed = s.get("mixed_precision", "off") != "off"
    return attention_kernel(s["method"], s.get("packed", False), s.get("attn_implementation", "sdpa"), mixed) == "math"


def _check(record):
    e = _estimate(record["settings"])
    t = record["training"]
    for phase, cands in PHASE_OF.items():
        est = max(e.candidates[c] for c in cands if c in e.candidates)
        if phase == "forward" and _math_path(record["settings"]):
            # SDPA's math path peaks inside a layer's softmax in the forward (not a candidate, and
            # below the backward's peak): the loss's moment is a lower bound of the phase
            assert t["peak_live_bytes"][phase] >= est
            continue
        if phase == "backward" and "backward (last layer attention)" in e.candidates:
            est = max(est, e.candidates["backward (last layer attention)"])
        assert t["peak_live_bytes"][phase] == est, phase
    assert t["peak_live_bytes"]["optimizer"] == e.candidates["optimizer step"]
    assert max(t["peak_live_bytes"].values()) == e.peak_live_bytes
    assert record["peak_allocated_bytes"] == e.peak_live_rounded_bytes
    assert t["weights_bytes"] + t["adapter_weights_bytes"] == e.weights_bytes
    assert t["optimizer_states_bytes"] == e.optimizer_states_bytes
    assert t.get("paged_bytes", 0) == e.paged_bytes


@pytest.mark.parametrize(
    "record",
    _records(),
    ids=lambda r: (
        "{method}-{seq_len}-{grad_checkpointing}".format(**r["settings"])
        + ("-" + r["settings"]["mixed_precision"] if r["settings"].get("mixed_precision", "off") != "off" else "")
    ),
)
def test_committed_3b_traces_match_to_the_byte(record):
    assert record["status"] == "ok"
    _check(record)


def test_committed_grid_is_complete():
    seen = {
        (r["settings"]["method"], r["settings"]["seq_len"], r["settings"]["grad_checkpointing"]) for r in _records()
    }
    for method in ("lora", "qlora"):
        for gc in ("off", "non-reentrant"):
            for t in (512, 2048, 8192):
                assert (method, t, gc) in seen
    assert {("full", 512, "off"), ("full", 2048, "off")} <= seen
    mixed = {
        (r["settings"]["method"], r["settings"]["quant"], r["settings"]["seq_len"], r["settings"]["grad_checkpointing"])
        for r in _records()
        if r["settings"].get("mixed_precision") == "bf16"
    }
    for method, quant in (("lora", "bf16"), ("qlora", "nf4")):
        for gc in ("off", "non-reentrant"):
            for t in (2048, 8192):
                assert (method, quant, t, gc) in mixed
    assert {("full", "fp32", 512, "off"), ("full", "fp32", 2048, "off")} <= mixed


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "lora"},
        {"method": "lora", "targets": "q,k,v,o", "adapter_dtype": "bf16"},
        {"method": "lora", "dropout": 0.1, "micro_batch": 2, "grad_accum": 2},
        {"method": "lora", "targets": "v,o,down", "dropout": 0.05},
        {"method": "lora", "grad_checkpointing": "non-reentrant", "optimizer": "sgd-momentum"},
        {"method": "full"},
        {"method": "full", "grad_accum": 2, "optimizer": "adamw-8bit"},
        {"method": "full", "grad_checkpointing": "reentrant", "optimizer": "sgd-momentum"},
        {"method": "lora", "rank": 64, "optimizer": "paged-adamw-8bit"},
        {"method": "qlora", "quant": "nf4"},
        {"method": "qlora", "quant": "nf4-dq", "grad_checkpointing": "reentrant", "targets": "q,k,v,o"},
        {"method": "qlora", "quant": "fp4", "optimizer": "adafactor", "dropout": 0.1},
        {"method": "lora", "targets": "all-linear,embed"},
        {"method": "qlora", "targets": "q,v,embed"},
        {"method": "lora", "targets": "q,v,embed", "grad_checkpointing": "non-reentrant"},
        {"method": "qlora", "targets": "all-linear,embed", "grad_checkpointing": "reentrant"},
        {"method": "qlora", "grad_checkpointing": "non-reentrant", "seq_len": 2048, "targets": "q,v,down"},
        # QLoRA's math path in a first layer whose input needs no grad: q @ k^T saves only the
        # operands the trained side needs (no k adapter: no scaled q; only v: neither, nor v)
        {"method": "qlora", "targets": "q,v"},
        {"method": "qlora", "targets": "v,o", "grad_accum": 2},
        # LoRA on lm_head: its saved input and lora_A output; QLoRA's fp32 head peaks inside it
        {"method": "lora", "targets": "q,v,lm_head"},
        {"method": "lora", "targets": "all-linear,lm_head", "adapter_dtype": "bf16", "grad_checkpointing": "reentrant"},
        {"method": "qlora", "targets": "q,v,lm_head"},
        {"method": "qlora", "targets": "all-linear,lm_head", "grad_checkpointing": "non-reentrant"},
        # QLoRA's lm_head adapter is fp32 whatever adapter_dtype says (its base, the upcast tied
        # embedding, is fp32: PEFT moves the adapter to that dtype)
        {"method": "qlora", "targets": "q,v,lm_head", "adapter_dtype": "bf16"},
        # lm_head with dropout: lora_A saves the dropout's output and its bool mask; the fp32
        # input copy is the forward's local until lm_head returns (the forward peaks inside it)
        {"method": "lora", "targets": "q,v,lm_head", "dropout": 0.1},
        {"method": "lora", "targets": "q,v,lm_head", "dropout": 0.1, "adapter_dtype": "bf16"},
        {"method": "lora", "targets": "all-linear,lm_head", "dropout": 0.1, "grad_checkpointing": "non-reentrant"},
        {"method": "qlora", "targets": "q,v,lm_head", "dropout": 0.1, "adapter_dtype": "bf16"},
        {
            "method": "qlora",
            "targets": "q,v,lm_head",
            "dropout": 0.1,
            "grad_checkpointing": "reentrant",
            "micro_batch": 2,
        },
        # an adapter on lm_head alone: the decoder has no graph (nothing saved, and the bf16
        # DynamicCache K and V count), lora_A's input needs no grad (no dropout mask saved);
        # with checkpointing enable_input_require_grads makes the decoder save as usual
        {"method": "lora", "targets": "lm_head"},
        {"method": "lora", "targets": "lm_head", "dropout": 0.1, "micro_batch": 2},
        {"method": "lora", "targets": "lm_head", "adapter_dtype": "bf16", "grad_accum": 2},
        {"method": "qlora", "targets": "lm_head", "grad_checkpointing": "non-reentrant", "dropout": 0.1},
        # lm_head on a packed row: the loss sees one sequence of N tokens
        {"method": "lora", "targets": "q,v,lm_head", "micro_batch": 2, "packed": True},
        {
            "method": "lora",
            "targets": "q,v,lm_head",
            "micro_batch": 3,
            "packed": True,
            "grad_checkpointing": "reentrant",
        },
        {
            "method": "qlora",
            "targets": "all-linear,lm_head",
            "micro_batch": 2,
            "packed": True,
            "grad_checkpointing": "non-reentrant",
        },
        {
            "method": "lora",
            "targets": "q,v,lm_head",
            "micro_batch": 2,
            "packed": True,
            "dropout": 0.1,
            "attn_implementation": "flash_attention_2",
        },
        # torch's fused AdamW (its own _fused_adamw path on meta): step on the device, no temporaries
        {"method": "lora", "optimizer": "adamw-fused"},
        {"method": "full", "optimizer": "adamw-fused", "grad_accum": 2},
        # found by validation/training/fuzz.py: a paged state buffer (CUDA managed memory) must not
        # count even at its own allocation (the trace's optimizer phase held one [V, H] pair)
        {"method": "full", "optimizer": "paged-adamw-8bit"},
    ],
    ids=str,
)
def test_fresh_trace_matches_each_phase(narrow_llama3_vocab_dir, kw):
    """A trace at narrow width (runtime/train.py, fake tensors): forward, backward and optimizer
    peaks equal the estimate's candidates to the byte."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    r = train_measure(train_settings(model=narrow_llama3_vocab_dir, device="trace", **{"seq_len": 64, **kw}))
    assert r["status"] == "ok", r["error"]
    _check(r)


def test_checkpointing_and_methods_order():
    off = estimate_training(seq_len=4096)
    gc = estimate_training(seq_len=4096, grad_checkpointing="non-reentrant")
    assert gc.peak_live_bytes < off.peak_live_bytes
    full = estimate_training(method="full", seq_len=4096)
    assert full.peak_live_bytes > off.peak_live_bytes


@settings(max_examples=40, deadline=None)
@given(
    seq=st.integers(2, 16_384),
    b=st.integers(1, 4),
    method=st.sampled_from(["full", "lora", "qlora", "full-fp32"]),
    gc=st.sampled_from(["off", "non-reentrant", "reentrant"]),
    opt=st.sampled_from(["adamw", "sgd", "adafactor", "paged-adamw-8bit"]),
    mp=st.sampled_from(["off", "bf16"]),
)
def test_parts_add_up_and_grow_with_tokens(seq, b, method, gc, opt, mp):
    kw = {"mixed_precision": mp}
    if method == "full-fp32":  # fp32 master weights exist only under autocast
        method, kw = "full", {"quant": "fp32", "mixed_precision": "bf16"}
    e = estimate_training(method=method, seq_len=seq, micro_batch=b, grad_checkpointing=gc, optimizer=opt, **kw)
    parts = e.weights_bytes + e.activations_bytes + e.gradients_bytes + e.optimizer_states_bytes + e.overhead_bytes
    assert parts == e.device_used_bytes == e.total_bytes
    assert sum(e.breakdown.values()) == e.device_used_bytes
    assert e.peak_live_bytes <= e.peak_live_rounded_bytes <= e.peak_allocated_bytes <= e.peak_reserved_bytes
    longer = estimate_training(
        method=method, seq_len=seq + 1, micro_batch=b, grad_checkpointing=gc, optimizer=opt, **kw
    )
    assert longer.peak_live_bytes >= e.peak_live_bytes
    assert longer.device_used_bytes >= e.device_used_bytes  # the solvers' binary search relies on it


def test_bad_input_names_the_field():
    for kw, field in (
        ({"method": "dora"}, "method"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 200_000}, "seq_len"),
        ({"rank": 0}, "rank"),
        ({"targets": "qq"}, "targets"),
        ({"grad_checkpointing": "yes"}, "grad_checkpointing"),
        ({"method": "qlora", "quant": "int8"}, "quant"),
        ({"dropout": 1.5}, "dropout"),
        ({"targets": "all-linear,lm_head", "loss": "liger"}, "targets"),
        ({"targets": "lm_head", "micro_batch": 2, "packed": True}, "targets"),
        ({"method": "qlora", "targets": "lm_head"}, "targets"),
        ({"targets": "q,v,lm_head", "rank": 64, "seq_len": 128}, "rank"),  # lm_head's LoRA backward
        ({"mixed_precision": "fp16"}, "mixed_precision"),
        ({"method": "full", "quant": "fp32"}, "quant"),  # fp32 weights without autocast
        ({"method": "lora", "quant": "fp32", "mixed_precision": "bf16"}, "quant"),
    ):
        with pytest.raises(InvalidSpecError, match=field):
            estimate_training(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"grad_checkpointing": "non-reentrant"},
        {"dropout": 0.1},
        {"adapter_dtype": "bf16", "targets": "q,k,o"},
    ],
    ids=str,
)
def test_qlora_math_attention_backward_peak(narrow_dir, kw):
    """A small vocabulary and 4,096 tokens: QLoRA's fp32 attention probabilities (SDPA's math
    path) make the last layer's softmax backward the step's peak; the estimate's candidate for
    that moment equals the trace to the byte."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    r = train_measure(train_settings(model=narrow_dir, method="qlora", seq_len=4096, device="trace", **kw))
    assert r["status"] == "ok", r["error"]
    e = _estimate(r["settings"])
    assert e.peak_phase == "backward (last layer attention)"
    _check(r)


def test_committed_report_is_current():
    """validation/training/README.md is what validation/training/report.py makes of trace.jsonl."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("training_report", ROOT / "validation" / "training" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "validation" / "training" / "README.md").read_text() == mod.markdown(_records())


QWEN3 = {
    "model_type": "qwen3",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 128_256,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "attention_bias": False,
}
QWEN2 = {  # biases on q, k, v; untied lm_head
    **{k: v for k, v in QWEN3.items() if k not in ("head_dim", "attention_bias")},
    "model_type": "qwen2",
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}


@pytest.mark.parametrize(
    "cfg,kw",
    [
        (QWEN3, {"method": "lora"}),
        (QWEN3, {"method": "lora", "targets": "v,o"}),
        (QWEN3, {"method": "full"}),
        (QWEN2, {"method": "lora"}),
        (QWEN2, {"method": "full", "grad_accum": 2}),
        (QWEN2, {"method": "full", "optimizer": "sgd"}),  # untied: the end of backward peaks
        (QWEN2, {"method": "qlora"}),
        # bf16 adapters without autocast: the linear ones bf16, the embedding's fp32 like the
        # upcast embedding; AdamW's two dtype groups overlap in the step
        (QWEN2, {"method": "qlora", "targets": "all-linear,embed", "adapter_dtype": "bf16", "grad_accum": 2}),
        # found by validation/training/fuzz.py: bf16 adapters on QLoRA's untied lm_head are fp32
        # too (bitsandbytes leaves lm_head unquantized; prepare_model_for_kbit_training upcasts it)
        (QWEN2, {"method": "qlora", "targets": "q,v,lm_head", "adapter_dtype": "bf16", "optimizer": "adamw-8bit"}),
        (QWEN2, {"method": "full", "optimizer": "paged-adamw-8bit", "grad_checkpointing": "non-reentrant"}),
    ],
    ids=lambda x: x.get("model_type") or str(x),
)
def test_other_families_trace(tmp_path, cfg, kw):
    """Qwen3's q/k RMSNorm, Qwen2's q/k/v biases and untied lm_head (a QLoRA bias goes back to
    bf16 at the first forward), each phase to the byte."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = train_measure(train_settings(model=str(tmp_path), seq_len=64, device="trace", **kw))
    assert r["status"] == "ok", r["error"]
    _check(r)

"""The Trainer's bf16=True (``mixed_precision="bf16"``: bf16 autocast around the forward, as
accelerate's prepare_model wraps it): hand-derived goldens and narrow traces to the byte."""

from __future__ import annotations

import json

import pytest
from test_estimate import QWEN2, QWEN3, _check

from estimator.training import estimate_training
from estimator.training.activations import adapter_cast_sizes
from estimator.training.params import LAYER_TARGETS

P_3B = 3_212_749_824  # Llama 3.2 3B parameters (config.json, tied embeddings)


def test_adapter_cast_cache_golden_3b():
    """fp32 LoRA r=16 all-linear under autocast: one cached bf16 cast of every adapter weight,
    2 B x r x (in + out) per target and layer: q 3072+3072, k 3072+1024, v 3072+1024,
    o 3072+3072, gate 3072+8192, up 3072+8192, down 8192+3072 = 54,272; x 2 x 16 x 28 layers."""
    spec = estimate_training().settings.model
    total = sum(n * c for n, c in adapter_cast_sizes(spec, LAYER_TARGETS, 16))
    assert total == 54_272 * 2 * 16 * 28 == 48_627_712
    assert total == 2 * 24_313_856  # = 2 B x PEFT's trainable parameter count


def test_full_fp32_master_weights_golden_3b():
    """Full fine-tuning with fp32 master weights: weights and gradients 4 B a parameter, AdamW's
    two states 8 B; the weights also hold the rotary inv_freq buffer (64 fp32 + the original
    copy transformers keeps: 512 B)."""
    e = estimate_training(method="full", quant="fp32", mixed_precision="bf16", seq_len=512)
    assert e.gradients_bytes == 4 * P_3B
    assert e.optimizer_states_bytes == 8 * P_3B
    assert e.weights_bytes == 4 * P_3B + 512
    bf16 = estimate_training(method="full", seq_len=512)
    assert e.peak_live_bytes > bf16.peak_live_bytes + 8 * P_3B  # 2 B more weights, grads; 4 B more states


def test_lm_head_and_embed_adapters_under_autocast_golden_3b():
    """Llama 3.2 3B, LoRA r=16, fp32 adapters, 2K tokens under bf16 autocast: what an adapter on
    lm_head, or on the embedding, adds to all-linear at the step's peak (log_softmax's backward),
    by mechanism.

    lm_head: the adapter r (H + V) fp32 with AdamW's two states (12 B a parameter); lora_A saves
    the bf16 cast of the norm's output (2 N H: PEFT's fp32 copy is a transient) and its cached
    bf16 weight cast (2 r H), lora_B its bf16 input (2 N r) and weight cast (2 V r).

    embed: the adapter r (V + H), 12 B a parameter; ``after_A @ lora_embedding_B.T`` saves bf16
    casts of after_A (2 N r) and of B.T (2 r H, a view: not cached); the first layer's input now
    requires grad, so its input_layernorm saves the fp32 input and rsqrt (4 N H + 4 N) and q, k
    and v's lora_A save their (cached) weight casts (3 x 2 r H)."""
    T, H, V, r = 2048, 3072, 128_256, 16
    base = estimate_training(seq_len=T, mixed_precision="bf16")
    head = estimate_training(seq_len=T, mixed_precision="bf16", targets="all-linear,lm_head")
    emb = estimate_training(seq_len=T, mixed_precision="bf16", targets="all-linear,embed")
    for e in (base, head, emb):
        assert e.peak_phase == "backward (log_softmax)"
    assert (
        head.peak_live_bytes - base.peak_live_bytes == 12 * r * (H + V) + 2 * T * H + 2 * r * H + 2 * T * r + 2 * V * r
    )
    assert (
        emb.peak_live_bytes - base.peak_live_bytes
        == 12 * r * (V + H) + 2 * T * r + 2 * r * H + 4 * T * H + 4 * T + 6 * r * H
    )
    assert head.peak_live_bytes == 18_200_394_248
    assert emb.peak_live_bytes == 18_209_176_072


def test_mixed_shrinks_qlora_and_lora_activations():
    """Under autocast QLoRA's attention runs the bf16 flash kernel instead of fp32 SDPA math
    (no T x T probabilities) and LoRA's saved adapter inputs are bf16 instead of fp32 copies."""
    for method in ("qlora", "lora"):
        off = estimate_training(method=method, seq_len=8192)
        on = estimate_training(method=method, seq_len=8192, mixed_precision="bf16")
        assert on.peak_live_bytes < off.peak_live_bytes
    # bf16 adapters on a bf16 base: autocast casts nothing, the step is the same
    assert (
        estimate_training(adapter_dtype="bf16", mixed_precision="bf16").peak_live_bytes
        == estimate_training(adapter_dtype="bf16").peak_live_bytes
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "lora"},
        {"method": "lora", "dropout": 0.1, "micro_batch": 2},
        {"method": "lora", "targets": "v,o,down", "grad_accum": 2},
        {"method": "lora", "grad_checkpointing": "reentrant"},
        {"method": "lora", "adapter_dtype": "bf16", "grad_checkpointing": "non-reentrant"},
        {"method": "qlora"},
        {"method": "qlora", "dropout": 0.1, "quant": "nf4-dq"},
        {"method": "qlora", "adapter_dtype": "bf16", "targets": "q,k,v,o"},
        {"method": "qlora", "grad_checkpointing": "non-reentrant", "optimizer": "paged-adamw-8bit"},
        # found by validation/training/fuzz.py: a first layer whose attention needs no grad (no q, k, v
        # adapter) hands o_proj's LoRA SDPA's bf16 output, not a copy in QLoRA's fp32
        {"method": "qlora", "targets": "o,down"},
        {"method": "full"},
        {"method": "full", "quant": "fp32"},
        {"method": "full", "quant": "fp32", "grad_accum": 2},
        {"method": "full", "quant": "fp32", "grad_checkpointing": "non-reentrant", "optimizer": "sgd"},
        {"method": "full", "quant": "fp32", "grad_checkpointing": "reentrant", "micro_batch": 2},
        {"method": "full", "quant": "fp32", "optimizer": "adafactor"},
        # with packed rows (SDPA's mem-efficient kernel and its mask) and flash_attention_2
        {"method": "lora", "micro_batch": 2, "packed": True},
        {"method": "lora", "micro_batch": 3, "packed": True, "grad_checkpointing": "non-reentrant"},
        {"method": "lora", "micro_batch": 2, "packed": True, "attn_implementation": "flash_attention_2"},
        {"method": "full", "micro_batch": 2, "packed": True},
        # LoRA on lm_head: lora_A saves a bf16 cast of its input (the norm's output itself for
        # bf16 adapters on a bf16 base), its bf16 output; fp32 adapters: lora_B's [V, r] and
        # lora_A's weight casts; with dropout the bf16 dropout output and the bool mask
        {"method": "lora", "targets": "q,v,lm_head"},
        {"method": "lora", "targets": "q,v,lm_head", "adapter_dtype": "bf16", "dropout": 0.1},
        {"method": "lora", "targets": "q,v,lm_head", "dropout": 0.1, "micro_batch": 2, "grad_accum": 2},
        {"method": "lora", "targets": "all-linear,lm_head", "grad_checkpointing": "non-reentrant"},
        {"method": "lora", "targets": "all-linear,lm_head", "grad_checkpointing": "reentrant", "micro_batch": 2},
        {"method": "qlora", "targets": "q,v,lm_head", "dropout": 0.1},
        {"method": "qlora", "targets": "q,v,lm_head", "adapter_dtype": "bf16"},
        {"method": "qlora", "targets": "all-linear,lm_head", "grad_checkpointing": "non-reentrant", "dropout": 0.1},
        {
            "method": "lora",
            "targets": "q,v,lm_head",
            "micro_batch": 2,
            "packed": True,
            "dropout": 0.1,
            "grad_checkpointing": "non-reentrant",
        },
        {
            "method": "lora",
            "targets": "all-linear,lm_head",
            "micro_batch": 2,
            "packed": True,
            "attn_implementation": "flash_attention_2",
            "grad_accum": 2,
        },
        # lm_head alone: lora_A's weight cast is cached, not saved (its input needs no grad)
        {"method": "lora", "targets": "lm_head", "dropout": 0.1},
        {"method": "qlora", "targets": "lm_head", "adapter_dtype": "bf16"},
        # an embedding adapter: the matmul after F.embedding saves bf16 casts of after_A and of
        # lora_embedding_B.T (a view: not cached), for fp32 adapters
        {"method": "lora", "targets": "q,v,embed"},
        {"method": "lora", "targets": "q,v,embed", "adapter_dtype": "bf16"},
        {"method": "lora", "targets": "all-linear,embed", "grad_checkpointing": "non-reentrant"},
        {"method": "lora", "targets": "q,v,embed", "grad_checkpointing": "reentrant", "dropout": 0.1},
        {"method": "qlora", "targets": "q,v,embed", "adapter_dtype": "bf16", "micro_batch": 2},
        {"method": "qlora", "targets": "all-linear,embed", "grad_checkpointing": "non-reentrant"},
        {"method": "lora", "targets": "q,v,embed,lm_head", "micro_batch": 2, "packed": True, "dropout": 0.1},
        # fp32 rows (QLoRA, fp32 master weights) with flash_attention_2 or a packed row: SDPA
        # casts q and the repeated k, v to bf16 (the mask then bf16 too); flash-attn's
        # fa_peft_integration_check casts fp32 q, k, v to autocast's bf16
        {"method": "qlora", "attn_implementation": "flash_attention_2"},
        {"method": "qlora", "attn_implementation": "flash_attention_2", "grad_checkpointing": "reentrant"},
        {"method": "qlora", "attn_implementation": "flash_attention_2", "dropout": 0.1, "targets": "o,v"},
        {"method": "qlora", "micro_batch": 2, "packed": True},
        {"method": "qlora", "micro_batch": 3, "seq_len": 50, "packed": True},  # mask columns 152, lse rows 160
        {"method": "qlora", "micro_batch": 2, "packed": True, "grad_checkpointing": "non-reentrant"},
        {"method": "qlora", "micro_batch": 2, "packed": True, "attn_implementation": "flash_attention_2"},
        {
            "method": "qlora",
            "micro_batch": 3,
            "packed": True,
            "attn_implementation": "flash_attention_2",
            "adapter_dtype": "bf16",
        },
        {"method": "full", "quant": "fp32", "micro_batch": 2, "packed": True},
        {
            "method": "full",
            "quant": "fp32",
            "micro_batch": 2,
            "packed": True,
            "grad_checkpointing": "reentrant",
            "optimizer": "sgd",
        },
        {"method": "full", "quant": "fp32", "attn_implementation": "flash_attention_2"},
        # the backward's end (the peak) keeps each layer's varlen max_seqlen (0-dim int32) on its node
        {
            "method": "full",
            "quant": "fp32",
            "micro_batch": 2,
            "packed": True,
            "attn_implementation": "flash_attention_2",
        },
        {
            "method": "full",
            "quant": "fp32",
            "micro_batch": 2,
            "packed": True,
            "attn_implementation": "flash_attention_2",
            "grad_checkpointing": "non-reentrant",
        },
    ],
    ids=str,
)
def test_fresh_trace_matches_each_phase(narrow_llama3_vocab_dir, kw):
    """The step under the autocast stand-in (runtime/autocast.py) at narrow width: forward,
    backward and optimizer peaks equal the estimate's candidates to the byte."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    kw = {"seq_len": 64, **kw}
    r = train_measure(train_settings(model=narrow_llama3_vocab_dir, device="trace", mixed_precision="bf16", **kw))
    assert r["status"] == "ok", r["error"]
    _check(r)


@pytest.mark.parametrize(
    "cfg,kw",
    [
        (QWEN3, {"method": "lora"}),
        (QWEN3, {"method": "full", "quant": "fp32"}),
        (QWEN2, {"method": "qlora"}),
        # untied: lm_head's bf16 weight gradient and its fp32 copy peak the backward
        (QWEN2, {"method": "full", "quant": "fp32", "grad_checkpointing": "non-reentrant", "grad_accum": 2}),
        # q, k, v biases and the q/k norms ahead of flash-attn's bf16 casts and a packed row's repeat_kv
        (QWEN2, {"method": "qlora", "attn_implementation": "flash_attention_2"}),
        (QWEN3, {"method": "full", "quant": "fp32", "micro_batch": 2, "packed": True}),
    ],
    ids=lambda x: x.get("model_type") or str(x),
)
def test_other_families_trace(tmp_path, cfg, kw):
    """Qwen3's q/k RMSNorm (its normalized input saved in the projection's bf16), Qwen2's
    biases (cast and cached, never saved) and untied lm_head."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = train_measure(train_settings(model=str(tmp_path), seq_len=64, device="trace", mixed_precision="bf16", **kw))
    assert r["status"] == "ok", r["error"]
    _check(r)


def test_autocast_standin_follows_cuda_lists():
    """runtime/autocast.py: linear and matmul run in bf16, softmax and sum in fp32, a trainable
    fp32 leaf is cast once per region (cached) and the cache empties when the region exits."""
    torch = pytest.importorskip("torch")
    from runtime.autocast import Autocast, _State

    w = torch.nn.Parameter(torch.randn(8, 4))
    x = torch.randn(2, 4)
    with Autocast():
        y = torch.nn.functional.linear(x, w)
        y2 = torch.nn.functional.linear(x, w)
        s = torch.softmax(y, -1)
        t = y.sum()
        assert torch.is_autocast_enabled()
        assert len(_State.cache) == 1
    assert y.dtype == y2.dtype == torch.bfloat16
    assert s.dtype == t.dtype == torch.float32
    assert not _State.cache and not torch.is_autocast_enabled()


def _saved_under(ctx_factory, build):
    """(dtype, shape) of every tensor autograd saves in ``build()``'s forward under the context,
    each storage once, and the output's dtype."""
    torch = pytest.importorskip("torch")
    seen: dict[int, tuple[str, tuple[int, ...]]] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), (str(t.dtype), tuple(t.shape)))
        return t

    torch.manual_seed(0)
    model, x = build()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx_factory():
        out = model(x)
    return sorted(seen.values()), out.dtype


@pytest.mark.parametrize("what", ["lora-fp32-adapters", "fp32-master-linear-twice"])
def test_autocast_standin_saves_what_torch_autocast_saves(what):
    """Where torch's CPU and CUDA autocast lists agree (linear is lower_precision_fp on both, and
    the cast cache is the same code), the stand-in saves exactly what torch's own autocast saves
    on real CPU tensors: PEFT's fp32 adapters on a bf16 Linear, and an fp32 Linear called twice
    in one region (its weight cast once, from the cache)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.autocast import Autocast

    def build():
        if what == "lora-fp32-adapters":
            from peft import LoraConfig, get_peft_model

            base = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False)).to(torch.bfloat16)
            m = get_peft_model(base, LoraConfig(r=4, target_modules=["0"]))
            return m, torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)
        lin = torch.nn.Linear(32, 32, bias=False)
        return (lambda x: lin(lin(x))), torch.randn(4, 32, requires_grad=True)

    real = _saved_under(lambda: torch.autocast("cpu", dtype=torch.bfloat16), build)
    standin = _saved_under(Autocast, build)
    assert standin == real
    assert real[1] == torch.bfloat16

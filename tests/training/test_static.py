"""Static training memory (weights, adapters, gradients, optimizer states): hand-derived goldens,
and real CPU training steps (runtime/train.py, device cpu) at narrow width, byte for byte."""

from __future__ import annotations

import pytest

from estimator.model import from_hf_config, load_model
from estimator.training.params import LAYER_TARGETS, parse_targets
from estimator.training.static import optimizer_states, static_bytes, trainable_tensors

SPEC = load_model("llama-3.2-3b")
QKVO = parse_targets("q,k,v,o")


def test_lora_adamw_golden():
    # 9,175,040 fp32 adapter parameters (autocast_adapter_dtype): 4 B each; gradients the same;
    # AdamW exp_avg + exp_avg_sq: 8 B each; step on the CPU (0 device bytes); the foreach step's
    # _foreach_sqrt copy of every exp_avg_sq: 4 B each.
    s = static_bytes(SPEC, "lora", "bf16", 16, QKVO, "fp32", "adamw")
    assert s.weights_bytes == 6_425_500_160
    assert s.adapter_weights_bytes == s.gradients_bytes == 4 * 9_175_040
    assert s.optimizer_states_bytes == 8 * 9_175_040
    assert s.step_transient_bytes == 4 * 9_175_040
    fused = static_bytes(SPEC, "lora", "bf16", 16, QKVO, "fp32", "adamw-fused")
    assert fused.optimizer_states_bytes == 8 * 9_175_040 + 4 * (28 * 4 * 2)  # + an fp32 step per tensor
    assert fused.step_transient_bytes == 0


def test_full_bf16_adamw_golden():
    # 3,212,749,824 bf16 parameters: grads 2 B, exp_avg + exp_avg_sq 4 B, foreach sqrt copy 2 B.
    s = static_bytes(SPEC, "full", "bf16", 16, LAYER_TARGETS, "fp32", "adamw")
    n = 3_212_749_824
    assert (s.gradients_bytes, s.optimizer_states_bytes, s.step_transient_bytes) == (2 * n, 4 * n, 2 * n)
    assert s.adapter_weights_bytes == 0


def test_qlora_prepare_upcasts_non_4bit_params():
    # prepare_model_for_kbit_training: embedding (128,256 x 3,072) and 57 norms x 3,072 go fp32:
    # + 2 B per element on top of the nf4 layout.
    s = static_bytes(SPEC, "qlora", "nf4", 16, LAYER_TARGETS, "fp32", "adamw")
    assert s.weights_bytes == 2_373_815_040 + 2 * (128_256 * 3072 + 57 * 3072)  # nf4 incl. 512 B of buffers


def test_qlora_head_and_embedding_adapters_stay_fp32():
    # adapter_dtype bf16 (autocast_adapter_dtype=False): PEFT gives each adapter its base weight's
    # float dtype. QLoRA's linear layers hold uint8 nibbles: their adapters keep bf16; lm_head
    # (tied to the upcast fp32 embedding) and the embedding are fp32, so theirs are fp32:
    # lm_head r=16: 16 x (3,072 + 128,256) = 2,101,248 elements; embedding 16 x (128,256 + 3,072).
    tr = trainable_tensors(SPEC, "qlora", 16, parse_targets("q,v,lm_head,embed"), "bf16")
    head = [t for t in tr if t.name.startswith("lm_head.")]
    assert sum(t.nbytes for t in head) == 4 * 2_101_248
    embed = [t for t in tr if t.name.startswith("model.embed_tokens.")]
    assert sum(t.nbytes for t in embed) == 4 * 16 * (128_256 + 3072)
    q = [t for t in tr if t.name.startswith("model.layers.0.self_attn.q_proj.")]
    assert sum(t.nbytes for t in q) == 2 * 16 * (3072 + 3072)
    lora = trainable_tensors(SPEC, "lora", 16, parse_targets("q,v,lm_head"), "bf16")
    assert sum(t.nbytes for t in lora if t.name.startswith("lm_head.")) == 2 * 2_101_248


def test_bnb_8bit_states_golden():
    # q_proj lora_A [16, 3072]: 49,152 elements >= 4096: uint8 state1/state2 (2 B/elt) and fp32
    # absmax per 256: 2 x 4 x 192; lora_B of k_proj [1024, 16]: 16,384 -> 8-bit too.
    tr = trainable_tensors(SPEC, "lora", 16, ("q",), "fp32")
    o = optimizer_states("adamw-8bit", tr)
    per_a = 2 * 49_152 + 2 * 4 * 192
    assert o.device_bytes == 2 * 256 * 4 + 28 * 2 * per_a  # the two shared fp32 [256] maps once
    # paged: state1/state2 of tensors with >= 1e5 elements are managed memory (none here)
    assert optimizer_states("paged-adamw-8bit", tr).paged_bytes == 0
    big = trainable_tensors(SPEC, "lora", 64, ("gate",), "fp32")  # B [8192, 64]: 524,288 elements
    p = optimizer_states("paged-adamw-8bit", big)
    assert p.paged_bytes == 28 * 2 * (64 * 3072 + 8192 * 64)
    assert p.device_bytes + p.paged_bytes == optimizer_states("adamw-8bit", big).device_bytes


def test_adafactor_factored_golden():
    # transformers Adafactor: fp32 row [out] and column [in] second moments for each 2-D tensor,
    # and its RMS, a 0-dim fp32 tensor.
    tr = trainable_tensors(SPEC, "lora", 16, ("q",), "fp32")
    o = optimizer_states("adafactor", tr)
    assert o.device_bytes == 28 * (4 * (16 + 3072) + 4 * (3072 + 16) + 2 * 4)


@pytest.mark.parametrize(
    "method,optimizer,adapter_dtype,quant",
    [
        ("lora", "adamw", "fp32", "bf16"),
        ("lora", "adamw-fused", "fp32", "bf16"),
        ("lora", "sgd", "fp32", "bf16"),
        ("lora", "sgd-momentum", "bf16", "bf16"),
        ("lora", "adafactor", "fp32", "bf16"),
        ("lora", "adamw-8bit", "fp32", "bf16"),
        ("full", "adamw", "fp32", "bf16"),
        ("full", "adafactor", "fp32", "bf16"),
        ("qlora", "adamw", "fp32", "nf4"),
        ("qlora", "adamw-8bit", "fp32", "nf4-dq"),
    ],
)
def test_static_matches_a_real_cpu_step(narrow_dir, narrow, method, optimizer, adapter_dtype, quant):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    s = train_settings(
        model=narrow_dir,
        method=method,
        quant=quant,
        optimizer=optimizer,
        adapter_dtype=adapter_dtype,
        seq_len=32,
        device="cpu",
    )
    r = train_measure(s)
    assert r["status"] == "ok", r["error"]
    t = r["training"]
    e = static_bytes(from_hf_config(narrow), method, quant, 16, LAYER_TARGETS, adapter_dtype, optimizer)
    assert t["weights_bytes"] == e.weights_bytes
    assert t["adapter_weights_bytes"] == e.adapter_weights_bytes
    assert t["gradients_bytes"] == e.gradients_bytes
    assert t["optimizer_states_bytes"] == e.optimizer_states_bytes

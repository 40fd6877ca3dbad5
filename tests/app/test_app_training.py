"""AppTest of the calculator's Fine-tuning mode (app/training.py): cards, breakdown, fixes."""

from __future__ import annotations

import pytest

from app import state, training
from estimator.training import estimate_training
from estimator.training.solve import max_seq_len
from estimator.units import format_gib


@pytest.fixture
def at(app_test):
    a = app_test("streamlit_app.py").run()
    a.radio(key=training.MODE).set_value(training.FINE_TUNING).run()
    return a


def test_default_fine_tuning_render(at):
    """Default: LoRA r=16 all-linear, AdamW, 2,048 tokens on the default GPU: the estimator's numbers."""
    assert not at.exception and not at.error
    gpu = state.DEFAULTS[state.GPU]
    e = estimate_training("llama-3.2-3b", "lora", rank=16, targets="all-linear", seq_len=2048, gpu=gpu)
    assert at.metric[0].value == format_gib(e.device_used_bytes)
    assert at.metric[1].value == "Yes"
    assert at.metric[2].value == f"{max_seq_len(method='lora', gpu=gpu):,} tokens"
    assert "trainable params: 24,313,856" in at.caption[0].value
    parts = at.dataframe[0].value
    assert list(parts["Part"]) == list(training.PARTS.values())
    assert abs(parts["GiB"].sum() * 2**30 - e.device_used_bytes) < 1


def test_qlora_and_checkpointing_change_the_answer(at):
    at.selectbox(key=training.METHOD).set_value("qlora").run()
    at.selectbox(key=training.SEQ_LEN).set_value(4096).run()
    assert not at.exception
    gpu = state.DEFAULTS[state.GPU]
    e = estimate_training("llama-3.2-3b", "qlora", quant="nf4", seq_len=4096, gpu=gpu)
    assert at.metric[0].value == format_gib(e.device_used_bytes)
    assert at.metric[1].value == "No"  # fp32 attention probabilities over 4K tokens (docs/training.md)
    labels = [b.label for b in at.button]
    assert any(lab.startswith("Gradient checkpointing") for lab in labels)
    at.button(key=f"train_fix_{training.CHECKPOINTING}").click().run()
    assert at.session_state[training.CHECKPOINTING] == "non-reentrant"
    e2 = estimate_training(
        "llama-3.2-3b", "qlora", quant="nf4", seq_len=4096, gpu=gpu, grad_checkpointing="non-reentrant"
    )
    assert at.metric[0].value == format_gib(e2.device_used_bytes)


def test_inference_mode_unchanged(app_test):
    a = app_test("streamlit_app.py").run()
    assert a.radio(key=training.MODE).value == training.INFERENCE
    assert a.title[0].value == "Will it fit?"


def test_precision_and_fp32_master_weights(at):
    """bf16 autocast (the Trainer's bf16=True) and full fine-tuning with fp32 master weights: the
    cards follow estimate_training with those settings."""
    gpu = state.DEFAULTS[state.GPU]
    at.selectbox(key=training.METHOD).set_value("qlora").run()
    at.selectbox(key=training.SEQ_LEN).set_value(4096).run()
    at.selectbox(key=training.PRECISION).set_value("bf16").run()
    assert not at.exception and not at.error
    e = estimate_training("llama-3.2-3b", "qlora", quant="nf4", seq_len=4096, gpu=gpu, mixed_precision="bf16")
    assert at.metric[0].value == format_gib(e.device_used_bytes)
    assert "bf16 autocast" in at.caption[0].value
    at.selectbox(key=training.METHOD).set_value("full-fp32").run()
    assert not at.exception and not at.error
    full = estimate_training("llama-3.2-3b", "full", quant="fp32", seq_len=4096, gpu=gpu, mixed_precision="bf16")
    assert at.metric[0].value == format_gib(full.device_used_bytes)
    assert "fp32 master weights" in at.caption[0].value


def test_packing_attention_and_loss_controls(at):
    """The expander's packed row, attention implementation and Liger loss reach the estimate; a
    combination the estimate refuses shows st.error naming the field, not a traceback."""
    gpu = state.DEFAULTS[state.GPU]
    at.selectbox(key=training.SEQ_LEN).set_value(8192).run()
    at.selectbox(key=training.LOSS).set_value("liger").run()
    assert not at.exception and not at.error
    e = estimate_training("llama-3.2-3b", "lora", seq_len=8192, gpu=gpu, loss="liger")
    assert at.metric[0].value == format_gib(e.device_used_bytes)
    at.checkbox(key=training.LIGER_LAYERS).check().run()  # the Trainer's use_liger_kernel=True
    assert not at.exception and not at.error
    k = estimate_training("llama-3.2-3b", "lora", seq_len=8192, gpu=gpu, loss="liger", liger_layers=True)
    assert k.device_used_bytes < e.device_used_bytes
    assert at.metric[0].value == format_gib(k.device_used_bytes)
    at.checkbox(key=training.LIGER_LAYERS).uncheck().run()
    at.selectbox(key=training.LOSS).set_value("transformers").run()
    at.number_input(key=training.MICRO_BATCH).set_value(2).run()
    at.checkbox(key=training.PACKED).check().run()
    at.selectbox(key=training.ATTN).set_value("flash_attention_2").run()
    assert not at.exception and not at.error
    packed_fa2 = dict(seq_len=8192, micro_batch=2, gpu=gpu, packed=True, attn_implementation="flash_attention_2")
    p = estimate_training("llama-3.2-3b", "lora", **packed_fa2)
    assert at.metric[0].value == format_gib(p.device_used_bytes)
    at.selectbox(key=training.LOSS).set_value("liger").run()  # liger on a packed row: modelled
    assert not at.exception and not at.error
    p = estimate_training("llama-3.2-3b", "lora", loss="liger", **packed_fa2)
    assert at.metric[0].value == format_gib(p.device_used_bytes)
    at.selectbox(key=training.PRECISION).set_value("bf16").run()  # fp32 adapters, all-linear: modelled
    assert not at.exception and not at.error
    at.selectbox(key=training.CHECKPOINTING).set_value("non-reentrant").run()  # and checkpointed: refused
    assert not at.exception
    assert at.error and "loss" in at.error[0].value

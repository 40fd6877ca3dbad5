"""liger_layers: Liger-Kernel's RMSNorm, SwiGLU and RoPE (what the Trainer's use_liger_kernel=True
swaps in besides the fused linear cross-entropy), against hand derivations on the 3B, the
committed 3B traces and fresh narrow traces (runtime/train.py's stand-ins)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from estimator.errors import InvalidSpecError
from estimator.training import estimate_training
from estimator.training.activations import saved_tensors
from estimator.training.estimate import estimate_train_settings, record_settings
from estimator.training.params import LAYER_TARGETS

N, H, I, L, R = 8192, 3072, 8192, 28, 16  # Llama 3.2 3B at 8K tokens, LoRA r=16
RECORDS = Path(__file__).resolve().parent / "liger_layers_3b.jsonl"


def _saved(method, liger_layers, **kw):
    spec = estimate_training().settings.model
    return saved_tensors(spec, method, LAYER_TARGETS, R, 4, False, "off", N, 1, liger_layers=liger_layers, **kw).nbytes


def test_golden_3b_saved_per_layer():
    """LlamaRMSNorm saves ``hidden.to(float32)`` [N, H] and the fp32 rsqrt [N, 1] (and, full, the
    bf16 normalized input for the weight's gradient); LigerRMSNorm saves its bf16 input X itself
    and fp32 RSTD [N]. LlamaMLP saves gate's, silu's and up's outputs; LigerSwiGLUMLP gate's and
    up's (liger's backward writes da, db over them). RoPE saves cos and sin either way."""
    norm_lora = (4 * N * H + 4 * N) - (2 * N * H + 4 * N)  # 2 N H per norm
    norm_full = (4 * N * H + 4 * N + 2 * N * H) - (2 * N * H + 4 * N)  # 4 N H per norm
    mlp = 2 * N * I  # silu's bf16 output
    assert 2 * norm_lora + mlp == 234_881_024  # per LoRA layer: 100,663,296 + 134,217,728
    # LoRA: layer 0's input norm saves nothing either way (the frozen embedding's output needs no
    # grad), the final norm saves 2 N H less
    lora = L * (2 * norm_lora + mlp) - norm_lora + norm_lora
    assert _saved("lora", False) - _saved("lora", True) == lora == 6_576_668_672
    assert _saved("lora", False, loss="liger") - _saved("lora", True, loss="liger") == lora
    full = L * (2 * norm_full + mlp) + norm_full
    assert _saved("full", False) - _saved("full", True) == full == 9_495_904_256


def test_golden_3b_step_peaks():
    """The step's peak (each equal to the committed trace, test_committed_3b_traces): with the
    default loss the saved rows alone move it (log_softmax's backward); with liger's loss the final
    norm's fp32 backward is gone (LigerRMSNorm writes dX over dY) and the last layer's down_proj
    LoRA forward is the peak, 10 N H - 2 N I (and a few small terms) above its backward moment."""
    hf = estimate_training(seq_len=N)
    ll = estimate_training(seq_len=N, liger_layers=True)
    assert hf.peak_live_bytes - ll.peak_live_bytes == 6_576_668_672
    assert ll.peak_live_bytes == 57_976_707_592 and ll.peak_phase == "backward (log_softmax)"
    e = estimate_training(seq_len=N, loss="liger", liger_layers=True)
    assert e.peak_phase == "forward (down_proj LoRA)" and e.peak_live_bytes == 45_804_870_144
    assert "backward (final norm)" not in e.candidates
    grads = 4 * R * I + 4 * H * R  # down_proj's lora_A gradient (a temporary) and lora_B's .grad
    # forward: MLP input, embedding output, base output (a N H each), lora_B's fp32 output and its
    # scaled copy (4 N H each), c (a N I), cache_position (8 T), less the final norm's X and liger's
    # grad_input (a N H each), RSTD (4 N) and the loss (4); backward: the base output's gradient
    # less the final norm's X, lora_A's input gradient 4 N I, the gradients, the seed less RSTD
    fwd = 10 * N * H + 2 * N * I + 8 * N - 4 * N - 4
    bwd = 4 * N * I + grads - 4 * N + 4
    assert e.candidates["forward (down_proj LoRA)"] - e.candidates["backward (down_proj LoRA)"] == fwd - bwd
    assert fwd - bwd == 10 * N * H - 2 * N * I + 8 * N - grads - 8 == 116_785_144
    liger_only = estimate_training(seq_len=N, loss="liger")
    assert liger_only.peak_live_bytes - e.peak_live_bytes == 6_643_712_008


def test_committed_3b_traces():
    """tests/training/liger_layers_3b.jsonl (`python -m runtime train-measure --device trace
    --seq-len 8192 --liger-layers [--loss liger] [--grad-checkpointing non-reentrant]
    [--mixed-precision bf16]`, LoRA r=16 all-linear and QLoRA NF4; and 4 x 2K packed, SDPA and
    flash_attention_2): every phase and the step's peak
    equal the estimate to the byte (the checkpointed forward phase of LoRA with liger's loss and
    QLoRA's math-path forward are lower bounds: their moments are not candidates, below the
    step's peak)."""
    records = [json.loads(x) for x in RECORDS.read_text().splitlines() if x.strip()]
    assert len(records) == 9
    for r in records:
        assert r["status"] == "ok" and r["settings"]["liger_layers"] is True
        e = estimate_train_settings(record_settings(r["settings"]))
        t = r["training"]
        _check_phases(r, e)
        assert max(t["peak_live_bytes"].values()) == e.peak_live_bytes
        assert r["peak_allocated_bytes"] == e.peak_live_rounded_bytes
    keys = ("method", "loss", "grad_checkpointing", "mixed_precision", "packed", "attn_implementation")
    seen = {tuple(r["settings"][k] for k in keys) for r in records}
    assert seen == {
        ("lora", "liger", "off", "off", False, "sdpa"),
        ("lora", "liger", "non-reentrant", "off", False, "sdpa"),
        ("lora", "transformers", "off", "off", False, "sdpa"),
        ("qlora", "transformers", "off", "off", False, "sdpa"),
        ("qlora", "transformers", "non-reentrant", "off", False, "sdpa"),
        ("lora", "transformers", "off", "bf16", False, "sdpa"),
        ("qlora", "transformers", "off", "bf16", False, "sdpa"),
        ("lora", "transformers", "off", "off", True, "sdpa"),  # 4 x 2K packed
        ("lora", "transformers", "off", "off", True, "flash_attention_2"),
    }


def _check_phases(r, e):
    t = r["training"]
    s = r["settings"]
    fwd = [c for c in e.candidates if c.startswith("forward")]
    bwd = [c for c in e.candidates if c.startswith("backward")]
    if s["loss"] == "liger":
        assert t["liger_live_bytes"]["forward"] == e.candidates["forward (loss)"]
        assert t["liger_live_bytes"]["backward"] == e.candidates["backward (liger)"]
    if s["loss"] == "liger" and s["method"] == "lora" and s["grad_checkpointing"] != "off":
        # the checkpointed forward's LoRA moments (no saved layer tensors) are not candidates
        assert t["peak_live_bytes"]["forward"] > max(e.candidates[c] for c in fwd)
    elif s["method"] == "qlora" and s["mixed_precision"] == "off":
        # SDPA's math path peaks inside a layer's softmax in the forward (not a candidate, as
        # test_estimate._check): the loss's moment is a lower bound of the phase
        assert t["peak_live_bytes"]["forward"] >= max(e.candidates[c] for c in fwd)
    else:
        assert t["peak_live_bytes"]["forward"] == max(e.candidates[c] for c in fwd)
    assert t["peak_live_bytes"]["backward"] == max(e.candidates[c] for c in bwd)
    assert t["peak_live_bytes"]["optimizer"] == e.candidates["optimizer step"]
    assert t["weights_bytes"] + t["adapter_weights_bytes"] == e.weights_bytes


CASES = [
    {"method": "lora"},
    {"method": "lora", "micro_batch": 2, "grad_accum": 2},
    {"method": "lora", "grad_checkpointing": "non-reentrant", "targets": "q,k,v,o"},
    {"method": "lora", "grad_checkpointing": "reentrant", "micro_batch": 2, "adapter_dtype": "bf16"},
    {"method": "full"},
    {"method": "full", "grad_checkpointing": "reentrant", "micro_batch": 2, "grad_accum": 2},
    {"method": "full", "optimizer": "adafactor"},
    {"method": "lora", "loss": "liger"},  # liger's forward chunk loop
    {"method": "lora", "loss": "liger", "micro_batch": 2, "grad_accum": 2},  # down_proj's LoRA forward
    {"method": "lora", "loss": "liger", "micro_batch": 3},
    {"method": "lora", "loss": "liger", "grad_checkpointing": "non-reentrant"},
    {"method": "lora", "loss": "liger", "grad_checkpointing": "non-reentrant", "micro_batch": 2, "grad_accum": 2},
    {"method": "full", "loss": "liger"},
    {"method": "full", "loss": "liger", "grad_checkpointing": "reentrant"},
    {"method": "full", "loss": "liger", "grad_checkpointing": "non-reentrant", "micro_batch": 2, "grad_accum": 2},
    # QLoRA's fp32 residual: LigerRMSNorm saves the same bytes as LlamaRMSNorm (its .to(float32)
    # is no copy); the MLP saves two fp32 [N, I] outputs, not three
    {"method": "qlora"},
    {"method": "qlora", "grad_checkpointing": "non-reentrant", "micro_batch": 2},
    # bf16 autocast (bf16 weights, 4-bit base) with the default loss
    {"method": "lora", "mixed_precision": "bf16"},
    {"method": "lora", "mixed_precision": "bf16", "grad_checkpointing": "non-reentrant", "adapter_dtype": "bf16"},
    {"method": "full", "mixed_precision": "bf16", "grad_checkpointing": "reentrant", "micro_batch": 2},
    {"method": "qlora", "mixed_precision": "bf16"},
    # LoRA dropout, and adapters on the embedding (layer 0's input norm then saves its input) or
    # lm_head (its lora_A saves the final norm's output), with the default loss
    {"method": "lora", "dropout": 0.1},
    {"method": "qlora", "dropout": 0.1, "adapter_dtype": "bf16", "grad_checkpointing": "non-reentrant"},
    {"method": "lora", "targets": "all-linear,embed"},
    {"method": "lora", "targets": "all-linear,embed", "grad_checkpointing": "non-reentrant"},
    {"method": "lora", "targets": "all-linear,lm_head"},
    {"method": "qlora", "targets": "all-linear,lm_head"},  # lm_head's LoRA forward is the peak
    # packed rows (cos, sin [1, N, d]: liger's kernel reads one row per token) and flash-attn 2
    {"method": "lora", "packed": True, "micro_batch": 2},
    {"method": "lora", "packed": True, "micro_batch": 2, "attn_implementation": "flash_attention_2"},
    {"method": "lora", "attn_implementation": "flash_attention_2"},
    {"method": "full", "packed": True, "micro_batch": 3, "grad_checkpointing": "non-reentrant"},
    {"method": "qlora", "packed": True, "micro_batch": 2},
    {"method": "lora", "packed": True, "micro_batch": 2, "mixed_precision": "bf16", "grad_checkpointing": "reentrant"},
]


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_fresh_trace_matches_each_phase(narrow_llama3_vocab_dir, kw):
    """Narrow traces (Llama 3's vocabulary): each phase's peak, liger's moments, the step's
    peak and its 512-rounded twin equal the estimate to the byte."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from runtime.train import train_measure, train_settings

    r = train_measure(
        train_settings(model=narrow_llama3_vocab_dir, device="trace", seq_len=64, liger_layers=True, **kw)
    )
    assert r["status"] == "ok", r["error"]
    e = estimate_train_settings(record_settings(r["settings"]))
    _check_phases(r, e)
    assert max(r["training"]["peak_live_bytes"].values()) == e.peak_live_bytes
    assert r["peak_allocated_bytes"] == e.peak_live_rounded_bytes
    # the stand-ins really ran: without them the saved rows, and so the forward phase, differ
    off = estimate_train_settings(record_settings({**r["settings"], "liger_layers": False}))
    if kw["method"] == "qlora" and kw.get("grad_checkpointing"):
        # no layer is saved, and QLoRA's fp32 norms save the same bytes either way
        assert r["training"]["peak_live_bytes"]["forward"] == off.candidates["forward (loss)"]
    else:
        assert r["training"]["peak_live_bytes"]["forward"] != off.candidates["forward (loss)"]


def test_trace_restores_the_rotary_function(narrow_llama3_vocab_dir):
    """The RoPE patch is module-level (``modeling_llama.apply_rotary_pos_emb``, as liger's
    ``apply_liger_kernel_to_llama``): the trace restores it, and a later default trace is exact."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers.models.llama import modeling_llama

    from runtime.train import train_measure, train_settings

    before = modeling_llama.apply_rotary_pos_emb
    r = train_measure(train_settings(model=narrow_llama3_vocab_dir, device="trace", seq_len=32, liger_layers=True))
    assert r["status"] == "ok" and r["details"]["liger_layers"]
    assert modeling_llama.apply_rotary_pos_emb is before
    r = train_measure(train_settings(model=narrow_llama3_vocab_dir, device="trace", seq_len=32))
    e = estimate_train_settings(record_settings(r["settings"]))
    assert max(r["training"]["peak_live_bytes"].values()) == e.peak_live_bytes


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "qlora", "loss": "liger"},
        {"method": "full", "quant": "fp32", "mixed_precision": "bf16"},
        {"dropout": 0.1, "loss": "liger"},
        {"targets": "all-linear,embed", "loss": "liger"},
        {"loss": "liger", "grad_checkpointing": "reentrant"},
        {"loss": "liger", "targets": "q,v"},
        {"loss": "liger", "adapter_dtype": "bf16"},
        {"liger_layers": "yes"},
        {"liger_layers": 1},
    ],
    ids=str,
)
def test_refused_by_name(kw):
    kw = {"liger_layers": True, **kw}
    with pytest.raises(InvalidSpecError, match="liger_layers") as ex:
        estimate_training(**kw)
    assert "\n" not in str(ex.value)


def test_qwen_is_refused(tmp_path):
    from estimator.model import preset_config

    cfg = {**preset_config("llama-3.2-3b"), "model_type": "qwen2"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidSpecError, match="liger_layers.*qwen2"):
        estimate_training(str(tmp_path), liger_layers=True)


def test_default_and_record_without_the_field():
    a = estimate_training(seq_len=4096)
    assert a.settings.to_dict()["liger_layers"] is False
    assert estimate_training(seq_len=4096, liger_layers=False).candidates == a.candidates
    s = a.settings.to_dict()
    del s["liger_layers"]
    s["targets"] = ",".join(LAYER_TARGETS)
    assert record_settings(s).liger_layers is False


def test_cli_flag(capsys):
    from estimator.cli import main

    assert main(["train", "--seq-len", "8k", "--loss", "liger", "--liger-layers"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(" loss=liger liger-layers")
    assert main(["train", "--seq-len", "8k"]) == 0
    assert "liger" not in capsys.readouterr().out.splitlines()[0]
    assert main(["train", "--seq-len", "8k", "--loss", "liger", "--liger-layers", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["settings"]["liger_layers"] is True and d["peak_live_bytes"] == 45_804_870_144


def test_refused_flag_exits_2_with_one_line():
    cmd = [sys.executable, "-m", "estimator", "train", "--liger-layers", "--method", "full", "--quant", "fp32"]
    p = subprocess.run([*cmd, "--mixed-precision", "bf16"], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "liger_layers" in lines[0] and "fp32 master weights" in lines[0]


def test_runtime_measures_what_the_estimate_does_not_model():
    """The estimate refuses an unmodelled step (settings.check_modelled); the runtime's settings
    accept it, so it can be traced or run on a GPU before it is modelled."""
    pytest.importorskip("torch")
    from runtime.train import train_settings

    kw = {"method": "full", "quant": "fp32", "mixed_precision": "bf16", "liger_layers": True}
    with pytest.raises(InvalidSpecError, match="liger_layers"):
        estimate_training(**kw)
    assert train_settings(device="trace", **kw)["liger_layers"] is True


def test_runtime_refuses_cpu():
    pytest.importorskip("torch")
    from runtime.settings import SettingsError
    from runtime.train import train_settings

    with pytest.raises(SettingsError, match="liger_layers"):
        train_settings(device="cpu", liger_layers=True)
    assert train_settings(device="trace", liger_layers=True)["liger_layers"] is True

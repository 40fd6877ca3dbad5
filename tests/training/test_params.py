"""Trainable parameters: hand-derived goldens, and PEFT itself on models built from the config."""

from __future__ import annotations

import contextlib
import io

import pytest

from estimator.errors import InvalidSpecError
from estimator.model import from_hf_config, load_model
from estimator.training import LAYER_TARGETS, adapters, parse_targets, trainable_params

SPEC = load_model("llama-3.2-3b")


def test_golden_qkvo_rank16():
    # The derivation: q and o are 3072 -> 3072, k and v 3072 -> 1024 (8 KV heads x 128);
    # each adapter is r x (in + out); 28 layers.
    qo = 2 * 16 * (3072 + 3072) * 28
    kv = 2 * 16 * (3072 + 1024) * 28
    assert qo + kv == 9_175_040
    assert trainable_params(SPEC, "lora", 16, parse_targets("q,k,v,o")).trainable == 9_175_040


def test_golden_all_linear_rank16():
    # + gate and up 3072 -> 8192 and down 8192 -> 3072: 3 x 16 x (3072 + 8192) per layer.
    per_layer = 2 * 16 * (3072 + 3072) + 2 * 16 * (3072 + 1024) + 3 * 16 * (3072 + 8192)
    assert per_layer * 28 == 24_313_856
    tp = trainable_params(SPEC, "lora", 16, parse_targets("all-linear"))
    assert tp.trainable == 24_313_856
    assert tp.all == 3_212_749_824 + 24_313_856  # the base model (tied embedding once) + the adapters
    assert tp.line() == "trainable params: 24,313,856 || all params: 3,237,063,680 || trainable%: 0.7511"


def test_extras_and_full():
    # lm_head LoRA: r x (H + V); embedding LoRA: r x (V + H) (lora_embedding_A [r, V], B [H, r]).
    base = trainable_params(SPEC, "lora", 8, parse_targets("all-linear")).trainable
    both = trainable_params(SPEC, "lora", 8, parse_targets("all-linear,lm_head,embed")).trainable
    assert both - base == 2 * 8 * (3072 + 128_256)
    full = trainable_params(SPEC, "full")
    assert full.trainable == full.all == 3_212_749_824


def test_parse_targets():
    assert parse_targets("all-linear") == LAYER_TARGETS
    assert parse_targets("v_proj, q") == ("q", "v")
    assert parse_targets(["embed", "ALL-LINEAR"]) == LAYER_TARGETS + ("embed",)
    for bad in ("", "qq", "q,,x"):
        with pytest.raises(InvalidSpecError, match="targets"):
            parse_targets(bad)


def _peft_line(model, targets, rank=16) -> str:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=32, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        pm.print_trainable_parameters()
    return buf.getvalue().strip()


@pytest.mark.parametrize(
    "targets,peft_targets",
    [
        ("q,k,v,o", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("all-linear", "all-linear"),
        (
            "all-linear,lm_head",
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
        ),
    ],
)
def test_against_peft_full_3b_on_meta(targets, peft_targets):
    """PEFT's own print_trainable_parameters on Llama 3.2 3B built from its config on meta."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from runtime.load import config_dict, hf_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(config_dict("llama-3.2-3b"), "sdpa"), dtype=torch.bfloat16)
    line = _peft_line(model, peft_targets)
    assert line == trainable_params(SPEC, "lora", 16, parse_targets(targets)).line()
    if targets == "q,k,v,o":
        assert line.startswith("trainable params: 9,175,040 ||")


def test_qlora_against_peft_narrow_cpu(narrow):
    """QLoRA: PEFT counts each bitsandbytes Params4bit as numel x 2 x element_size; checked on a
    narrow model quantized by bitsandbytes on CPU."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    bnb = pytest.importorskip("bitsandbytes")
    from torch import nn
    from transformers import AutoModelForCausalLM

    from runtime.load import hf_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(narrow, "sdpa"), dtype=torch.bfloat16)
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, nn.Linear) and full != "lm_head":
                q = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4"
                )
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                setattr(mod, cname, q.to("cpu"))
    assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters())
    spec = from_hf_config(narrow)
    line = _peft_line(model, "all-linear", rank=8)
    assert line == trainable_params(spec, "qlora", 8, parse_targets("all-linear")).line()


def test_adapter_shapes():
    a = adapters(SPEC, 16, ("k",))
    assert len(a) == 28 and a[0].a_shape == (16, 3072) and a[0].b_shape == (1024, 16)

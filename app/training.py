"""The calculator's Fine-tuning mode: one training step (full, LoRA, QLoRA) on the sidebar's
model and GPU, with the inference mode's answer cards, a breakdown, recommended GPUs and what
would fit. The numbers are ``estimator.training``'s (docs/training.md); this module only lays
them out. The calculator page calls ``mode()`` first and, in Fine-tuning mode, ``render``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import streamlit as st

from app import compute, tables
from app.escape import md
from estimator.errors import EstimatorError
from estimator.estimate import PRE_SM80_ARCHS
from estimator.training import TrainingEstimate, estimate_train_settings, make_train_settings
from estimator.training.settings import ATTN_IMPLEMENTATIONS, GRAD_CHECKPOINTING, TrainSettings
from estimator.training.solve import max_seq_len
from estimator.training.static import OPTIMIZERS, QLORA_QUANTS
from estimator.units import format_gib

MODE = "calc_mode"
INFERENCE, FINE_TUNING = "Inference", "Fine-tuning"
(
    METHOD,
    RANK,
    TARGETS,
    OPTIMIZER,
    SEQ_LEN,
    MICRO_BATCH,
    CHECKPOINTING,
    BASE,
    PRECISION,
    PACKED,
    ATTN,
    LOSS,
    LIGER_LAYERS,
) = (
    "train_method",
    "train_rank",
    "train_targets",
    "train_optimizer",
    "train_seq_len",
    "train_micro_batch",
    "train_checkpointing",
    "train_base",
    "train_precision",
    "train_packed",
    "train_attn",
    "train_loss",
    "train_liger_layers",
)
METHOD_LABELS = {
    "lora": "LoRA (bf16 base)",
    "qlora": "QLoRA (4-bit base)",
    "full": "Full fine-tuning (bf16)",
    "full-fp32": "Full fine-tuning (fp32 master weights)",
}
# mixed_precision: "off" runs the dtypes as loaded (PEFT's plain loop); "bf16" is the Trainer's
# bf16=True (autocast around the forward). fp32 master weights exist only under autocast.
PRECISION_LABELS = {"off": "As loaded (no autocast)", "bf16": "bf16 autocast (Trainer bf16=True)"}
TARGET_CHOICES = ("all-linear", "q,k,v,o", "q,v")
SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULTS: dict[str, Any] = {
    METHOD: "lora",
    RANK: 16,
    TARGETS: "all-linear",
    OPTIMIZER: "adamw",
    SEQ_LEN: 2048,
    MICRO_BATCH: 1,
    CHECKPOINTING: "off",
    BASE: "nf4",
    PRECISION: "off",
    PACKED: False,
    ATTN: "sdpa",
    LOSS: "transformers",
    LIGER_LAYERS: False,
}
LOSS_LABELS = {"transformers": "transformers (full logits)", "liger": "Liger fused linear cross-entropy"}
PARTS = {
    "weights": "Weights",
    "adapter_weights": "Adapter weights",
    "gradients": "Gradients",
    "optimizer_states": "Optimizer states",
    "activations_saved": "Activations saved for backward",
    "transient_peak": "Transient peak",
    "overhead": "Overhead",
}


def mode() -> str:
    """The Inference / Fine-tuning switch at the top of the calculator."""
    return (
        st.radio("Mode", (INFERENCE, FINE_TUNING), key=MODE, horizontal=True, label_visibility="collapsed") or INFERENCE
    )


def _init() -> None:
    for k, v in DEFAULTS.items():
        st.session_state.setdefault(k, v)


def _apply(change: dict[str, Any]) -> None:
    for k, v in change.items():
        st.session_state[k] = v


def settings(inp: Any) -> TrainSettings:
    """The training settings of the widgets, on the sidebar's model and GPU."""
    ss = st.session_state
    method = ss[METHOD]
    s = inp.settings()
    fp32 = method == "full-fp32"
    method = "full" if fp32 else method
    return make_train_settings(
        compute.model_from_key(s["model"]),
        gpu=s["gpu"],
        method=method,
        mixed_precision="bf16" if fp32 else ss[PRECISION],
        rank=int(ss[RANK]),
        targets=ss[TARGETS],
        optimizer=ss[OPTIMIZER],
        quant=ss[BASE] if method == "qlora" else ("fp32" if fp32 else "bf16"),
        seq_len=int(ss[SEQ_LEN]),
        micro_batch=int(ss[MICRO_BATCH]),
        grad_checkpointing=ss[CHECKPOINTING],
        packed=bool(ss[PACKED]),
        attn_implementation=ss[ATTN],
        loss=ss[LOSS],
        liger_layers=bool(ss[LIGER_LAYERS]),
    )


def method_key(s: TrainSettings) -> str:
    """The Method box's key for the settings (fp32 master weights are their own choice)."""
    return "full-fp32" if s.method == "full" and s.quant == "fp32" else s.method


def _estimate(s: TrainSettings, capacity_bytes: int, custom: bool) -> TrainingEstimate:
    return estimate_train_settings(s, capacity_bytes if custom else None)


def _widgets() -> None:
    c = st.columns(4)
    c[0].selectbox("Method", tuple(METHOD_LABELS), format_func=METHOD_LABELS.get, key=METHOD)
    if not st.session_state[METHOD].startswith("full"):
        c[1].number_input("LoRA rank", min_value=1, max_value=1024, step=8, key=RANK)
        c[2].selectbox("Target modules", TARGET_CHOICES, key=TARGETS, help="PEFT target_modules")
    if st.session_state[METHOD] == "qlora":
        c[3].selectbox("4-bit base", QLORA_QUANTS, key=BASE, help="bitsandbytes quant type (-dq: double quant)")
    d = st.columns(4)
    d[0].selectbox("Optimizer", OPTIMIZERS, key=OPTIMIZER)
    d[1].selectbox("Sequence length", SEQ_LENS, key=SEQ_LEN, format_func=lambda t: f"{t:,} tokens")
    d[2].number_input("Micro-batch", min_value=1, max_value=256, step=1, key=MICRO_BATCH)
    d[3].selectbox("Gradient checkpointing", GRAD_CHECKPOINTING, key=CHECKPOINTING)
    if st.session_state[METHOD] != "full-fp32":  # fp32 master weights are always under autocast
        st.selectbox(
            "Precision",
            tuple(PRECISION_LABELS),
            format_func=PRECISION_LABELS.get,
            key=PRECISION,
            help="bf16 autocast: what the Hugging Face Trainer's bf16=True does (accelerate wraps the "
            "forward in torch.autocast). As loaded: weights and adapters in their own dtypes (PEFT's plain loop).",
        )
    with st.expander("Packing, attention, loss, Liger kernels"):
        e = st.columns(4)
        e[0].checkbox(
            "Packed (padding-free)",
            key=PACKED,
            help="The micro-batch's sequences flattened into one row (DataCollatorWithFlattening, TRL "
            "padding_free); needs a micro-batch of 2 or more.",
        )
        e[1].selectbox("Attention", ATTN_IMPLEMENTATIONS, key=ATTN, help="The model's attn_implementation")
        e[2].selectbox(
            "Loss",
            tuple(LOSS_LABELS),
            format_func=LOSS_LABELS.get,
            key=LOSS,
            help="transformers' ForCausalLMLoss over the full logits, or Liger's fused linear cross-entropy "
            "(the Trainer's use_liger_kernel).",
        )
        e[3].checkbox(
            "Liger RMSNorm, SwiGLU, RoPE",
            key=LIGER_LAYERS,
            help="Liger-Kernel's layer kernels, which the Trainer's use_liger_kernel=True applies with the "
            "fused loss (Llama models).",
        )


def fixes(s: TrainSettings, capacity_bytes: int, custom: bool) -> list[dict[str, Any]]:
    """One-setting changes that make the step fit, each with its device used (what would fit).
    A change the estimate refuses with the other settings (liger under autocast...) is skipped."""
    options: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    if s.grad_checkpointing == "off":
        options.append(
            ("Gradient checkpointing", {CHECKPOINTING: "non-reentrant"}, {"grad_checkpointing": "non-reentrant"})
        )
    if s.micro_batch > 1:  # one sequence is an unpacked row
        options.append(("Micro-batch 1", {MICRO_BATCH: 1, PACKED: False}, {"micro_batch": 1, "packed": False}))
    if s.mixed_precision == "off":
        options.append(("bf16 autocast", {PRECISION: "bf16"}, {"mixed_precision": "bf16"}))
    if s.loss == "transformers":
        options.append(("Liger loss", {LOSS: "liger"}, {"loss": "liger"}))
    if not s.liger_layers:
        options.append(("Liger layer kernels", {LIGER_LAYERS: True}, {"liger_layers": True}))
    if s.method == "full" and s.quant == "fp32":
        options.append(("bf16 weights", {METHOD: "full"}, {"quant": "bf16"}))
    if s.method == "full":
        options.append(("LoRA", {METHOD: "lora"}, {"method": "lora", "quant": "bf16"}))
    if s.optimizer != "paged-adamw-8bit":
        options.append(("Paged AdamW 8-bit", {OPTIMIZER: "paged-adamw-8bit"}, {"optimizer": "paged-adamw-8bit"}))
    shorter = [t for t in SEQ_LENS if t < s.seq_len]
    for t in reversed(shorter):
        options.append((f"{t:,} tokens", {SEQ_LEN: t}, {"seq_len": t}))
        break
    out = []
    for label, change, kw in options:
        try:
            e = _estimate(replace(s, **kw), capacity_bytes, custom)
        except EstimatorError:
            continue
        if e.device_used_bytes <= capacity_bytes:
            out.append({"what": label, "change": change, "device_used_bytes": e.device_used_bytes})
    return out


def recommended(s: TrainSettings) -> list[dict[str, Any]]:
    """Catalog GPUs on which the step fits, smallest first (at most five)."""
    rows = []
    for key in compute.gpu_keys():
        g = compute.gpu_by_key(key)
        if g.arch in PRE_SM80_ARCHS:  # the training estimate models sm80+ (flash attention, bf16)
            continue
        e = estimate_train_settings(replace(s, gpu=g))
        if e.device_used_bytes <= g.memory_bytes:
            rows.append(
                {
                    "GPU": tables.gpu_display_name(g.name, g.memory_bytes),
                    "memory": g.memory_bytes,
                    "needed": e.device_used_bytes,
                }
            )
    rows.sort(key=lambda r: (r["memory"], r["GPU"]))
    return rows[:5]


def render(inp: Any) -> None:
    _init()
    st.title("Will it train?")
    _widgets()
    custom = inp.settings()["gpu_memory_bytes"] is not None
    try:
        s = settings(inp)
        e = _estimate(s, inp.capacity_bytes, custom)
        longest = max_seq_len(s, gpu_memory_bytes=inp.capacity_bytes)
    except EstimatorError as err:
        st.error("Cannot estimate these settings: " + md(err))
        return
    st.caption(
        f"{md(inp.model_label)} · {METHOD_LABELS[method_key(s)]} · {PRECISION_LABELS[s.mixed_precision]} · "
        f"{s.optimizer} · {s.seq_len:,} tokens × "
        f"{s.micro_batch} · checkpointing {s.grad_checkpointing} · on {md(inp.capacity_label)} · "
        f"{e.trainable.line()}"
    )
    answer, why = tables.verdict(e, inp.capacity_bytes)
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "VRAM needed",
        format_gib(e.device_used_bytes),
        border=True,
        delta=tables.vram_delta(e),
        delta_color="off",
        delta_arrow="off",
        help=f"GPU memory the training step uses at its peak ({e.peak_phase}): weights, adapters, "
        "gradients, optimizer states, activations saved for backward, the transient peak, the CUDA "
        "context and allocator (docs/training.md).",
    )
    c2.metric(
        f"Fits on {inp.capacity_label}?",
        answer,
        border=True,
        delta=why,
        delta_color=tables.VERDICT_COLORS[answer],
        delta_arrow="off",
    )
    c3.metric(
        "Longest sequence that fits",
        f"{longest:,} tokens" if longest >= 2 else "none",
        border=True,
        delta=f"micro-batch {s.micro_batch}",
        delta_color="off",
        delta_arrow="off",
        help="The longest sequence length such that it and every shorter one fit, at most the model's window.",
    )
    fix = fixes(s, inp.capacity_bytes, custom) if answer != "Yes" else []
    if fix:
        st.markdown(f"**To fit {md(inp.capacity_label)}**, change one setting (click to apply):")
        for col, f in zip(st.columns(len(fix)), fix):
            col.button(
                f"{f['what']} → {format_gib(f['device_used_bytes'])}",
                key=f"train_fix_{next(iter(f['change']))}",
                on_click=_apply,
                args=(f["change"],),
                width="stretch",
            )
    rows = [{"Part": PARTS[k], "GiB": v / 2**30} for k, v in e.breakdown.items()]
    st.subheader("Breakdown at the peak")
    st.dataframe(rows, hide_index=True, column_config={"GiB": st.column_config.NumberColumn(format="%.2f GiB")})
    if e.paged_bytes:
        st.caption(
            f"{format_gib(e.paged_bytes)} of the optimizer states are bitsandbytes paged memory (CUDA managed): "
            "NVML counts it, torch's allocator does not."
        )
    rec = recommended(s)
    st.subheader("Recommended GPUs")
    if rec:
        st.dataframe([{"GPU": r["GPU"], "Needs": format_gib(r["needed"])} for r in rec], hide_index=True)
    else:
        st.markdown("No GPU in the catalog fits this step; try the changes above or QLoRA with checkpointing.")

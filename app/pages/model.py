"""Model page: the architecture behind the numbers, from the shipped config.json."""

from __future__ import annotations

import streamlit as st

import estimator
from app import figures, state
from estimator.model import param_breakdown, preset_config
from estimator.units import GiB

PRESET_KEY = "model_page_preset"
_FOLLOWED = "_model_page_followed"  # the calculator's model when this page last followed it
LABELS = state.MODEL_LABELS
# What some spec cards and blog posts list for Llama 3.2 3B (they are wrong).
WRONG_3B = {"hidden_size": 2048, "num_hidden_layers": 26, "num_key_value_heads": 6}


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _arch_rows(cfg: dict, spec) -> list[dict]:
    fields = [
        ("hidden_size", "Hidden size"),
        ("num_hidden_layers", "Layers"),
        ("num_attention_heads", "Attention heads"),
        ("num_key_value_heads", "KV heads (GQA)"),
        ("head_dim", "Head dim"),
        ("intermediate_size", "MLP intermediate size"),
        ("vocab_size", "Vocabulary"),
        ("max_position_embeddings", "Max position embeddings"),
        ("tie_word_embeddings", "Tied input/output embedding"),
        ("torch_dtype", "Checkpoint dtype"),
    ]
    rows = [{"Field": label, "config.json key": k, "Value": _fmt(getattr(spec, k))} for k, label in fields]
    if "rope_theta" in cfg or "rope_parameters" in cfg:
        rope = cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta", rope.get("rope_theta"))
        theta = int(theta) if isinstance(theta, float) and theta.is_integer() else theta
        rows.append({"Field": "RoPE theta", "config.json key": "rope_theta", "Value": _fmt(theta)})
    return rows


def render() -> None:
    st.title("Model")
    # Open on the calculator's model (a preset), and follow it when it changes there.
    ss = st.session_state
    calc = (ss.get(state.SETTINGS) or {}).get("model")
    if calc in estimator.PRESETS and calc != ss.get(_FOLLOWED):
        ss[PRESET_KEY] = ss[_FOLLOWED] = calc
    ss.setdefault(PRESET_KEY, estimator.DEFAULT_PRESET)
    name = st.selectbox("Preset", estimator.PRESETS, key=PRESET_KEY, format_func=LABELS.get)
    cfg = preset_config(name)
    spec = estimator.load_preset(name)
    groups = param_breakdown(spec)
    total = spec.num_params

    st.caption(
        f"**{LABELS[name]}** as transformers builds it from its `config.json` "
        f"(`{cfg.get('architectures', ['LlamaForCausalLM'])[0]}`)."
    )
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Parameters",
        f"{total / 1e9:.2f} billion",
        delta=f"{total:,}",
        delta_color="off",
        delta_arrow="off",
        border=True,
    )
    kv_tok = estimator.kv_bytes_per_token(spec, "bf16")
    c2.metric(
        "KV cache per token (bf16)",
        f"{kv_tok / 1024:g} KiB",
        delta=f"{kv_tok:,} B",
        delta_color="off",
        delta_arrow="off",
        border=True,
        help="2 (K and V) × layers × KV heads × head_dim × 2 B, per sequence.",
    )
    wb = estimator.weight_bytes(spec, "bf16").total_bytes
    c3.metric(
        "Weights (bf16)", f"{wb / GiB:.2f} GiB", delta=f"{wb:,} B", delta_color="off", delta_arrow="off", border=True
    )

    left, right = st.columns([2, 3])
    with left:
        st.subheader("Architecture")
        st.table(_arch_rows(cfg, spec), border="horizontal", hide_index=True)
    with right:
        st.subheader("Where the parameters are")
        st.plotly_chart(figures.params_figure(groups), key="params_chart", config={"displayModeBar": False})
        H, L, I = spec.hidden_size, spec.num_hidden_layers, spec.intermediate_size
        st.markdown(
            f"- **Embedding**: vocab × hidden = {spec.vocab_size:,} × {H:,} = {groups['embedding']:,}"
            + (" (tied: the output head reuses it)" if spec.tie_word_embeddings else "")
            + "\n"
            f"- **Attention**: {L} layers × (q {spec.q_dim}×{H} + k, v {spec.kv_dim}×{H} each + o {H}×{spec.q_dim})"
            f" = {groups['attention']:,}\n"
            f"- **MLP**: {L} layers × 3 × {I:,} × {H:,} = {groups['mlp']:,}\n"
            f"- **Norms**: ({2 * L} + 1) × {H:,} = {groups['norms']:,}"
            + (f"\n- **LM head**: {groups['lm_head']:,}" if groups["lm_head"] else "")
        )

    st.subheader("KV cache bytes per token")
    rows = []
    for kv in estimator.KV_DTYPES:
        if kv == "auto":
            continue
        b = estimator.kv_bytes_per_token(spec, kv)
        rows.append({"KV dtype": kv, "Bytes/token": b, "8K context": b * 8192 / GiB, "128K context": b * 131072 / GiB})
    st.dataframe(
        rows,
        hide_index=True,
        key="kv_table",
        column_config={
            "Bytes/token": st.column_config.NumberColumn(format="localized"),
            "8K context": st.column_config.NumberColumn(format="%.3f GiB"),
            "128K context": st.column_config.NumberColumn(format="%.2f GiB"),
        },
    )
    st.caption(
        f"2 × {spec.num_hidden_layers} layers × {spec.num_key_value_heads} KV heads × "
        f"{spec.head_dim} head_dim × bytes per element, for one sequence; int8 and int4 (transformers' "
        "quantized cache) add a scale and zero point per 64 values."
    )

    if name == "llama-3.2-3b":
        st.subheader("A note on spec cards")
        wrong_cfg = {**cfg, **WRONG_3B}
        wrong = estimator.from_hf_config(wrong_cfg)
        wrong_kv = estimator.kv_bytes_per_token(wrong, "bf16")
        st.warning(
            "Some spec cards and calculators list Llama 3.2 3B with **hidden size 2,048, 26 layers and "
            "6 KV heads**. Those are not the model's numbers: its `config.json` says hidden 3,072, 28 layers "
            f"and 8 KV heads. With the wrong shape the model would have {wrong.num_params / 1e9:.2f} B "
            f"parameters instead of {total / 1e9:.2f} B, and {wrong_kv:,} B of KV cache per token instead of "
            f"{kv_tok:,} B: a calculator built on them underestimates the KV cache by "
            f"{100 * (1 - wrong_kv / kv_tok):.0f}%.",
            icon=":material/warning:",
        )


render()

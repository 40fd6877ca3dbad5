"""Calculator page: will it fit, and how far can the context go?"""

from __future__ import annotations

import json

import streamlit as st

import estimator
from app import compute, figures, inputs, state, tables, training
from app.escape import md
from app.figures import tokens_label
from estimator.launch import transformers_launch
from estimator.units import GiB, format_gib

COUNTER_HELP = {
    "peak_allocated_bytes": (
        "Peak allocated",
        "The most memory PyTorch's tensors held at once (`torch.cuda.max_memory_allocated`).",
    ),
    "peak_reserved_bytes": (
        "Peak reserved",
        "What PyTorch's caching allocator took from the driver to serve them, "
        "including free space inside its blocks (`torch.cuda.max_memory_reserved`). "
        "Fragmentation left by earlier allocations is not modelled: replaying the "
        "traced transformers forward through the allocator gives a median 4.6% more, "
        "up to 27% with eager attention (validation/trace).",
    ),
    "device_used_bytes": (
        "Device used",
        "What the GPU must have free: reserved memory plus the CUDA context and "
        "libraries (nvidia-smi's number for the process). Reserved's fragmentation caveat applies.",
    ),
}


def _gib_col(label: str) -> st.column_config.NumberColumn:
    return st.column_config.NumberColumn(label, format="%.2f GiB")


def _ctx_col(label: str) -> st.column_config.NumberColumn:
    return st.column_config.NumberColumn(label, format="localized", help="Largest context (tokens) that fits")


FITS_COL = st.column_config.CheckboxColumn("Fits", help="Fits on the GPU at the current settings")


def _height(rows: int) -> int:
    """Pixel height that shows every row of a dataframe without an inner scrollbar."""
    return 35 * (rows + 1) + 3


def _certain_text(certain: int, point: int) -> str:
    """The largest context that fits for certain (the range's high end fits), said next to the point's."""
    if certain >= point:
        return "The range agrees: it fits for certain (Yes)."
    if certain == 0:
        return "No context fits for certain: even a one-token prompt's range reaches past the memory."
    return (
        f"For certain (even the range's high end fits, a Yes): up to {certain:,} tokens; between that and "
        f"{point:,} the verdict is Tight."
    )


def render() -> None:
    inp = inputs.sidebar()
    if training.mode() == training.FINE_TUNING:  # the Fine-tuning mode: app/training.py
        training.render(inp)
        return
    s = inp.settings()
    try:
        est = compute.cached_estimate(**s)
        ctx_args = (
            s["model"],
            inp.quant,
            inp.batch,
            inp.kv_dtype,
            inp.attn,
            inp.gpu_key,
            s["gpu_memory_bytes"],
            inp.prefill_chunk,
        )
        max_ctx = compute.cached_largest_context(*ctx_args)
    except estimator.EstimatorError as e:
        st.error("Cannot estimate these settings: " + md(e))
        st.stop()
    spec = compute.spec_of(s["model"])
    window = state.window_of(spec)

    # ------------------------------------------------------------------ headline
    st.title("Will it fit?")
    st.caption(tables.headline_caption(inp.model_label, est) + f" · on {inp.capacity_label}")
    answer, why = tables.verdict(est, inp.capacity_bytes)
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "VRAM needed",
        format_gib(est.device_used_bytes),
        border=True,
        # short enough not to be cut at a third of a 1440 px page; the share of the GPU is in the help
        delta=tables.vram_delta(est),
        delta_color="off",
        delta_arrow="off",
        help="GPU memory (VRAM) the process uses at its peak (weights, KV cache, activations, CUDA "
        "context and allocator): what the GPU must have free. 1 GiB = 2^30 bytes = 1.074 GB; GPUs "
        f"are sold in GB: this is {est.device_used_bytes / 1e9:.2f} GB, "
        f"{100 * est.device_used_bytes / inp.capacity_bytes:.0f}% of {inp.capacity_label}. The range "
        f"({tables.range_text(est)}) is where derivation stops: the CUDA context (the readings cited "
        "for this GPU class) and allocator fragmentation (none, up to the most the trace's allocator "
        "replay measured); weights, KV cache and activations are exact.",
    )
    c2.metric(
        f"Fits on {inp.capacity_label}?",
        answer,
        border=True,
        icon={"Yes": ":material/check_circle:", "Tight": ":material/warning:"}.get(answer, ":material/cancel:"),
        delta=why,
        delta_color=tables.VERDICT_COLORS[answer],
        delta_arrow="off",
        help=f"{inp.capacity_label} has {format_gib(inp.capacity_bytes)}; headroom is what is left. "
        "Yes: even the range's high end fits. Tight: the range straddles the memory (the CUDA context "
        "and allocator fragmentation decide). No: even the low end does not fit.",
    )
    ctx_text, ctx_note = tables.largest_context_text(max_ctx, window)
    c3.metric(
        "Largest context that fits",
        ctx_text,
        border=True,
        delta=f"{estimator.QUANTS[inp.quant].label}, batch {inp.batch}" + (f" · {ctx_note}" if ctx_note else ""),
        delta_color="off",
        delta_arrow="off",
        help=f"The longest context (the window: prompt plus {state.NEW_TOKENS} generated tokens) such "
        f"that it and every shorter one fit {inp.capacity_label} with these settings (on the point "
        f"estimate); at most this model's window of {window:,} tokens. "
        + _certain_text(compute.cached_largest_context(*ctx_args, "high"), max_ctx),
    )

    # How fast: the transformers speed of these settings on this GPU (estimator.speed), next to memory.
    sp = est.speed
    if sp is not None:
        for col, (label, value, delta, help_text) in zip(st.columns(3), tables.speed_metrics(sp)):
            col.metric(label, value, border=True, delta=delta, delta_color="off", delta_arrow="off", help=help_text)
    else:
        st.caption("Speed needs a catalog GPU with a known memory bandwidth (pick one in the sidebar).")

    fixes = compute.cached_remedies(
        s["model"],
        inp.quant,
        inp.context,
        inp.batch,
        inp.kv_dtype,
        inp.attn,
        inp.gpu_key,
        s["gpu_memory_bytes"],
        max_ctx,
        inp.prefill_chunk,
    )
    if fixes:
        st.markdown(f"**To fit {md(inp.capacity_label)}**, change one setting (click to apply):")
        for col, fix in zip(st.columns(len(fixes)), fixes):
            col.button(
                f"{fix['what']} → {format_gib(fix['device_used_bytes'])}",
                key=f"fix_{next(iter(fix['change']))}",
                on_click=inputs.apply_change,
                args=(fix["change"],),
                width="stretch",
            )
    elif not est.fits:
        st.markdown(
            f"No single change of weights, KV cache, context or batch fits {md(inp.capacity_label)}; the GPUs below do."
        )
    fitting = compute.cached_fitting_gpus(
        s["model"], inp.quant, inp.context, inp.batch, inp.kv_dtype, inp.attn, inp.keep_free_bytes, inp.prefill_chunk
    )
    st.markdown(tables.recommended_text(tables.with_speed(fitting, est), len(compute.gpu_keys())))
    if est.peak_at == "attention" and est.activations_bytes > est.kv_cache_bytes:
        why = (
            "Eager attention holds the full score matrix (heads × context²) at prefill; SDPA avoids it."
            if inp.attn == "eager"
            else f"On {inp.capacity_label} (before sm80), SDPA falls back to its math kernel, which holds the "
            "full score matrix (heads × context², fp32) at prefill. Why: transformers calls SDPA with "
            "enable_gqa=True for grouped-query models; torch's flash kernel needs sm80 or newer "
            "(sdp_utils.cpp, check_flash_attention_hardware_support) and, in torch 2.13, the "
            "memory-efficient kernel takes no GQA (the scaled_dot_product_attention docs: GQA works only "
            "with the flash and math kernels), so the math kernel runs (transformers#48633). Remedy: "
            "prefill in chunks (the Prefill setting), which bounds the scores to chunk × context."
        )
        st.info(f"Activations dominate: {why}", icon=":material/info:")
    st.plotly_chart(
        figures.breakdown_figure(est, inp.capacity_bytes, inp.capacity_label),
        key="breakdown_chart",
        config={"displayModeBar": False},
    )
    with st.expander("Why more than bits × parameters + KV cache?"):
        st.table(tables.naive_rule_rows(est), hide_index=True, border="horizontal")
        st.caption("Model cards quote the simple rule; the GPU must also hold what it leaves out.")
    cols = st.columns(3)
    for col, (field, (label, text)) in zip(cols, COUNTER_HELP.items()):
        with col.container(border=True):
            st.markdown(f"**{label}** &nbsp; `{format_gib(getattr(est, field))}`")
            st.caption(text)

    # ------------------------------------------------------------------ details
    # Tabs track which one is open, so only the visible tab computes (the GPU table alone is
    # ~370 max-context searches when batch, KV dtype or attention change).
    t_ctx, t_quant, t_gpu, t_how, t_export = st.tabs(state.DETAIL_TABS, key=state.DETAILS_TAB, on_change="rerun")
    labels = {q: estimator.QUANTS[q].label for q in estimator.TRANSFORMERS_QUANTS}
    sweep_args = (s["model"], inp.batch, inp.kv_dtype, inp.attn, inp.gpu_key, s["gpu_memory_bytes"], inp.prefill_chunk)
    try:
        if t_ctx.open is not False:
            with t_ctx:
                rows = compute.cached_sweep(*sweep_args)
                st.plotly_chart(
                    figures.context_figure(
                        rows,
                        capacity_bytes=inp.capacity_bytes,
                        capacity_label=inp.capacity_label,
                        context=inp.context,
                        quant=inp.quant,
                        labels=labels,
                    ),
                    key="context_chart",
                )
                ctxs = compute.sweep_contexts(s["model"])
                st.caption(
                    f"Device memory used, per weight quantization, from {tokens_label(ctxs[0])} to "
                    f"{tokens_label(ctxs[-1])} tokens of context (the model's window). The dashed "
                    "line is the GPU's memory: a line under it fits. Click a legend entry to hide it."
                )
        if t_quant.open is not False:
            with t_quant:
                qrows = compute.cached_quant_rows(
                    s["model"],
                    inp.context,
                    inp.batch,
                    inp.kv_dtype,
                    inp.attn,
                    inp.gpu_key,
                    s["gpu_memory_bytes"],
                    inp.prefill_chunk,
                )
                st.dataframe(
                    tables.quant_table(qrows, spec),
                    hide_index=True,
                    key="quant_table",
                    height=_height(len(qrows)),
                    column_config={
                        "Fits": FITS_COL,
                        "Weights": _gib_col("Weights"),
                        "KV cache": _gib_col("KV cache"),
                        "Total (device used)": _gib_col("Total (device used)"),
                        "Headroom": _gib_col("Headroom"),
                        "Largest context": _ctx_col(f"Largest context on {inp.capacity_label}"),
                    },
                )
                st.caption(
                    f"At {tokens_label(inp.context)} tokens, batch {inp.batch}, KV {inp.kv_dtype}. "
                    "Stored bits/param counts scales, absmax and the unquantized embedding and norms."
                )
        if t_gpu.open is not False:
            with t_gpu:
                grows = compute.cached_gpu_rows(
                    s["model"],
                    inp.quant,
                    inp.context,
                    inp.batch,
                    inp.kv_dtype,
                    inp.attn,
                    inp.keep_free_bytes,
                    inp.prefill_chunk,
                )
                quants = list(estimator.TRANSFORMERS_QUANTS)
                cfg = {
                    "Memory": _gib_col("Memory"),
                    "Headroom": _gib_col("Headroom"),
                    "Fits": FITS_COL,
                    **{q: _ctx_col(labels[q]) for q in quants},
                }
                st.dataframe(
                    tables.gpu_table(grows, quants),
                    hide_index=True,
                    key="gpu_table",
                    column_config=cfg,
                    height=_height(len(grows)),
                )
                st.caption(
                    f"'Fits' is at the current setting ({labels[inp.quant]}, {tokens_label(inp.context)} "
                    "tokens). The other columns are the largest context (tokens) that fits with each "
                    f"quantization; {window:,} means the whole window fits, 0 that not even a "
                    "one-token prompt does."
                )
        if t_how.open is not False:
            with t_how:
                st.markdown(
                    "Every number comes from the `estimator` library: exact tensor bytes for the weights, "
                    "the KV cache at the end of generation, the prefill peak for activations, and "
                    "measured constants for the CUDA context and the allocator."
                )
                st.table(tables.formula_rows(spec, est), hide_index=True, border="horizontal")
                st.markdown(
                    "**By phase.** The headline is the largest of the three; "
                    f"here the peak is in the {est.peak_phase} phase."
                )
                phases = tables.phases_table(est)
                st.dataframe(
                    phases,
                    hide_index=True,
                    key="phases_table",
                    column_config={k: _gib_col(k) for k in phases[0] if k != "Phase"} if phases else None,
                )
                with st.expander("All parts of the estimate"):
                    st.dataframe(tables.breakdown_details(est), hide_index=True)
        if t_export.open is not False:
            with t_export:
                names = tables.export_names(
                    inp.model_key if isinstance(inp.model, str) else "custom",
                    inp.quant,
                    inp.context,
                    inp.batch,
                    inp.kv_dtype,
                    inp.attn,
                    inp.prefill_chunk,
                    inp.gpu_key or f"{inp.capacity_bytes / GiB:g}gib",
                )
                e1, e2 = st.columns(2)
                e1.download_button(
                    "Estimate (JSON)",
                    json.dumps(est.to_dict(), indent=2),
                    file_name=names[0],
                    mime="application/json",
                    key="dl_json",
                    icon=":material/download:",
                )
                e2.download_button(
                    "Sweep (CSV)",
                    compute.cached_sweep_csv(*sweep_args),
                    file_name=names[1],
                    mime="text/csv",
                    key="dl_csv",
                    icon=":material/download:",
                )
                st.caption("The settings are in the page address: copy the URL to share this exact view.")
                launch = transformers_launch(est.settings)
                st.markdown("**Launch with these settings** (transformers)")
                st.code(launch.command, language="python")
                if launch.notes:
                    st.caption(" ".join(md(n) for n in launch.notes))
                st.json(est.to_dict(), expanded=False)
    except estimator.EstimatorError as e:
        st.error("Cannot compute these settings: " + md(e))


render()

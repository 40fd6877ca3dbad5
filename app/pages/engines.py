"""Engines page: the same model, context and GPU under transformers, vLLM and llama.cpp, side by side."""

from __future__ import annotations

from typing import Any

import streamlit as st

import estimator
from estimator.engines import estimate_executorch, estimate_llamacpp, estimate_vllm
from estimator.engines import executorch as et
from estimator.engines import llamacpp as lc
from estimator.engines import vllm as vl
from estimator.engines.cli import llamacpp_result, vllm_result
from estimator.overhead import cuda_context_bytes

GiB = 1 << 30
ENGINE_OPTIONS = ("transformers", "vLLM", "llama.cpp")
LABELS = {"llama-3.2-1b": "Llama 3.2 1B", "llama-3.2-3b": "Llama 3.2 3B", "llama-3.1-8b": "Llama 3.1 8B"}
TRANSFORMERS_QUANTS = ("bf16", "fp16", "int8", "nf4", "fp8")

# Widget keys (prefixed eng_ so they never collide with the calculator's).
K_MODEL, K_CONTEXT, K_GPU, K_ENGINE = "eng_model", "eng_context", "eng_gpu", "eng_engine"
K_TF_QUANT, K_VLLM_UTIL, K_VLLM_SEQS, K_VLLM_VERSION, K_VLLM_TP = (
    "eng_tf_quant", "eng_vllm_util", "eng_vllm_seqs", "eng_vllm_version", "eng_vllm_tp")
K_LC_QUANT, K_LC_PARALLEL, K_LC_FA, K_LC_KV, K_LC_NGL = (
    "eng_lc_quant", "eng_lc_parallel", "eng_lc_fa", "eng_lc_kv", "eng_lc_ngl")

ROWS = (("weights_bytes", "Weights"), ("kv_cache_bytes", "KV cache"),
        ("activations_bytes", "Activations / compute buffer"), ("overhead_bytes", "Overhead (context, non-torch, graphs)"),
        ("device_used_bytes", "GPU memory used"))


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GiB, 2)


def side_by_side_rows(results: dict[str, dict | str]) -> list[dict[str, Any]]:
    """Rows of the comparison table: one per memory part, one column per engine (GiB, 2 decimals).
    A result that is a string (an error or the engine's refusal) shows as empty cells."""
    rows = []
    for key, label in ROWS:
        row: dict[str, Any] = {"Part": label}
        for eng, r in results.items():
            row[eng] = gib(r.get(key)) if isinstance(r, dict) else None
        rows.append(row)
    return rows


def side_by_side_figure(results: dict[str, dict | str]):
    """Stacked bars of the four parts per engine, in GiB."""
    import plotly.graph_objects as go

    engines = [e for e, r in results.items() if isinstance(r, dict)]
    fig = go.Figure()
    for key, label in ROWS[:-1]:
        fig.add_bar(name=label, x=engines, y=[gib(results[e][key]) for e in engines])
    fig.update_layout(barmode="stack", yaxis_title="GPU memory (GiB)", height=380,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h"))
    return fig


def _default(key: str, shared: str, options: tuple | list, fallback: Any) -> Any:
    v = st.session_state.get(shared)
    return v if v in options else fallback


def _inputs() -> dict[str, Any]:
    gpus = {g.key: g for g in estimator.gpu_catalog()}
    keys = list(gpus)
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", estimator.PRESETS, key=K_MODEL, format_func=lambda k: LABELS.get(k, k),
                         index=estimator.PRESETS.index(_default(K_MODEL, "model", estimator.PRESETS, "llama-3.2-3b")))
    window = min(estimator.load_model(model).max_position_embeddings, 1 << 24)  # the model's window
    ctx0 = st.session_state.get("context")
    context = c2.number_input("Context (tokens)", min_value=1, max_value=window, step=1024, key=K_CONTEXT,
                              value=min(ctx0, window) if isinstance(ctx0, int) and ctx0 > 0 else min(8192, window),
                              help=f"The window, at most the model's {window:,} tokens: transformers' prompt plus "
                                   "32 new tokens; vLLM's max_model_len; llama.cpp's n_ctx")
    gpu_key = c3.selectbox("GPU", keys, key=K_GPU, format_func=lambda k: gpus[k].name,
                           index=keys.index(_default(K_GPU, "gpu", keys, "rtx-4090-24gb")))
    engine = st.radio("Engine in detail", ENGINE_OPTIONS, key=K_ENGINE, horizontal=True, index=1)
    with st.expander("Engine settings", expanded=False):
        a, b, c = st.columns(3)
        tf_quant = a.selectbox("transformers weights", TRANSFORMERS_QUANTS, key=K_TF_QUANT)
        util = b.slider("vLLM gpu_memory_utilization", 0.5, 0.98, 0.9, 0.01, key=K_VLLM_UTIL)
        seqs = b.number_input("vLLM max_num_seqs", 1, 4096, 256, key=K_VLLM_SEQS)
        version = b.radio("vLLM accounting", vl.VLLM_VERSIONS, index=1, key=K_VLLM_VERSION, horizontal=True)
        tp = b.selectbox("vLLM --tensor-parallel-size", (1, 2, 4, 8), key=K_VLLM_TP)
        lc_quant = c.selectbox("llama.cpp GGUF type", lc.GGUF_QUANTS, index=lc.GGUF_QUANTS.index("q4_k_m"),
                               key=K_LC_QUANT)
        parallel = c.number_input("llama.cpp --parallel", 1, 64, 1, key=K_LC_PARALLEL)
        fa = c.checkbox("llama.cpp --flash-attn", value=False, key=K_LC_FA)
        kv = c.selectbox("llama.cpp KV type", ("f16", "q8_0", "q4_0"), key=K_LC_KV)
        ngl = c.number_input("llama.cpp --n-gpu-layers (-1 = all)", -1, 200, -1, key=K_LC_NGL)
    return dict(model=model, context=int(context), gpu=gpus[gpu_key], engine=engine, tf_quant=tf_quant,
                util=float(util), seqs=int(seqs), version=version, tp=int(tp), lc_quant=lc_quant,
                parallel=int(parallel), fa=bool(fa), kv=kv, ngl=int(ngl))


def compute_all(inp: dict[str, Any]) -> dict[str, dict | str]:
    """Each engine's JSON-like result, or the message of why it has none."""
    spec = estimator.load_model(inp["model"])
    gpu, total = inp["gpu"], inp["gpu"].memory_bytes
    out: dict[str, dict | str] = {}
    try:
        out["transformers"] = estimator.estimate(inp["model"], quant=inp["tf_quant"], context=inp["context"],
                                                 gpu=gpu.key).to_dict()
    except estimator.EstimatorError as e:
        out["transformers"] = str(e)
    try:
        ctx = min(inp["context"], spec.max_position_embeddings)
        e = estimate_vllm(spec, total, gpu_memory_utilization=inp["util"], max_model_len=ctx,
                          max_num_seqs=inp["seqs"], version=inp["version"], tensor_parallel_size=inp["tp"],
                          gpu_name=gpu.name, gpu_arch=gpu.arch)
        r = vllm_result(e, {"engine": "vllm", "context": ctx})
        s = vl.smallest_gpu_set(spec, ctx, gpu_memory_utilization=inp["util"], max_num_seqs=inp["seqs"],
                                version=inp["version"])
        r["smallest_gpu_set"] = None if s is None else {
            "gpu": s["gpu"].name, "num_gpus": s["num_gpus"], "tensor_parallel_size": s["tensor_parallel_size"],
            "pipeline_parallel_size": s["pipeline_parallel_size"]}
        if e.starts:
            out["vLLM"] = r
        else:
            hint = "" if s is None else (f" Smallest catalog GPU set that starts: {s['num_gpus']} × {s['gpu'].name} "
                                         f"(--tensor-parallel-size {s['tensor_parallel_size']}, "
                                         f"--pipeline-parallel-size {s['pipeline_parallel_size']}).")
            out["vLLM"] = f"vLLM would not start: {e.refusal}{hint}"
    except estimator.EstimatorError as e:
        out["vLLM"] = str(e)
    try:
        e = estimate_llamacpp(spec, inp["lc_quant"], inp["context"], parallel=inp["parallel"], flash_attn=inp["fa"],
                              kv_dtype=inp["kv"], n_gpu_layers=inp["ngl"])
        out["llama.cpp"] = llamacpp_result(e, {"engine": "llama.cpp", "context": inp["context"]}, total,
                                           cuda_context_bytes=cuda_context_bytes(gpu.cls))
    except estimator.EstimatorError as e:
        out["llama.cpp"] = str(e)
    return out


def _detail(engine: str, r: dict | str, total: int) -> None:
    if isinstance(r, str):
        st.error(r)
        return
    c1, c2, c3 = st.columns(3)
    c1.metric(f"{engine}: GPU memory used", f"{r['device_used_bytes'] / GiB:.2f} GiB", border=True)
    if engine == "vLLM":
        c2.metric("KV pool", f"{r['kv_pool_bytes'] / GiB:.2f} GiB", border=True,
                  delta=f"{r['num_gpu_blocks']:,} blocks of 16 tokens", delta_color="off")
        c3.metric(f"Requests of {r['max_model_len']:,} tokens at once", f"{r['max_concurrency']:.2f}x", border=True,
                  help="vLLM's 'Maximum concurrency for N tokens per request'")
        if r["tensor_parallel_size"] > 1:
            st.caption(f"Per GPU, with --tensor-parallel-size {r['tensor_parallel_size']}.")
        ss = r.get("smallest_gpu_set")
        if ss:
            st.caption(f"Smallest catalog GPU set that starts these settings: {ss['num_gpus']} × {ss['gpu']} "
                       f"(--tensor-parallel-size {ss['tensor_parallel_size']}, "
                       f"--pipeline-parallel-size {ss['pipeline_parallel_size']}).")
    elif engine == "llama.cpp":
        c2.metric("Host RAM (buffers)", f"{r['host_bytes'] / GiB:.2f} GiB", border=True,
                  help="token_embd stays in host RAM; layers not offloaded, their KV, and the pinned compute buffer")
        c3.metric("Layers on GPU", f"{r['n_gpu_layers']}", border=True)
    else:
        c2.metric("Fits?", "Yes" if r.get("fits") else "No", border=True)
        c3.metric("Headroom", f"{(r.get('headroom_bytes') or 0) / GiB:.2f} GiB", border=True)


def render() -> None:
    st.title("Engines side by side")
    st.caption("The same model, context and GPU under each serving engine. All sizes in GiB (2^30 bytes).")
    inp = _inputs()
    try:
        results = compute_all(inp)
    except estimator.EstimatorError as e:
        st.error(f"Cannot compute these settings: {e}")
        st.stop()
    total = inp["gpu"].memory_bytes
    name = {"transformers": "transformers", "vLLM": "vLLM", "llama.cpp": "llama.cpp"}[inp["engine"]]
    _detail(name, results[name], total)
    st.subheader("Side by side")
    st.dataframe(side_by_side_rows(results), hide_index=True, key="eng_table",
                 column_config={e: st.column_config.NumberColumn(e, format="%.2f GiB") for e in results})
    for eng, r in results.items():
        if isinstance(r, str) and eng != name:
            st.warning(f"{eng}: {r}")
    if any(isinstance(r, dict) for r in results.values()):
        st.plotly_chart(side_by_side_figure(results), key="eng_chart", config={"displayModeBar": False})
    st.caption("vLLM takes gpu_memory_utilization of the GPU up front and gives the rest to the KV pool, so its "
               "GPU memory does not shrink with a shorter context; the pool decides how many requests run at once. "
               "llama.cpp sizes its KV buffer for n_ctx cells shared by --parallel sequences.")
    with st.expander("On device (ExecuTorch, Llama 3.2 release variants)"):
        spec = estimator.load_model(inp["model"])
        rows = []
        for v in et.VARIANTS:
            e = estimate_executorch(spec, v, inp["context"])
            rows.append({"Variant": v, "Program file (GiB)": gib(e.program_bytes),
                         f"Runtime at {inp['context']:,} tokens (GiB)": gib(e.runtime_bytes)})
        st.dataframe(rows, hide_index=True, key="eng_et_table")


render()

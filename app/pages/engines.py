"""Engines page: the calculator's model, weights bit width, context and GPU under transformers, vLLM and
llama.cpp, side by side, with one sentence per engine on why its number differs."""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

import estimator
from app import compute, figures, state
from app.escape import md
from app.figures import tokens_label
from app.inputs import MODEL_LABELS, gpu_label, quant_choice_label
from app.tables import short_gpu_name
from estimator.engines import estimate_executorch, estimate_llamacpp, estimate_vllm, same_bits
from estimator.engines import executorch as et
from estimator.engines import llamacpp as lc
from estimator.engines import vllm as vl
from estimator.gpus import custom_gpu
from estimator.launch import llamacpp_launch, ollama_launch, vllm_launch
from estimator.overhead import cuda_context_bytes
from estimator.report import MemoryReport
from estimator.units import GiB, format_gib

ENGINES = ("transformers", "vLLM", "llama.cpp")
SAME_BITS = "same"  # llama.cpp GGUF choice: the type with the weights' bit width (estimator.engines.same_bits)

# Widget keys (prefixed eng_ so they never collide with the calculator's).
K_MODEL, K_QUANT, K_CONTEXT, K_GPU = "eng_model", "eng_quant", "eng_context", "eng_gpu"
K_VLLM_UTIL, K_VLLM_SEQS, K_VLLM_VERSION, K_VLLM_TP = (
    "eng_vllm_util",
    "eng_vllm_seqs",
    "eng_vllm_version",
    "eng_vllm_tp",
)
K_LC_QUANT, K_LC_PARALLEL, K_LC_FA, K_LC_KV, K_LC_NGL = (
    "eng_lc_quant",
    "eng_lc_parallel",
    "eng_lc_fa",
    "eng_lc_kv",
    "eng_lc_ngl",
)
FOLLOWED = "_eng_followed"  # the calculator settings the page last took its inputs from

ROWS = (
    ("weights_bytes", "Weights"),
    ("kv_cache_bytes", "KV cache"),
    ("activations_bytes", "Activations / compute buffer"),
    ("overhead_bytes", "Overhead (CUDA context, non-torch, graphs)"),
    ("device_used_bytes", "GPU memory used"),
)


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GiB, 2)


def calculator_settings() -> dict[str, Any]:
    """The calculator's last settings (its defaults when it has not run in this session)."""
    s = st.session_state.get(state.SETTINGS)
    if isinstance(s, dict):
        return s
    d = state.DEFAULTS
    return {
        "model": d[state.MODEL],
        "quant": d[state.QUANT],
        "context": d[state.CONTEXT],
        "batch": d[state.BATCH],
        "kv_dtype": d[state.KV_DTYPE],
        "attn": d[state.ATTN],
        "gpu": d[state.GPU],
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }


def _follow(calc: dict[str, Any]) -> None:
    """Take model, weights, context and GPU from the calculator when its settings changed since the
    page last followed them, or when the page's widgets were dropped (another page was open)."""
    ss = st.session_state
    view = (calc["model"], calc["quant"], calc["context"], calc["gpu"], calc["gpu_memory_bytes"])
    if ss.get(FOLLOWED) == view and all(k in ss for k in (K_MODEL, K_QUANT, K_CONTEXT, K_GPU)):
        return
    ss[K_MODEL], ss[K_QUANT], ss[K_CONTEXT] = calc["model"], calc["quant"], int(calc["context"])
    ss[K_GPU] = calc["gpu"] or state.CUSTOM_GPU
    ss[FOLLOWED] = view


def model_label(key: str) -> str:
    if key in MODEL_LABELS:
        return MODEL_LABELS[key]
    return "Custom config.json (from the Calculator)"


def _inputs() -> dict[str, Any]:
    calc = calculator_settings()
    _follow(calc)
    ss = st.session_state
    models = list(estimator.PRESETS) + ([calc["model"]] if calc["model"] not in estimator.PRESETS else [])
    if ss[K_MODEL] not in models:
        ss[K_MODEL] = models[0]
    gpus = compute.gpu_keys() + ([state.CUSTOM_GPU] if calc["gpu"] is None else [])
    if ss[K_GPU] not in gpus:
        ss[K_GPU] = state.DEFAULTS[state.GPU]
    c1, c2, c3, c4 = st.columns(4)
    model = c1.selectbox("Model", models, key=K_MODEL, format_func=model_label)
    quant = c2.selectbox(
        "Weights",
        estimator.TRANSFORMERS_QUANTS,
        key=K_QUANT,
        format_func=quant_choice_label,
        help="The bit width every engine loads the weights at: transformers as chosen, vLLM "
        "and llama.cpp in their format of the same width (the table's first row).",
    )
    window = compute.window(model)
    if ss[K_CONTEXT] > window or ss[K_CONTEXT] < state.MIN_CONTEXT:
        ss[K_CONTEXT] = min(max(ss[K_CONTEXT], state.MIN_CONTEXT), window)
    context = c3.number_input(
        "Context (tokens)",
        min_value=state.MIN_CONTEXT,
        max_value=window,
        step=1024,
        key=K_CONTEXT,
        help=f"The window, at most the model's {window:,} tokens: transformers' prompt plus "
        f"{state.NEW_TOKENS} new tokens; vLLM's max_model_len; llama.cpp's n_ctx.",
    )
    custom_mem = calc["gpu_memory_bytes"] or 0

    def gpu_name(k: str) -> str:
        return f"Custom · {custom_mem / GiB:.2f} GiB" if k == state.CUSTOM_GPU else gpu_label(k)

    gpu_key = c4.selectbox("GPU", gpus, key=K_GPU, format_func=gpu_name)
    st.caption(
        "Model, weights, context and GPU follow the Calculator; changing them here does not change it. "
        f"transformers also takes its batch ({calc['batch']}), KV cache ({calc['kv_dtype']}) and "
        f"attention ({calc['attn']})."
    )
    with st.expander("Engine settings (vLLM, llama.cpp)", expanded=False):
        a, b = st.columns(2)
        util = a.slider("vLLM gpu_memory_utilization", 0.5, 0.98, 0.9, 0.01, key=K_VLLM_UTIL)
        seqs = a.number_input("vLLM max_num_seqs", 1, 4096, 256, key=K_VLLM_SEQS)
        version = a.radio("vLLM accounting", vl.VLLM_VERSIONS, index=1, key=K_VLLM_VERSION, horizontal=True)
        tp = a.selectbox("vLLM --tensor-parallel-size", (1, 2, 4, 8), key=K_VLLM_TP)
        lc_quant = b.selectbox(
            "llama.cpp GGUF type",
            (SAME_BITS,) + lc.GGUF_QUANTS,
            key=K_LC_QUANT,
            format_func=lambda q: "same bit width as the weights" if q == SAME_BITS else q.upper(),
            help="Q4_K_M, Ollama's usual 4-bit, mixes in 6-bit tensors (about 4.9 bits a "
            "weight against Q4_0's 4.5): a different width from the other engines.",
        )
        parallel = b.number_input("llama.cpp --parallel", 1, 64, 1, key=K_LC_PARALLEL)
        fa = b.checkbox("llama.cpp --flash-attn", value=False, key=K_LC_FA)
        kv = b.selectbox("llama.cpp KV type", ("f16", "q8_0", "q4_0"), key=K_LC_KV)
        ngl = b.number_input("llama.cpp --n-gpu-layers (-1 = all)", -1, 200, -1, key=K_LC_NGL)
    if gpu_key == state.CUSTOM_GPU:
        gpu = custom_gpu(custom_mem) if custom_mem else compute.gpu_by_key(state.DEFAULTS[state.GPU])
    else:
        gpu = compute.gpu_by_key(gpu_key)
    return dict(
        model=model,
        quant=quant,
        context=int(context),
        gpu=gpu,
        batch=int(calc["batch"]),
        kv_dtype=calc["kv_dtype"],
        attn=calc["attn"],
        prefill_chunk=calc.get("prefill_chunk"),
        util=float(util),
        seqs=int(seqs),
        version=version,
        tp=int(tp),
        lc_quant=same_bits(quant)["gguf"] if lc_quant == SAME_BITS else lc_quant,
        parallel=int(parallel),
        fa=bool(fa),
        kv=kv,
        ngl=int(ngl),
    )


def weights_formats(inp: dict[str, Any]) -> dict[str, str]:
    """How each engine stores the weights: the first row of the table."""
    sb = same_bits(inp["quant"])
    vq = sb["vllm_quantization"]
    vllm = f"--quantization {vq}" + (" (NF4)" if vq == "bitsandbytes" else "") if vq else f"--dtype {sb['vllm_dtype']}"
    return {
        "transformers": quant_choice_label(inp["quant"]),
        "vLLM": f"{sb['bits']}-bit · {vllm}",
        "llama.cpp": f"GGUF {inp['lc_quant'].upper()}",
    }


def compute_all(inp: dict[str, Any]) -> dict[str, dict | str]:
    """Each engine's JSON-like result, or the message of why it has none."""
    spec = compute.spec_of(inp["model"])
    gpu, total = inp["gpu"], inp["gpu"].memory_bytes
    out: dict[str, MemoryReport | str] = {}
    try:
        custom = gpu.key == "custom"
        out["transformers"] = compute.cached_estimate(
            inp["model"],
            inp["quant"],
            inp["context"],
            inp["batch"],
            inp["kv_dtype"],
            inp["attn"],
            None if custom else gpu.key,
            total if custom else None,
            inp["prefill_chunk"],
        )
    except estimator.EstimatorError as e:
        out["transformers"] = str(e)
    sb = same_bits(inp["quant"])
    vkw = dict(
        gpu_memory_utilization=inp["util"],
        max_model_len=inp["context"],
        max_num_seqs=inp["seqs"],
        version=inp["version"],
        dtype=sb["vllm_dtype"],
        quantization=sb["vllm_quantization"],
    )
    context_bytes = cuda_context_bytes(gpu.cls)
    on_gpu = dict(gpu_name=gpu.name, gpu_arch=gpu.arch, cuda_context_bytes=context_bytes)
    try:
        e = estimate_vllm(spec, total, tensor_parallel_size=inp["tp"], **on_gpu, **vkw)
        if e.starts:
            r = vl.report(
                e,
                {
                    "engine": "vllm",
                    "model": spec.name,
                    "context": inp["context"],
                    "quant": sb["vllm_quantization"] or sb["vllm_dtype"],
                    "kv_dtype": "auto",
                    "gpu_memory_utilization": inp["util"],
                    "vllm_version": inp["version"],
                },
            )
            if inp["tp"] == 1:
                u = vl.smallest_utilization(
                    spec, total, **{k: v for k, v in vkw.items() if k != "gpu_memory_utilization"}, **on_gpu
                )
                if u is not None:
                    least = estimate_vllm(spec, total, **{**vkw, "gpu_memory_utilization": u}, **on_gpu)
                    r = dataclasses.replace(
                        r,
                        details={
                            **r.details,
                            "smallest_utilization": u,
                            "smallest_device_used_bytes": least.device_used_bytes,
                        },
                    )
            out["vLLM"] = r
        else:
            s = vl.smallest_gpu_set(spec, inp["context"], **{k: v for k, v in vkw.items() if k != "max_model_len"})
            hint = (
                ""
                if s is None
                else (
                    f" The smallest catalog GPU set that starts it: {s['num_gpus']} × "
                    f"{short_gpu_name(s['gpu'].name)} (--tensor-parallel-size "
                    f"{s['tensor_parallel_size']}, --pipeline-parallel-size "
                    f"{s['pipeline_parallel_size']})."
                )
            )
            out["vLLM"] = f"vLLM would not start: {e.refusal}{hint}"
    except estimator.EstimatorError as e:
        out["vLLM"] = f"vLLM would not start: {e}"
    try:
        e = estimate_llamacpp(
            spec,
            inp["lc_quant"],
            inp["context"],
            parallel=inp["parallel"],
            flash_attn=inp["fa"],
            kv_dtype=inp["kv"],
            n_gpu_layers=inp["ngl"],
        )
        out["llama.cpp"] = lc.report(
            e,
            {
                "engine": "llama.cpp",
                "model": spec.name,
                "context": inp["context"],
                "quant": inp["lc_quant"],
                "kv_dtype": inp["kv"],
                "parallel": inp["parallel"],
                "flash_attn": inp["fa"],
                "n_gpu_layers": inp["ngl"],
            },
            total,
            cuda_context_bytes=context_bytes,
        )
    except estimator.EstimatorError as e:
        out["llama.cpp"] = f"llama.cpp cannot: {e}"
    return out


def side_by_side_rows(
    results: dict[str, MemoryReport | str], formats: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """Rows of the comparison table as text: the weights format, one row per memory part and host RAM,
    one column per engine. An engine without a result says why in short ("does not start")."""
    rows: list[dict[str, str]] = []
    if formats:
        rows.append({"Part": "Weights as loaded", **{e: formats.get(e, "") for e in results}})
    for key, label in ROWS:
        row = {"Part": label}
        for eng, r in results.items():
            v = r.value(key) if isinstance(r, MemoryReport) else None
            row[eng] = format_gib(v) if v is not None else "does not start"
        rows.append(row)
    host = {"Part": "Host RAM (not GPU)"}
    for eng, r in results.items():
        host[eng] = (
            "—"
            if not isinstance(r, MemoryReport)
            else format_gib(r.details["host_bytes"])
            if "host_bytes" in r.details
            else "not modelled"
        )
    rows.append(host)
    return rows


def differences(inp: dict[str, Any], results: dict[str, MemoryReport | str]) -> list[str]:
    """One sentence per engine: what its number is, and why it differs from the others."""
    ctx = tokens_label(inp["context"])
    out = []
    tf = results["transformers"]
    if isinstance(tf, MemoryReport):
        out.append(
            f"**transformers** grows its KV cache to exactly {ctx} tokens × batch {inp['batch']} and peaks "
            f"in the prefill forward ({format_gib(tf.activations_bytes or 0)} of activations): "
            f"{format_gib(tf.device_used_bytes or 0)}."
        )
    v = results["vLLM"]
    if isinstance(v, MemoryReport):
        d, least = v.details, ""
        if "smallest_utilization" in d:
            least = (
                f"; gpu_memory_utilization {d['smallest_utilization']:.2f} "
                f"({format_gib(d['smallest_device_used_bytes'])}) would hold one {ctx}-token request"
            )
        out.append(
            f"**vLLM** takes {inp['util']:.0%} of the GPU at startup whatever the context and gives what the "
            f"model leaves to a KV pool of {d['num_gpu_blocks']:,} blocks, {d['max_concurrency']:.1f} requests "
            f"of {ctx} tokens at once{least}."
        )
    else:
        out.append(f"**vLLM**: {md(v)}")
    lcr = results["llama.cpp"]
    if isinstance(lcr, MemoryReport):
        out.append(
            f"**llama.cpp** keeps the token embedding in host RAM, allocates all {lcr.details['kv_cells']:,} KV "
            f"cells at start and sizes its compute buffer for one 512-token batch "
            f"({format_gib(lcr.details['compute_buffer_bytes'])}), not the whole prompt: "
            f"{format_gib(lcr.device_used_bytes or 0)}."
        )
    else:
        out.append(f"**llama.cpp**: {md(lcr)}")
    return out


def side_by_side_figure(results: dict[str, MemoryReport | str]):
    """Stacked bars of the four parts per engine, in GiB."""
    import plotly.graph_objects as go

    reports = {e: r for e, r in results.items() if isinstance(r, MemoryReport)}
    fig = go.Figure()
    for key, label in ROWS[:-1]:
        fig.add_bar(name=label, x=list(reports), y=[gib(r.value(key)) for r in reports.values()])
    fig.update_layout(
        barmode="stack",
        yaxis_title="GPU memory (GiB)",
        height=380,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def launch_commands(results: dict[str, MemoryReport | str]) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(label, shell command or None, notes) per serving engine: ``vllm serve`` and ``llama-server`` /
    ``ollama serve`` with the settings of the page (estimator.launch); None where the engine does not start."""
    out: list[tuple[str, str | None, tuple[str, ...]]] = []
    v = results.get("vLLM")
    if isinstance(v, MemoryReport):
        launch = vllm_launch(v)
        out.append(("vLLM", launch.command, launch.notes))
        out += [("vLLM, the KV pool in bytes", a.command, a.notes) for a in launch.alternatives]
    else:
        out.append(("vLLM", None, ()))
    r = results.get("llama.cpp")
    if isinstance(r, MemoryReport):
        launch = llamacpp_launch(r)
        out.append(("llama.cpp", launch.command, launch.notes))
        ollama = ollama_launch(r)
        out.append(("Ollama", ollama.command, ollama.notes))
    else:
        out += [("llama.cpp", None, ()), ("Ollama", None, ())]
    return out


def executorch_rows(model: str, context: int) -> list[dict[str, Any]]:
    spec = compute.spec_of(model)
    rows = []
    for v in et.VARIANTS:
        e = estimate_executorch(spec, v, context)
        q = estimate_executorch(spec, v, context, kv_cache="int8")
        rows.append(
            {
                "Variant": v,
                "Program file": format_gib(e.program_bytes),
                "Runtime": format_gib(e.runtime_bytes),
                "Runtime, --quantize_kv_cache": format_gib(q.runtime_bytes),
            }
        )
    return rows


def speed_curves(inp: dict[str, Any], results: dict[str, MemoryReport | str]) -> tuple[dict[str, list], list[str]]:
    """Each engine's decode tokens/s at 1, 2, 4, ... concurrent sequences up to its KV limit
    (``estimator.speed.concurrency_curve``): transformers up to its largest batch, vLLM up to the
    concurrency its KV pool allows in this page's own estimate (and ``max_num_seqs``), llama.cpp up to
    ``--parallel`` slots sharing ``n_ctx``. Returns the curves and a note per engine left out."""
    from estimator.speed import concurrency_curve

    gpu = inp["gpu"]
    if gpu.key == "custom" or not gpu.bandwidth_bytes_per_s:
        return {}, ["Speed needs a catalog GPU with a known memory bandwidth."]
    spec = compute.spec_of(inp["model"])
    curves: dict[str, list] = {}
    notes: list[str] = []
    common = dict(context=inp["context"], new_tokens=state.NEW_TOKENS)
    try:
        curves["transformers"] = concurrency_curve(
            spec, inp["quant"], gpu, engine="transformers", kv_dtype=inp["kv_dtype"], **common
        )
    except estimator.EstimatorError as e:
        notes.append(f"transformers: {e}")
    sb = same_bits(inp["quant"])
    vq = sb["vllm_quantization"] or {"bfloat16": "bf16", "float16": "fp16"}.get(sb["vllm_dtype"], "bf16")
    r = results.get("vLLM")
    if not isinstance(r, MemoryReport):
        notes.append("vLLM: does not start with these settings.")
    elif inp["tp"] != 1:
        notes.append("vLLM: speed is modelled on one GPU (tensor parallelism is not).")
    elif vq not in ("bf16", "fp16", "fp8"):
        notes.append(f"vLLM: no speed model for --quantization {vq}.")
    else:
        cap = min(int(r.details.get("max_concurrency") or 0), inp["seqs"])
        curves["vLLM"] = concurrency_curve(spec, vq, gpu, engine="vllm", cap=cap, **common)
    if not isinstance(results.get("llama.cpp"), MemoryReport):
        notes.append("llama.cpp: cannot run these settings.")
    elif inp["ngl"] != -1:
        notes.append("llama.cpp: partial offload (--n-gpu-layers) is not in the speed model yet.")
    else:
        per_slot = max(inp["context"] // inp["parallel"], state.NEW_TOKENS + 1)
        curves["llama.cpp"] = concurrency_curve(
            spec,
            inp["lc_quant"],
            gpu,
            engine="llama.cpp",
            kv_dtype=inp["kv"],
            cap=inp["parallel"],
            context=per_slot,
            new_tokens=state.NEW_TOKENS,
        )
    return curves, notes


def render() -> None:
    st.title("Engines side by side")
    inp = _inputs()
    try:
        results = compute_all(inp)
    except estimator.EstimatorError as e:
        st.error(f"Cannot compute these settings: {md(e)}")
        st.stop()
    name = short_gpu_name(inp["gpu"].name) if inp["gpu"].key != "custom" else "the custom GPU"
    cols = st.columns(3)
    for col, eng in zip(cols, ENGINES):
        r = results[eng]
        if isinstance(r, MemoryReport) and r.device_used_bytes is not None:
            fits = r.device_used_bytes <= inp["gpu"].memory_bytes and r.details.get("fits", r.fits) is not False
            col.metric(
                f"{eng}: GPU memory used",
                format_gib(r.device_used_bytes),
                border=True,
                delta=f"{'fits' if fits else 'does not fit'} {name}",
                delta_arrow="off",
                delta_color="normal" if fits else "inverse",
            )
        else:
            col.metric(
                f"{eng}: GPU memory used",
                "does not start",
                border=True,
                delta=f"on {name}",
                delta_color="off",
                delta_arrow="off",
            )
    st.subheader("Why the numbers differ")
    st.markdown("\n".join(f"- {s}" for s in differences(inp, results)))
    st.dataframe(side_by_side_rows(results, weights_formats(inp)), hide_index=True, key="eng_table", width="stretch")
    st.caption("All sizes in GiB (2^30 bytes). GPU memory used is what nvidia-smi shows for the process.")
    if any(isinstance(r, MemoryReport) for r in results.values()):
        st.plotly_chart(side_by_side_figure(results), key="eng_chart", config={"displayModeBar": False})
    st.subheader("How fast")
    try:
        curves, speed_notes = speed_curves(inp, results)
    except estimator.EstimatorError as e:
        curves, speed_notes = {}, [str(e)]
    if curves:
        cols = st.columns(3)
        for col, eng in zip(cols, ENGINES):
            pts = curves.get(eng)
            if not pts:
                continue
            one, last = pts[0]["per_sequence"], pts[-1]
            col.metric(
                f"{eng}: one sequence",
                f"{one['point']:,.0f} tok/s",
                border=True,
                delta=f"{last['aggregate']['point']:,.0f} tok/s in all at {last['concurrency']} "
                + ("sequence" if last["concurrency"] == 1 else "sequences"),
                delta_color="off",
                delta_arrow="off",
                help=f"Range {one['low']:,.0f}-{one['high']:,.0f} tok/s (estimator.speed: bytes each decode step "
                "reads over the GPU's bandwidth, at the fractions public measurements achieved).",
            )
        st.plotly_chart(figures.concurrency_figure(curves), key="eng_speed_chart", config={"displayModeBar": False})
        st.caption(
            "Each line stops at the engine's limit: transformers' largest batch that fits, vLLM's KV-pool "
            "concurrency (and max_num_seqs), llama.cpp's --parallel slots sharing the context. Bands are "
            "the low-high range; dotted lines are the speed each sequence sees. The public rows are llama.cpp's "
            "but one: transformers and vLLM use llama.cpp's bandwidth ceiling and per-step time, so their lines "
            "coincide where their bytes do. `python -m estimator speed --validation` prints how far the model "
            "is from the public measurements."
        )
    for n in speed_notes:
        st.caption(md(n))
    st.subheader("Launch with these settings")
    for label, command, notes in launch_commands(results):
        st.markdown(f"**{label}**")
        if command is None:
            st.caption("Does not start with these settings: no command.")
            continue
        st.code(command, language="bash")
        if notes:
            st.caption(" ".join(md(n) for n in notes))
    with st.expander("On device (ExecuTorch, Llama 3.2 release variants)"):
        st.dataframe(
            executorch_rows(inp["model"], inp["context"]), hide_index=True, key="eng_et_table", width="stretch"
        )
        spec = compute.spec_of(inp["model"])
        t = et.crossover_context(spec, "spinquant")
        when = f"from {t:,} tokens on" if t and t <= compute.window(inp["model"]) else "only beyond this model's window"
        st.caption(
            "The 4-bit releases (SpinQuant, QAT+LoRA) were exported with `-d fp32`: their KV cache and "
            "activations take 4 bytes an element against bf16's 2, so they need more runtime memory than "
            f"bf16 {when}. `--quantize_kv_cache` (int8 K/V with a per-token scale) is ExecuTorch's fix: "
            "the last column."
        )


render()

"""Tables (lists of row dicts) and the filled-in formulas, as pure functions of estimator output.

Byte columns are GiB floats (the page formats them with ``"%.2f GiB"``); contexts are ints.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import estimator
from estimator.estimate import Estimate
from estimator.kv import ELEMENT_BITS
from estimator.report import MemoryReport, device_used_range, fit_verdict
from estimator.units import GiB, format_bytes, format_gib

from .escape import md
from .figures import tokens_label


def short_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090 24GB' -> 'RTX 4090' (the catalog's marketing size is in GB, not GiB)."""
    name = name.replace("NVIDIA GeForce ", "").replace("NVIDIA ", "").replace("AMD Instinct ", "")
    name = name.replace(" Laptop GPU", " Laptop")
    name = re.sub(r"\s*\([^)]*\bGB\b[^)]*\)", "", name)  # "(180 GB usable)", "(64 GB)"
    return re.sub(r"\s+\d+(\.\d+)?\s*GB\b", "", name).strip()


def gpu_display_name(name: str, memory_bytes: int) -> str:
    """The one name a catalog card has on every page: short name, the size it is sold as (GB) and
    the memory CUDA gives it (GiB, up to 2 decimals): 'RTX 4090 · 24 GB (23.64 GiB)'."""
    sold = re.search(r"(\d+(?:\.\d+)?)\s*GB\b", name)
    usable = f"{memory_bytes / GiB:.2f}".rstrip("0").rstrip(".")
    short = short_gpu_name(name)
    return f"{short} · {sold.group(1)} GB ({usable} GiB)" if sold else f"{short} · {usable} GiB"


def quant_table(rows: Sequence[Mapping[str, Any]], spec: Any) -> list[dict[str, Any]]:
    """One row per quantization at the chosen context (rows from ``compute.quant_rows``)."""
    out = []
    params = spec.num_params
    for r in rows:
        q = estimator.QUANTS[r["quant"]]
        wb = estimator.weight_bytes(spec, r["quant"])
        out.append(
            {
                "Quantization": q.label,
                "Bits/weight": q.bits,
                "Stored bits/param": round(8 * (wb.parameters_bytes + wb.quant_state_bytes) / params, 2),
                "Weights": r["weights_bytes"] / GiB,
                "KV cache": r["kv_cache_bytes"] / GiB,
                "Total (device used)": r["device_used_bytes"] / GiB,
                "Fits": r.get("fits"),
                "Headroom": None if r.get("headroom_bytes") is None else r["headroom_bytes"] / GiB,
                "Largest context": r.get("max_context"),
            }
        )
    return out


def gpu_table(rows: Sequence[Mapping[str, Any]], quants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per catalog GPU: fits at this setting, and the largest context per quantization."""
    out = []
    for r in rows:
        row: dict[str, Any] = {
            "GPU": gpu_display_name(r["name"], r["memory_bytes"]),
            "Memory": r["memory_bytes"] / GiB,
            "Fits": r["fits"],
            "Headroom": None if r["headroom_bytes"] is None else r["headroom_bytes"] / GiB,
        }
        for q in quants:
            row[q] = r["max_context"].get(q, 0)
        out.append(row)
    return out


def sweep_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sweep as CSV: quant, context, then every byte field, in bytes."""
    if not rows:
        return ""
    fields = ["quant", "context"] + [k for k in rows[0] if k.endswith("_bytes")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, name + " / ")
        else:
            out.append((name, v))
    return out


def nice_name(key: str) -> str:
    return key.removesuffix("_bytes").replace("_", " ")


def formula_rows(spec: Any, est: Estimate) -> list[dict[str, str]]:
    """Each term of the estimate with its formula and this model's numbers filled in."""
    s = est.settings
    quant, batch, ctx, new = s.quant, s.batch, s.context, s.new_tokens
    q = estimator.QUANTS[quant]
    wb = estimator.weight_bytes(spec, quant)
    rows = [
        {
            "Term": "Weights",
            "Formula": (
                f"Σ stored tensors of the loaded model in {q.label}: parameters "
                f"{format_bytes(wb.parameters_bytes)} + quantization state {format_bytes(wb.quant_state_bytes)}"
                f" + fp32 rotary buffers {wb.buffers_bytes:,} B"
                + (f" ({spec.num_params:,} params × {q.bits // 8} B)" if q.family == "float" else "")
            ),
            "Value": format_gib(est.weights_bytes),
        }
    ]
    kv, compute = s.kv_dtype, s.compute_bytes
    per_tok = estimator.kv_bytes_per_token(spec, kv, compute)
    resolved = s.kv_resolved
    elem = f"{ELEMENT_BITS[resolved] / 8:g} B"
    formula = (
        f"2 (K and V) × {spec.num_hidden_layers} layers × {spec.num_key_value_heads} KV heads × "
        f"{spec.head_dim} head_dim × {elem} ({resolved})"
    )
    if resolved in ("int8", "int4"):
        formula += " + a scale and zero point per 64 values, plus the newest 128 tokens unquantized"
    formula += (
        f" = {per_tok:,} B/token per sequence; × {ctx:,} tokens of context (the window the cache "
        f"holds: {ctx - new:,} prompt + {new} new tokens) × batch {batch}"
    )
    rows.append({"Term": "KV cache", "Formula": formula, "Value": format_gib(est.kv_cache_bytes)})
    bd = est.breakdown
    for section, term in (("activations", "Activations"), ("overhead", "Overhead")):
        parts = bd.get(section)
        detail = (
            "; ".join(f"{nice_name(k)} {format_bytes(v) if isinstance(v, int) else v}" for k, v in _flatten(parts))
            if isinstance(parts, Mapping)
            else ""
        )
        where = f"; the peak is in the {est.peak_phase} phase, in the last layer's {est.peak_at}" if est.peak_at else ""
        prompt = max(1, ctx - new)
        per_tok = est.activations_bytes / (prompt * batch)
        default = (
            f"transient tensors of the forward pass at its peak (hidden states, MLP intermediates, "
            f"attention workspace, last-token logits), replayed tensor by tensor: ≈ {per_tok:,.0f} B "
            f"per prompt token × {prompt:,} prompt tokens × batch {batch}{where}"
            if section == "activations"
            else "CUDA context, cuBLAS workspace and caching-allocator slack"
        )
        rows.append({"Term": term, "Formula": detail or default, "Value": format_gib(getattr(est, f"{section}_bytes"))})
    rows.append(
        {
            "Term": "Device used",
            "Formula": (
                "weights + KV cache + activations + overhead = "
                + " + ".join(
                    f"{v / GiB:.2f}"
                    for v in (est.weights_bytes, est.kv_cache_bytes, est.activations_bytes, est.overhead_bytes)
                )
                + " GiB (what nvidia-smi shows for the process)"
            ),
            "Value": format_gib(est.device_used_bytes),
        }
    )
    return rows


def breakdown_details(est: Estimate) -> list[dict[str, str]]:
    """Every entry of ``est.breakdown`` flattened to (part, bytes) rows."""
    bd = est.breakdown
    return [
        {
            "Part": nice_name(k),
            "Bytes": f"{v:,}" if isinstance(v, int) else str(v),
            "Size": format_bytes(v) if isinstance(v, int) else "",
        }
        for k, v in _flatten(bd)
    ]


def headline_caption(model_label: str, est: Estimate) -> str:
    """The settings line under the title, as Markdown: the model label (a file name or config value
    for an uploaded model) is escaped, so it shows as plain text."""
    s = est.settings
    return (
        f"{md(model_label)} · {estimator.QUANTS[s.quant].label} weights · KV {s.kv_dtype} · "
        f"{tokens_label(s.context)} context (window) · batch {s.batch} · {s.attn.upper()}"
    )


WHOLE_WINDOW = "the whole window fits"

# One rule: the estimate's range (``estimator.report.fit_verdict``): "fits" when its high end fits
# (the most fragmentation the trace's allocator replay measured, the largest CUDA context cited for
# the GPU class), "does not fit" when even its low end does not, else "may fit".
VERDICT_ANSWERS = {"fits": "Yes", "may fit": "Tight", "does not fit": "No"}


def range_text(est: Any) -> str:
    """ "low-high GiB" of an estimate's device used (its point when it has no range)."""
    r = device_used_range(est)
    if r is None:
        return "-"
    return f"{r[0] / GiB:.2f}-{r[1] / GiB:.2f} GiB"


def vram_delta(est: MemoryReport) -> str:
    """The "VRAM needed" card's second line: device used in GB (GPUs are sold in GB) and the range,
    short enough not to be cut at a third of a 1440 px page."""
    return f"= {(est.device_used_bytes or 0) / 1e9:.2f} GB · range {range_text(est)}"


# The "Fits?" card's colour per answer (Streamlit metric delta colours)
VERDICT_COLORS = {"Yes": "normal", "Tight": "off", "No": "inverse"}


def verdict(need: MemoryReport, capacity_bytes: int) -> tuple[str, str]:
    """("Yes" | "Tight" | "No", why) for an estimate against a GPU's memory: ``fit_verdict``'s
    three cases on the estimate's range."""
    low, high = device_used_range(need) or (0, 0)
    answer = VERDICT_ANSWERS[fit_verdict(need, capacity_bytes)]
    if answer == "Yes":
        return "Yes", f"{format_gib(capacity_bytes - high)} headroom at the range's high end"
    if answer == "No":
        return "No", f"{format_gib(low - capacity_bytes)} short even at the range's low end"
    point = need.device_used_bytes or 0
    at_point = (
        f"{format_gib(capacity_bytes - point)} headroom at the estimate"
        if point <= capacity_bytes
        else f"{format_gib(point - capacity_bytes)} short at the estimate"
    )
    return "Tight", (
        f"{at_point}; the range ({range_text(need)}: CUDA context, allocator fragmentation) straddles "
        f"{format_gib(capacity_bytes)}"
    )


def recommended_text(rows: Sequence[Mapping[str, Any]], total: int) -> str:
    """One line naming the smallest catalog GPUs that fit (``compute.fitting_gpus`` rows); rows with
    a ``decode_tok_s`` (``with_speed``) are ranked by it, fastest first, and show it."""
    if not rows:
        return (
            f"None of the {total} GPUs in the catalog fits these settings: try fewer bits per weight, "
            "a quantized KV cache or a shorter context."
        )
    fast = all(r.get("decode_tok_s") is not None for r in rows)
    ranked = sorted(rows, key=lambda r: -r["decode_tok_s"]) if fast else list(rows)

    def cell(r: Mapping[str, Any]) -> str:
        speed = f", ~{r['decode_tok_s']:,.0f} tok/s" if fast else ""
        return f"{md(gpu_display_name(r['name'], r['memory_bytes']))}, {format_gib(r['headroom_bytes'])} free{speed}"

    how = ", fastest decode first" if fast else ""
    return f"**Recommended GPUs** (the smallest in the catalog that fit these settings{how}): " + "; ".join(
        cell(r) for r in ranked
    )


def with_speed(rows: Sequence[Mapping[str, Any]], est: Estimate) -> list[dict[str, Any]]:
    """``rows`` (``compute.fitting_gpus``) with each GPU's decode tok/s per sequence (the point of
    ``estimator.speed``) at the estimate's settings; None where the catalog has no bandwidth."""
    from estimator.speed import speed

    s = est.settings
    out = []
    for r in rows:
        g = estimator.get_gpu(r["gpu"])
        tok_s = None
        if g.bandwidth_bytes_per_s:
            sp = speed(
                s.model, s.quant, g, context=s.context, new_tokens=s.new_tokens, batch=s.batch, kv_dtype=s.kv_dtype
            )
            tok_s = sp.decode_tok_s.point
        out.append({**r, "decode_tok_s": tok_s})
    return out


def speed_metrics(sp: Any) -> list[tuple[str, str, str, str]]:
    """(label, value, delta, help) of the calculator's speed cards from a ``Speed``."""
    d, agg, p, t = sp.decode_tok_s, sp.aggregate_tok_s, sp.prefill_tok_s, sp.ttft_s
    basis = sp.fractions.basis + ("" if sp.fractions.validated else " (no public transformers rows yet)")
    fx = sp.fractions.fixed_s
    how = (
        f"A roofline: each decode step reads {sp.step_bytes / GiB:.2f} GiB (weights and quantization "
        "state, plus the KV cache at the mean length) at the best fraction of the GPU's peak bandwidth "
        f"public measurements reached ({sp.fractions.ceiling:.2f}), plus the per-step time they show beyond "
        f"their bytes ({1000 * fx.low:.1f}-{1000 * fx.high:.1f} ms, launches and the host loop); {basis}; "
        f"bound by {sp.bound}. "
    )
    cards = [
        (
            "Decode speed",
            f"{d.point:,.0f} tok/s",
            f"range {d.low:,.0f}-{d.high:,.0f}"
            + (f" · {agg.point:,.0f} in all ({sp.batch} seqs)" if sp.batch > 1 else ""),
            how + "Per sequence; the range is the least and most fixed time of the rows.",
        )
    ]
    if t is not None and p is not None:
        cards.append(
            (
                "Time to first token",
                f"{t.point:.2f} s" if t.point >= 0.1 else f"{t.point * 1000:.0f} ms",
                f"range {t.low:.2f}-{t.high:.2f} s · {sp.prompt_tokens:,}-token prompt",
                "The prefill forward: 2 FLOPs per parameter per prompt token plus causal attention, at the "
                "GPU's dense peak for the compute dtype times the achieved fraction of the public prefill rows.",
            )
        )
        cards.append(
            (
                "Prefill speed",
                f"{p.point:,.0f} tok/s",
                f"range {p.low:,.0f}-{p.high:,.0f}",
                "Prompt tokens per second of the prefill forward (all sequences of the batch).",
            )
        )
    return cards


def largest_context_text(max_ctx: int, window: int) -> tuple[str, str | None]:
    """(value, note) of the largest context that fits: the solver stops at the model's window, so
    an answer at the window means the whole window fits; 0 means not even a one-token prompt."""
    if max_ctx >= window:
        return f"{window:,} tokens", WHOLE_WINDOW
    if max_ctx <= 0:
        return "none", None
    return f"{max_ctx:,} tokens", f"of a {window:,}-token window"


def export_names(
    model: str, quant: str, context: int, batch: int, kv_dtype: str, attn: str, prefill_chunk: int | None, gpu: str
) -> tuple[str, str]:
    """File names of the JSON estimate and the CSV sweep, saying what each holds: the estimate is
    one setting; the sweep is every quantization over every context at the other settings."""
    rest = f"batch{batch}-kv-{kv_dtype}-{attn}" + (f"-chunk{prefill_chunk}" if prefill_chunk else "") + f"-{gpu}"
    return (f"vram-estimate-{model}-{quant}-ctx{context}-{rest}.json", f"vram-vs-context-all-quants-{model}-{rest}.csv")


def naive_rule_rows(est: Estimate) -> list[dict[str, str]]:
    """The estimate against the simple rule people use (bits per weight x parameters + KV cache),
    term by term; the rows add up to the estimate's device-used total."""
    bits = estimator.QUANTS[est.settings.quant].bits
    n = est.num_params
    naive = n * bits // 8
    w = est.breakdown["weights"]
    rows = [
        (f"{bits} bits x {n / 1e9:.2f} B parameters (the simple rule's weights)", naive),
        ("KV cache for the whole window (in the simple rule too)", est.kv_cache_bytes),
        ("tensors kept at higher precision (embedding, norms) and packing", w["parameters"] - naive),
        ("quantization state (scales, absmax) and buffers", w["quant_state"] + w["buffers"]),
        ("activations at the peak (the prefill's largest moment)", est.activations_bytes),
        ("CUDA context, cuBLAS workspace, allocator rounding and free segment space", est.overhead_bytes),
    ]
    out = [{"Term": t, "GiB": f"{b / GiB:+.2f}" if i > 1 else f"{b / GiB:.2f}"} for i, (t, b) in enumerate(rows)]
    total = sum(b for _, b in rows)
    out.append(
        {
            "Term": f"= device used (simple rule: {(naive + est.kv_cache_bytes) / GiB:.2f} GiB)",
            "GiB": f"{total / GiB:.2f}",
        }
    )
    return out


PHASE_COLUMNS = {
    "weights_bytes": "Weights",
    "kv_cache_bytes": "KV cache",
    "activations_bytes": "Activations",
    "peak_allocated_bytes": "Peak allocated",
    "peak_reserved_bytes": "Peak reserved",
    "device_used_bytes": "Device used",
}
PHASE_LABELS = {"load": "Load (weights only)", "prefill": "Prefill (whole prompt)", "decode": "Decode (one token)"}


def phases_table(est: MemoryReport) -> list[dict[str, Any]]:
    """Each phase of the run (load, prefill, decode) with its counters in GiB (None when absent)."""
    out = []
    for phase, vals in est.phases.items():
        row: dict[str, Any] = {"Phase": PHASE_LABELS.get(phase, phase)}
        for k in PHASE_COLUMNS:
            v = vals.get(k)
            row[PHASE_COLUMNS[k]] = None if v is None else v / GiB
        out.append(row)
    return out

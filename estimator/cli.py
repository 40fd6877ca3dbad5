"""``python -m estimator``: estimate, fit, sweep, check, calibration, speed, gpus, quants.

Output is a table in GiB, or one JSON object with int byte fields under ``--json``.
Bad input exits 2 with one line on stderr naming the field and the value.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from .engines import cli as engine_cli
from .errors import EstimatorError, InvalidSpecError
from .estimate import ATTN_IMPLS, BNB_COMPUTE_DTYPES, CACHE_KINDS, LOGITS_MODES, estimate_settings, make_settings
from .gpus import Gpu, get_gpu, gpu_catalog
from .kv import KV_DTYPES
from .launch import format_launch, transformers_launch
from .model import DEFAULT_PRESET, PRESETS, ModelSpec, load_model
from .quant import QUANTS, effective_bits_per_param, weight_bytes
from .solve import context_grid, max_context, sweep
from .training import cli as training_cli
from .units import GiB, format_context, one_line, parse_context, parse_int, parse_size


class CliError(Exception):
    """Bad command-line input: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        raise CliError(message)


def _context(text: str) -> int:
    return parse_context(text, "--context")


def _common(p: argparse.ArgumentParser, with_context: bool = True, engines: bool = False) -> None:
    """The flags every estimator command shares; with ``engines``, --quant and --kv-dtype state each
    engine's vocabulary (``engine_cli.add_engine_arguments`` adds the engines' own flags, never these)."""
    p.add_argument(
        "--model",
        default=DEFAULT_PRESET,
        help=f"preset ({', '.join(PRESETS)}) or path to a config.json (default {DEFAULT_PRESET})",
    )
    quant = f"weight scheme: {', '.join(QUANTS)}"
    kv = f"KV cache dtype: {', '.join(KV_DTYPES)}"
    if engines:
        quant = (
            f"weight format; transformers: {', '.join(QUANTS)}; --engine vllm: "
            f"{', '.join(engine_cli.VLLM_QUANTS)} (--dtype, or --quantization bitsandbytes / fp8); "
            f"--engine llama.cpp: the GGUF types {', '.join(engine_cli.LLAMACPP_QUANTS)}"
        )
        kv = (
            f"KV cache dtype; transformers: {', '.join(KV_DTYPES)}; --engine vllm: "
            f"{', '.join(engine_cli.VLLM_KV_DTYPES)}; --engine llama.cpp: "
            f"{', '.join(engine_cli.LLAMACPP_KV_DTYPES)} (q8_0 and q4_0 with --flash-attn)"
        )
    p.add_argument("--quant", default="bf16", help=f"{quant} (default bf16)")
    if with_context:
        p.add_argument(
            "--context",
            default="8192",
            help="the window: tokens the KV cache holds, prompt + new tokens; 8192, 8k, 128K (default 8192)",
        )
    p.add_argument("--batch", default="1", help="sequences per batch (default 1)")
    p.add_argument("--kv-dtype", default="auto", help=f"{kv} (default auto)")
    p.add_argument("--attn", default="sdpa", help=f"attention implementation: {', '.join(ATTN_IMPLS)}")
    p.add_argument(
        "--new-tokens",
        default="32",
        help="decode steps after the prompt, part of the context (default 32; the prompt is context - new tokens)",
    )
    p.add_argument("--cache", default="dynamic", help=f"KV cache kind: {', '.join(CACHE_KINDS)}")
    p.add_argument("--padding", action="store_true", help="a padding attention mask is passed")
    p.add_argument("--logits", default="last", help=f"logits kept: {', '.join(LOGITS_MODES)} (default last)")
    p.add_argument("--prefill-chunk", default=None, help="prefill the prompt in chunks of this many tokens")
    p.add_argument(
        "--bnb-compute-dtype",
        default="bf16",
        help=f"bitsandbytes 4-bit compute dtype: {', '.join(BNB_COMPUTE_DTYPES)} (default bf16)",
    )
    p.add_argument("--gpu", default=None, help="catalog GPU key (see 'gpus'); adds fits and headroom_bytes")
    p.add_argument("--gpu-memory", default=None, help="custom GPU memory: bytes, or a number with GiB, GB, MiB, MB")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m estimator", description="GPU memory for LLM inference, exact where it can be.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("estimate", help="memory for one setting")
    _common(p, engines=True)
    engine_cli.add_engine_arguments(p)
    p = sub.add_parser("fit", help="largest context that fits a GPU")
    _common(p, with_context=False, engines=True)
    engine_cli.add_engine_arguments(p)
    p = sub.add_parser("sweep", help="every quant over a context grid (CSV, or JSON with --json)")
    _common(p, with_context=False)
    p.add_argument("--quants", default=",".join(q for q in QUANTS if q != "et-4bit"), help="comma-separated schemes")
    p.add_argument("--contexts", default=None, help="comma-separated contexts (default: 64 points, 1K to 128K)")
    p = sub.add_parser("check", help="a real engine log (vLLM, llama.cpp / Ollama, runtime JSONL) against the estimate")
    p.add_argument("logfile", help="the log file ('-' reads standard input)")
    p.add_argument("--model", default=None, help="preset or config.json, when the log names no known model")
    p.add_argument("--gpu", default=None, help="catalog GPU key, when the log states no GPU memory")
    p.add_argument("--gpu-memory", default=None, help="GPU memory (24GiB, 80 GB, bytes), when the log states none")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p = sub.add_parser(
        "calibration", help="public measurements and cuda points: residuals and whether the range covers them"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--markdown", action="store_true", help="print validation/calibration.md")
    p = sub.add_parser("speed", help="decode / prefill tokens/s and TTFT on a GPU, each a range")
    _common(p, engines=True)
    engine_cli.add_engine_arguments(p)
    p.add_argument(
        "--concurrency", action="store_true", help="add tokens/s at 1, 2, 4, ... sequences up to the KV limit"
    )
    p.add_argument(
        "--validation", action="store_true", help="the public tok/s rows against the estimate (leave-one-out)"
    )
    p.add_argument(
        "--host-bandwidth",
        default=None,
        help="host RAM bandwidth in GB/s (SI) for a llama.cpp partial offload (default 89.6: dual-channel DDR5-5600)",
    )
    p.add_argument("--bandwidth", default=None, help="GPU memory bandwidth in GB/s (SI): a GPU not in the catalog")
    p.add_argument("--tflops", default=None, help="its dense 16-bit tensor TFLOPS (SI), for prefill and TTFT")
    training_cli.add_parser(sub)
    p = sub.add_parser("gpus", help="the GPU catalog")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("quants", help="the weight schemes")
    p.add_argument("--model", default=DEFAULT_PRESET)
    p.add_argument("--json", action="store_true")
    return parser


def _settings_from(args: argparse.Namespace, context: int | None) -> tuple[Any, int | None]:
    """Settings from the flags; ``context`` None means the shortest valid one (new_tokens + 1),
    for the commands that search or sweep the context."""
    gpu_mem = parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else None
    new_tokens = parse_int(args.new_tokens, "--new-tokens", 0)
    s = make_settings(
        args.model,
        gpu=args.gpu,
        quant=args.quant,
        context=new_tokens + 1 if context is None else context,
        batch=parse_int(args.batch, "--batch", 1),
        kv_dtype=args.kv_dtype,
        attn=args.attn,
        new_tokens=new_tokens,
        cache=args.cache,
        padding=args.padding,
        logits=args.logits,
        prefill_chunk=parse_int(args.prefill_chunk, "--prefill-chunk", 1) if args.prefill_chunk is not None else None,
        bnb_compute_dtype=args.bnb_compute_dtype,
    )
    return s, gpu_mem


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:10.3f} GiB"


def format_estimate(d: dict[str, Any]) -> str:
    """A readable table of an ``Estimate.to_dict()``."""
    st = d["settings"]
    # the context is the window the KV cache holds: the prompt plus the generated tokens
    window = f"context {st['context']:,} (prompt {st['context'] - st['new_tokens']:,} + {st['new_tokens']} new)"
    lines = [
        f"{st['model']}  {st['quant']}  {window}  batch {st['batch']}  attn {st['attn']}  kv {st['kv_dtype']}",
        f"  {'weights':<22}{_gib(d['weights_bytes'])}",
        f"  {'KV cache':<22}{_gib(d['kv_cache_bytes'])}",
        f"  {'activations (peak)':<22}{_gib(d['activations_bytes'])}",
        f"  {'overhead':<22}{_gib(d['overhead_bytes'])}",
        "  " + "-" * 36,
        f"  {'peak allocated':<22}{_gib(d['peak_allocated_bytes'])}   torch.cuda.max_memory_allocated()",
        f"  {'peak reserved':<22}{_gib(d['peak_reserved_bytes'])}   torch.cuda.max_memory_reserved()",
        f"  {'device used (total)':<22}{_gib(d['device_used_bytes'])}   NVML / nvidia-smi: must be free",
    ]
    low, high = d.get("device_used_low_bytes"), d.get("device_used_high_bytes")
    if low is not None and high is not None:
        lines.append(
            f"  {'range':<22}reserved {d['peak_reserved_low_bytes'] / GiB:.3f}-{d['peak_reserved_high_bytes'] / GiB:.3f}"
            f" GiB, device used {low / GiB:.3f}-{high / GiB:.3f} GiB (CUDA context, allocator fragmentation)"
        )
    if d.get("fits") is not None:
        # the three-way verdict (report.fit_verdict) on the range; without one, on the point
        verdict = d.get("fit_verdict") or ("fits" if d["fits"] else "does not fit")
        lines.append(
            f"  on {d['gpu_memory_bytes'] / GiB:.2f} GiB: {verdict}, headroom {d['headroom_bytes'] / GiB:.2f} GiB"
            + (
                f"; device used {d['device_used_bytes'] / GiB:.3f} GiB ({low / GiB:.2f}-{high / GiB:.2f} GiB)"
                if low is not None and high is not None
                else ""
            )
        )
    return "\n".join(lines)


def _other_engine(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, ModelSpec, Gpu | None, int | None], dict[str, Any]],
) -> tuple[dict[str, Any], str] | None:
    """Run an engine model (vLLM, llama.cpp) when --engine names one; None for transformers.
    ``run``: ``engine_cli.engine_estimate`` or ``engine_fit``."""
    if args.engine == "transformers":
        return None
    gpu = get_gpu(args.gpu) if args.gpu else None
    mem = parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else None
    d = run(args, load_model(args.model), gpu, mem)
    return d, engine_cli.format_engine_table(d)


def _cmd_estimate(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if (done := _other_engine(args, engine_cli.engine_estimate)) is not None:
        return done
    s, mem = _settings_from(args, _context(args.context))
    d = estimate_settings(s, mem).to_dict()
    d["launch"] = transformers_launch(s).to_dict()
    return d, format_estimate(d) + "\n" + format_launch(d["launch"])


def _cmd_fit(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if (done := _other_engine(args, engine_cli.engine_fit)) is not None:
        return done
    if args.gpu is None and args.gpu_memory is None:
        raise InvalidSpecError("fit needs --gpu NAME or --gpu-memory SIZE: none given")
    s, mem = _settings_from(args, None)
    limit = mem if mem is not None else s.gpu.memory_bytes
    t = max_context(s, gpu_memory_bytes=mem)
    certain, possible = (max_context(s, gpu_memory_bytes=mem, bound=b) for b in ("high", "low"))
    window = s.model.max_position_embeddings
    d: dict[str, Any] = {
        "max_context": t,
        "max_context_low": certain,  # the range's high end of device used fits: fits for certain
        "max_context_high": possible,  # its low end fits: may fit; beyond it nothing fits
        "max_position_embeddings": window,
        "whole_window_fits": t == window,
        "gpu_memory_bytes": limit,
    }
    if t > 0:
        d["estimate"] = estimate_settings(replace(s, context=t), mem).to_dict()
        whole = f" (the whole window of {window:,} fits)" if t == window else ""
        d["launch"] = transformers_launch(replace(s, context=t)).to_dict()
        text = (
            f"largest context on {limit / GiB:.2f} GiB: {t:,} tokens ({format_context(t)}){whole}; "
            f"every shorter context fits too\n{_fit_range(certain, t, possible)}\n"
            + format_estimate(d["estimate"])
            + "\n"
            + format_launch(d["launch"])
        )
    else:
        text = (
            f"nothing fits on {limit / GiB:.2f} GiB: even a one-token prompt needs more "
            f"(weights alone: {_gib(weight_bytes(s.model, s.quant).total_bytes)})"
        )
    d["settings"] = {**estimate_settings(s, mem).settings.to_dict(), "context": None}
    return d, text


def _fit_range(certain: int, point: int, possible: int) -> str:
    """The answer on the estimate's range (``solve.point_limit``)."""
    if certain == point == possible:
        return "the range agrees: every context up to it fits for certain"
    return engine_cli.format_fit_range(certain, possible)


def _cmd_sweep(args: argparse.Namespace) -> tuple[Any, str]:
    s, mem = _settings_from(args, None)
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    if not quants:
        raise InvalidSpecError(f"--quants must list at least one scheme from {', '.join(QUANTS)}: {args.quants!r}")
    for q in quants:
        if q not in QUANTS:
            raise InvalidSpecError(f"--quants must list schemes from {', '.join(QUANTS)}: {q!r}")
    if args.contexts is not None:
        ctxs = [_context(c.strip()) for c in args.contexts.split(",") if c.strip()]
        if not ctxs:
            raise InvalidSpecError(f"--contexts must list at least one context: {args.contexts!r}")
    else:  # 64 points from 1K to 128K, within the model's window
        hi = min(131072, s.model.max_position_embeddings)
        ctxs = [c for c in context_grid(hi=hi) if c > s.new_tokens] if hi > 1024 else [hi]
    rows = sweep(s, quants=quants, contexts=ctxs, gpu_memory_bytes=mem)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return {"settings": s.to_dict(), "rows": rows}, out.getvalue().rstrip("\n")


def _cmd_speed(args: argparse.Namespace) -> tuple[Any, str]:
    from .speed import concurrency_curve, error_summary, speed, validation

    if args.validation:
        rows = validation()
        summary = error_summary(rows)
        return {"rows": rows, "summary": summary}, format_speed_validation(rows, summary)
    gpu = _speed_gpu(args)
    if args.engine == "transformers":
        s, _ = _settings_from(args, _context(args.context))
        model, quant, kv_dtype, attn = s.model, s.quant, s.kv_dtype, s.attn
        context, new_tokens, batch = s.context, s.new_tokens, s.batch
    else:
        model, quant, kv_dtype, attn = load_model(args.model), args.quant, args.kv_dtype, args.attn
        context = _context(args.context)
        new_tokens = parse_int(args.new_tokens, "--new-tokens", 0)
        batch = parse_int(args.batch, "--batch", 1)
    kw: dict[str, Any] = {"engine": args.engine, "context": context, "new_tokens": new_tokens, "kv_dtype": kv_dtype}
    offload: dict[str, Any] = {}
    if args.engine == "llama.cpp":
        offload = {"n_gpu_layers": args.n_gpu_layers, "n_ubatch": args.ubatch}
        if args.host_bandwidth is not None:
            try:
                gbs = float(args.host_bandwidth)
            except ValueError:
                gbs = 0.0
            if not 0 < gbs < 1e6:
                raise InvalidSpecError(f"--host-bandwidth must be a positive number of GB/s: {args.host_bandwidth!r}")
            offload["host_bandwidth_bytes_per_s"] = int(gbs * 1e9)
    d = speed(model, quant, gpu, batch=batch, attn=attn, **offload, **kw).to_dict()
    if args.concurrency:
        d["concurrency"] = concurrency_curve(model, quant, gpu, **kw)
    return d, format_speed(d)


def _positive(text: str, flag: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0 < v < 1e9:
        raise InvalidSpecError(f"{flag} must be a positive number: {text!r}")
    return v


def _speed_gpu(args: argparse.Namespace) -> Gpu:
    """The catalog GPU of --gpu, or one described by --bandwidth (GB/s) and --tflops (dense 16-bit),
    which also override a catalog GPU's figures."""
    if args.gpu is None and args.bandwidth is None:
        raise InvalidSpecError("speed needs --gpu NAME (a catalog GPU) or --bandwidth GB/s: none given")
    if args.gpu is not None:
        g = get_gpu(args.gpu)
    else:
        mem = parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else 0
        g = Gpu("custom", "Custom GPU", "nvidia", "generic", mem, "entered by the user", "custom")
    if args.bandwidth is not None:
        bw = int(_positive(args.bandwidth, "--bandwidth") * 1e9)
        g = replace(g, bandwidth_bytes_per_s=bw, bandwidth_source="entered by the user")
    if args.tflops is not None:
        f = int(_positive(args.tflops, "--tflops") * 1e12)
        g = replace(g, flops_per_s=(("bf16", f), ("fp16", f)), flops_source="entered by the user")
    return g


def format_speed(d: dict[str, Any]) -> str:
    """The speed table: each rate's low / point / high, what a step reads, and the fractions' basis."""
    head = (
        f"speed: {d['model']} {d['quant']} on {d['gpu']} ({d['engine']}), batch {d['batch']}, "
        f"prompt {d['prompt_tokens']:,} + {d['new_tokens']:,} new tokens"
    )
    lines = [head, f"{'':<26}{'low':>12}{'point':>12}{'high':>12}"]
    for key, label, fmt in (
        ("decode_tok_s", "decode tok/s per sequence", "{:12,.1f}"),
        ("aggregate_tok_s", "decode tok/s, all seqs", "{:12,.1f}"),
        ("prefill_tok_s", "prefill tok/s", "{:12,.0f}"),
        ("ttft_s", "time to first token (s)", "{:12.4f}"),
    ):
        v = d[key]
        cells = "".join(fmt.format(v[k]) for k in ("low", "point", "high")) if v else f"{'-':>12}" * 3
        lines.append(f"{label:<26}{cells}")
    fr = d["fractions"]
    lines.append(
        f"a decode step reads {d['step_bytes'] / GiB:.3f} GiB (weights {d['weights_read_bytes'] / GiB:.3f} GiB, "
        f"KV {d['kv_read_bytes'] / GiB:.3f} GiB); bound by {d['bound']}"
    )
    fx, fl = fr["fixed_s"], fr["flops"]
    lines.append(
        f"from public rows: bytes at {fr['ceiling']:.2f} of peak bandwidth, plus {1000 * fx['low']:.2f} / "
        f"{1000 * fx['point']:.2f} / {1000 * fx['high']:.2f} ms fixed per step; prefill at "
        f"{fl['low']:.2f} / {fl['point']:.2f} / {fl['high']:.2f} of peak FLOPs ({fr['basis']})"
    )
    lines += [f"note: {n}" for n in d["notes"]]
    for c in d.get("concurrency", []):
        per, agg = c["per_sequence"], c["aggregate"]
        lines.append(
            f"{c['concurrency']:>6} seqs: {per['point']:10,.1f} tok/s each ({per['low']:,.1f} to {per['high']:,.1f}), "
            f"{agg['point']:10,.1f} in all ({agg['low']:,.1f} to {agg['high']:,.1f})"
        )
    return "\n".join(lines)


def format_speed_validation(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    """Each public row against its leave-one-out estimate, then the error per counter and GPU class."""
    lines = [
        f"{'id':<7} {'gpu':<15} {'counter':<23} {'measured':>9} {'low':>9} {'point':>9} {'high':>9} {'err':>6}  in"
    ]
    for r in rows:
        lines.append(
            f"{r['id']:<7} {r['gpu']:<15} {r['counter']:<23} {r['measured']:9.1f} {r['low']:9.1f} {r['point']:9.1f} "
            f"{r['high']:9.1f} {r['rel_error']:6.1%}  {'yes' if r['covered'] else 'no'}"
        )
    for key, s in summary.items():
        lines.append(
            f"{key}: {s['rows']} rows, median error {s['median_rel_error']:.1%}, worst {s['worst_rel_error']:.1%}, "
            f"range covers {s['coverage']:.0%}"
        )
    return "\n".join(lines)


def _cmd_gpus(args: argparse.Namespace) -> tuple[Any, str]:
    gpus = [g.to_dict() for g in gpu_catalog()]
    text = "\n".join(f"{g['key']:<20} {g['memory_bytes'] / GiB:8.2f} GiB  {g['name']}" for g in gpus)
    return gpus, text


def _cmd_quants(args: argparse.Namespace) -> tuple[Any, str]:
    spec = load_model(args.model)
    rows: list[dict[str, Any]] = []
    for q in QUANTS.values():
        wb = weight_bytes(spec, q.name)
        rows.append(
            {
                "name": q.name,
                "label": q.label,
                "bits": q.bits,
                "bits_per_weight": round(effective_bits_per_param(spec, q.name), 4),
                "weights_bytes": wb.total_bytes,
                "family": q.family,
                "note": q.note,
            }
        )
    text = "\n".join(
        f"{r['name']:<10} {r['bits']:>3}-bit  {r['bits_per_weight']:7.3f} bits/param  "
        f"{r['weights_bytes'] / GiB:7.3f} GiB  {r['note']}"
        for r in rows
    )
    return rows, text


def _cmd_check(args: argparse.Namespace) -> tuple[Any, str]:
    from .check import MAX_LOG_BYTES, check_log

    if args.logfile == "-":
        data = sys.stdin.buffer.read(MAX_LOG_BYTES + 1)
    else:
        with open(args.logfile, "rb") as f:
            data = f.read(MAX_LOG_BYTES + 1)
    options: dict[str, Any] = {"model": args.model, "gpu": args.gpu}
    if args.gpu_memory is not None:
        options["gpu_memory_bytes"] = parse_size(args.gpu_memory, "--gpu-memory")
    r = check_log(data, **options)
    return r.to_dict(), format_check(r)


def format_check(r: Any) -> str:
    """The check as a table: per term logged, predicted, difference and relative error, and the owner."""
    from .check import format_range, format_value

    head = f"{r.engine} log" + (f" ({r.engine_version})" if r.engine_version else "")
    lines = [head, "settings read: " + ", ".join(f"{k}={v}" for k, v in r.inferred.items())]
    lines.append(
        f"{'term':<44} {'logged':>14} {'predicted':>14} {'difference':>14} {'error':>8}  {'range':<29} {'in':<3}  owner"
    )
    for t in r.terms:
        err = "-" if t.rel_error is None else f"{100 * t.rel_error:+.1f}%"
        rng = "exact" if t.low is None or t.high is None else format_range(t.low, t.high, t.unit)
        inside = {None: "-", True: "yes", False: "NO"}[t.within_range]
        lines.append(
            f"{t.name[:44]:<44} {format_value(t.logged, t.unit):>14} {format_value(t.predicted, t.unit):>14} "
            f"{format_value(t.difference, t.unit):>14} {err:>8}  {rng:<29} {inside:<3}  {t.owner}"
        )
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def _cmd_calibration(args: argparse.Namespace) -> tuple[Any, str]:
    from . import calibration

    rep = calibration.report()
    return rep, calibration.format_markdown(rep).rstrip("\n") if args.markdown else calibration.format_text(rep)


COMMANDS = {
    "estimate": _cmd_estimate,
    "fit": _cmd_fit,
    "sweep": _cmd_sweep,
    "check": _cmd_check,
    "calibration": _cmd_calibration,
    "gpus": _cmd_gpus,
    "quants": _cmd_quants,
    "speed": _cmd_speed,
    "train": training_cli.cmd_train,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        data, text = COMMANDS[args.command](args)
    except (CliError, EstimatorError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            one_line(f"error: cannot read {getattr(e, 'filename', '') or 'input'}: {e.strerror or e}"), file=sys.stderr
        )
        return 2
    try:
        print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

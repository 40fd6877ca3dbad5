"""``python -m estimator train``: one fine-tuning step's memory, or a solver over it.

    python -m estimator train --method qlora --rank 16 --targets all-linear \\
        --optimizer paged-adamw-8bit --seq-len 4096 --micro-batch 2 --gpu rtx-4090-24gb [--json]
    python -m estimator train --method lora --gpu rtx-4090-24gb --solve seq-len

Argument parsing and formatting only; the numbers are ``estimate_training`` and the solvers'.
Bad input raises (the caller prints one line and exits 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidSpecError
from ..gpus import get_gpu
from ..model import DEFAULT_PRESET
from ..units import GiB, one_line, parse_context, parse_int, parse_size
from .estimate import BREAKDOWN_KEYS, TRAINING_COUNTERS, estimate_training
from .params import METHODS
from .settings import ATTN_IMPLEMENTATIONS, GRAD_CHECKPOINTING, LOSSES, MIXED_PRECISION
from .solve import best_method, max_micro_batch, max_seq_len, smallest_gpu
from .static import OPTIMIZERS, QLORA_QUANTS

SOLVE = ("seq-len", "micro-batch", "gpu", "method")


def add_parser(sub: Any) -> None:
    """The ``train`` subcommand's flags."""
    p = sub.add_parser("train", help="memory of one fine-tuning step (full, LoRA, QLoRA) or a solver over it")
    p.add_argument(
        "--model", default=DEFAULT_PRESET, help=f"preset or path to a config.json (default {DEFAULT_PRESET})"
    )
    p.add_argument("--method", default="lora", help=f"{', '.join(METHODS)} (default lora)")
    p.add_argument("--rank", default="16", help="LoRA rank (default 16)")
    p.add_argument(
        "--targets", default="all-linear", help="all-linear, or a comma list of q,k,v,o,gate,up,down,lm_head,embed"
    )
    p.add_argument("--dropout", default="0", help="LoRA dropout (default 0)")
    p.add_argument(
        "--quant",
        default=None,
        help=f"qlora base: {', '.join(QLORA_QUANTS)} (default nf4); full: bf16 (default) or fp32 master weights",
    )
    p.add_argument("--adapter-dtype", default="fp32", help="fp32 (PEFT's default autocast_adapter_dtype) or bf16")
    p.add_argument("--optimizer", default="adamw", help=f"{', '.join(OPTIMIZERS)} (default adamw)")
    p.add_argument("--seq-len", default="2048", help="tokens per sequence: 2048, 4k (default 2048)")
    p.add_argument("--micro-batch", default="1", help="sequences per micro-batch (default 1)")
    p.add_argument("--grad-accum", default="1", help="micro-batches per optimizer step (default 1)")
    p.add_argument("--grad-checkpointing", default="off", help=f"{', '.join(GRAD_CHECKPOINTING)} (default off)")
    p.add_argument(
        "--mixed-precision",
        default="off",
        help=f"{', '.join(MIXED_PRECISION)}: bf16 is the Trainer's bf16=True (autocast around the forward; default off)",
    )
    p.add_argument(
        "--packed",
        action="store_true",
        help="padding-free: the micro-batch's sequences flattened into one row (DataCollatorWithFlattening)",
    )
    p.add_argument("--attn-implementation", default="sdpa", help=f"{', '.join(ATTN_IMPLEMENTATIONS)} (default sdpa)")
    p.add_argument(
        "--loss",
        default="transformers",
        help=f"{', '.join(LOSSES)}: transformers' ForCausalLMLoss or Liger's fused linear cross-entropy "
        "(the Trainer's use_liger_kernel) (default transformers)",
    )
    p.add_argument(
        "--liger-layers",
        action="store_true",
        help="Liger's RMSNorm, SwiGLU and RoPE kernels (with --loss liger: the Trainer's use_liger_kernel)",
    )
    p.add_argument("--gpu", default=None, help="catalog GPU key (see 'gpus'); adds fits and headroom_bytes")
    p.add_argument("--gpu-memory", default=None, help="custom GPU memory: bytes, or a number with GiB, GB, MiB, MB")
    p.add_argument(
        "--solve",
        default=None,
        help=f"answer instead: the largest {SOLVE[0]} / {SOLVE[1]}, the smallest "
        f"{SOLVE[2]}, the cheapest {SOLVE[3]} that fits",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _kw(args: argparse.Namespace) -> dict[str, Any]:
    try:
        dropout = float(args.dropout)
    except ValueError:
        raise InvalidSpecError(f"--dropout must be a number in [0, 1): {args.dropout!r}") from None
    kw: dict[str, Any] = dict(
        method=args.method,
        rank=parse_int(args.rank, "--rank"),
        targets=args.targets,
        dropout=dropout,
        adapter_dtype=args.adapter_dtype,
        optimizer=args.optimizer,
        seq_len=parse_context(args.seq_len, "--seq-len"),
        micro_batch=parse_int(args.micro_batch, "--micro-batch"),
        grad_accum=parse_int(args.grad_accum, "--grad-accum"),
        grad_checkpointing=args.grad_checkpointing,
        mixed_precision=args.mixed_precision,
        packed=args.packed,
        attn_implementation=args.attn_implementation,
        loss=args.loss,
        liger_layers=args.liger_layers,
    )
    if args.quant is not None:
        kw["quant"] = args.quant
    return kw


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:,.2f} GiB"


def cmd_train(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The ``train`` command: (JSON-able data, table text)."""
    kw = _kw(args)
    gpu_mem = parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else None
    gpu = get_gpu(args.gpu) if args.gpu is not None else None
    if args.solve is not None:
        return _solve(args, kw, gpu, gpu_mem)
    e = estimate_training(args.model, gpu=gpu, gpu_memory_bytes=gpu_mem, **kw)
    d = e.to_dict()
    return d, format_training(d)


def _solve(args: argparse.Namespace, kw: dict[str, Any], gpu: Any, gpu_mem: int | None) -> tuple[dict[str, Any], str]:
    what = args.solve
    if what not in SOLVE:
        raise InvalidSpecError(f"--solve must be one of {', '.join(SOLVE)}: {one_line(str(what))!r}")
    if what != "gpu" and gpu is None and gpu_mem is None:
        raise InvalidSpecError(f"--solve {what} needs --gpu or --gpu-memory: None")
    if what == "seq-len":
        n = max_seq_len(args.model, gpu=gpu, gpu_memory_bytes=gpu_mem, **kw)
        return {"max_seq_len": n}, f"largest sequence length that fits: {n:,} tokens"
    if what == "micro-batch":
        n = max_micro_batch(args.model, gpu=gpu, gpu_memory_bytes=gpu_mem, **kw)
        return {"max_micro_batch": n}, f"largest micro-batch that fits: {n:,}"
    if what == "gpu":
        g = smallest_gpu(args.model, **kw)
        return ({"gpu": g.key if g else None}, f"smallest GPU that fits: {g.name if g else 'none in the catalog'}")
    m = best_method(args.model, gpu=gpu, gpu_memory_bytes=gpu_mem, **{k: v for k, v in kw.items() if k != "method"})
    return {"method": m}, f"cheapest method that fits (full, then lora, then qlora nf4): {m or 'none'}"


def format_training(d: dict[str, Any]) -> str:
    s = d["settings"]
    head = f"{s['model']} {s['method']}"
    if s["method"] != "full":
        head += f" r={s['rank']} targets={s['targets']} adapters={s['adapter_dtype']}"
    head += (
        f" base={s['quant']} optimizer={s['optimizer']} seq_len={s['seq_len']:,} micro_batch={s['micro_batch']}"
        f" grad_accum={s['grad_accum']} checkpointing={s['grad_checkpointing']}"
    )
    if s.get("mixed_precision", "off") != "off":
        head += f" mixed_precision={s['mixed_precision']}"
    if s.get("packed"):
        head += " packed"
    if s.get("attn_implementation", "sdpa") != "sdpa":
        head += f" attn={s['attn_implementation']}"
    if s.get("loss", "transformers") != "transformers":
        head += f" loss={s['loss']}"
    if s.get("liger_layers"):
        head += " liger-layers"
    out = [head, d["trainable_line"], ""]
    out += [f"  {k.replace('_', ' '):<24}{_gib(v):>14}" for k, v in d["breakdown"].items() if k in BREAKDOWN_KEYS]
    if d["paged_bytes"]:
        out.append(f"  {'(of which paged states)':<24}{_gib(d['paged_bytes']):>14}")
    out.append("")
    out.append(f"  peak at {d['peak_phase']}")
    for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
        out.append(
            f"  {k.replace('_bytes', '').replace('_', ' '):<24}{_gib(d[k]):>14}   {TRAINING_COUNTERS[k].split(' (')[0]}"
        )
    out.append(f"  device used range        {_gib(d['device_used_low_bytes'])} to {_gib(d['device_used_high_bytes'])}")
    if d.get("gpu_memory_bytes"):
        out.append(
            f"  GPU {s['gpu']}: {_gib(d['gpu_memory_bytes'])}, {d['fit_verdict']} (headroom {_gib(d['headroom_bytes'])})"
        )
    return "\n".join(out)

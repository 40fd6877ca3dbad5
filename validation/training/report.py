"""Estimator vs trace for the training proof grid: writes validation/training/README.md.

    .venv/bin/python validation/training/report.py [trace.jsonl] [README.md]

Reads the runtime's training records (``python -m runtime train-measure --out``, made by
``validation/training/grid.sh``), asks ``estimate_training`` for the same settings and tabulates
the peaks per phase and the static parts, byte for byte (tests/training/test_estimate.py holds
the committed file to this output).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from estimator.training.estimate import estimate_train_settings, record_settings  # noqa: E402

PHASES = {
    "forward": ("forward (loss)", "forward (lm_head LoRA)"),
    "backward": (
        "backward (log_softmax)",
        "backward (end)",
        "backward (last layer attention)",
        "backward (lm_head weight grad)",
        "backward (liger)",
        "backward (final norm)",
    ),
}
LIGER = HERE / "liger.jsonl"  # loss="liger" points (grid.sh), a section of their own


def point(s: dict[str, Any]) -> str:
    """A record's row label; `bf16 autocast` marks the Trainer's bf16=True."""
    label = f"{s['method']} {s['quant']} T={s['seq_len']:,} ckpt={s['grad_checkpointing']}"
    return label + (" bf16 autocast" if s.get("mixed_precision", "off") == "bf16" else "")


def estimate_for(s: dict[str, Any], gpu: Any = None) -> Any:
    return estimate_train_settings(record_settings(s, gpu))


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        s, t = r["settings"], r["training"]
        e = estimate_for(s)
        est = {
            "forward": max(e.candidates[c] for c in PHASES["forward"] if c in e.candidates),
            "backward": max(e.candidates[c] for c in PHASES["backward"] if c in e.candidates),
            "optimizer": e.candidates["optimizer step"],
        }
        label = point(s)
        if _batched(r):
            label = (
                f"{s['method']} {s.get('attn_implementation', 'sdpa')} {s['micro_batch']} x {s['seq_len']:,} "
                f"{'packed' if s.get('packed') else 'unpacked'} ckpt={s['grad_checkpointing']}"
            )
        out.append(
            {
                "point": label,
                "trace": t["peak_live_bytes"],
                "estimate": est,
                "peak_trace": max(t["peak_live_bytes"].values()),
                "peak_estimate": e.peak_live_bytes,
                "rounded_trace": r["peak_allocated_bytes"],
                "rounded_estimate": e.peak_live_rounded_bytes,
                "phase": e.peak_phase,
                "static_ok": t["weights_bytes"] + t["adapter_weights_bytes"] == e.weights_bytes
                and t["optimizer_states_bytes"] == e.optimizer_states_bytes,
                "wall_s": r["details"].get("wall_s"),
            }
        )
    return out


def peak_table(rs: list[dict[str, Any]]) -> list[str]:
    """The step's peak per point, trace against estimate, raw and 512-rounded."""
    lines = [
        "| point | phase | trace peak (B) | estimate (B) | diff (B) | trace, 512-rounded | estimate | diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rs:
        lines.append(
            f"| {x['point']} | {x['phase']} | {x['peak_trace']:,} | {x['peak_estimate']:,} | "
            f"{x['peak_estimate'] - x['peak_trace']:,} | {x['rounded_trace']:,} | {x['rounded_estimate']:,} | "
            f"{x['rounded_estimate'] - x['rounded_trace']:,} |"
        )
    return lines


def cuda_markdown(records: list[dict[str, Any]]) -> str:
    """Real-step records (cuda; cpu in the rehearsal): the estimate's three counters against
    torch's and NVML's."""
    from estimator.report import measured_gpu

    env = records[0]["environment"] or {}
    cpu = records[0]["settings"].get("device") == "cpu"
    lines = [
        "# Training memory: estimator vs a real "
        + ("CPU step (rehearsal: CPU kernels, so the numbers are not a check)" if cpu else "GPU step"),
        "",
        f"GPU {env.get('gpu_name') or 'none (CPU)'}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"bitsandbytes {env.get('bitsandbytes')}.",
        "",
        "| point | status | counter | measured | estimate | rel. error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in records:
        s = r["settings"]
        if r["status"] != "ok":
            lines.append(f"| {point(s)} | {r['status']} | | | | |")
            continue
        gpu = measured_gpu(r.get("environment"))
        e = estimate_for(s, gpu)
        for c in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
            m, v = r.get(c), getattr(e, c)
            err = f"{(v - m) / m:+.2%}" if m else "-"
            lines.append(f"| {point(s)} | ok | {c} | {m if m is None else f'{m:,}'} | {v:,} | {err} |")
    return "\n".join(lines) + "\n"


def _batched(r: dict[str, Any]) -> bool:
    """A point of the packed-batches section: packed, several sequences or flash_attention_2."""
    s = r["settings"]
    return bool(s.get("packed")) or s["micro_batch"] > 1 or s.get("attn_implementation", "sdpa") != "sdpa"


def packed_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The "Packed batches" section: the packed points and the unpacked micro-batch they replace."""
    if not records:
        return []
    lines = [
        "## Packed batches",
        "",
        "Padding-free micro-batches (transformers' `DataCollatorWithFlattening`, TRL's `padding_free`):",
        "the sequences flattened into one row [1, N], `position_ids` restarting per sequence, labels -100",
        "at each sequence's first token, `use_cache=False`. SDPA gets transformers' block-causal bool mask",
        "(`sdpa_mask`), so CUDA runs the mem-efficient kernel (flash takes no mask) on k, v repeated to",
        "every head (`repeat_kv`), and each layer keeps aten's additive bf16 mask [1, 1, N, N]",
        "(`convert_boolean_attn_mask`): at 4 x 2K, 28 x 128 MiB. flash_attention_2 runs flash-attn's",
        "varlen kernel: no mask, GQA in the kernel. LoRA r=16 all-linear, fp32 adapters, AdamW; QLoRA",
        "NF4 (not with flash_attention_2): its fp32 row takes the same mem-efficient kernel with an fp32",
        "mask, so no math path and none of its b x h x T x T fp32 probabilities.",
        "",
        "Reproduce: `python -m runtime train-measure --method lora --rank 16 --targets all-linear",
        "--seq-len 2048 --micro-batch 4 --packed --attn-implementation sdpa|flash_attention_2 --device trace`",
        "(and the other points: the last lines of `validation/training/grid.sh`).",
        "",
    ]
    lines += peak_table(rows(records))
    lines += [
        "",
        "The stand-ins: aten's mem-efficient attention (`_efficient_attention_forward`/`_backward`: output,",
        "fp32 logsumexp rounded up to 32 rows, grad_q/k/v and the fp32 `delta`; not its backward",
        "`workspace`, whose size follows the key-split heuristic) and flash-attn 2's `mha_varlen_fwd`/",
        "`mha_varlen_bwd` (the unpadded fp32 lse [h, N], `rng_state`, `softmax_d` and `dq_accum` over",
        "N + 128 x sequences rows).",
        "",
    ]
    return lines


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def liger_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The ``--loss liger`` points: the step's peak, and the live bytes the stand-in reports inside
    liger's chunk loop and at its backward against the estimate's candidates for those moments."""
    lines = [
        "## Liger (`--loss liger`)",
        "",
        "Liger-Kernel's fused linear cross-entropy (what the Trainer's `use_liger_kernel` swaps in for",
        "lm_head + `ForCausalLMLoss`; liger-kernel 0.8.5, stand-in `LigerFusedLinearCrossEntropy` in",
        "`runtime/train.py`, estimate `estimator/training/loss.py`), same model, LoRA and QLoRA settings",
        "(`bash validation/training/grid.sh` runs them), e.g.:",
        "",
        "```bash",
        "python -m runtime train-measure --device trace --method lora --rank 16 --targets all-linear \\",
        "    --seq-len 8192 --grad-checkpointing off --loss liger --out validation/training/liger.jsonl",
        "```",
        "",
        "| point | step peak: trace (B) | estimate (B) | diff (B) | estimate's phase "
        "| liger forward: trace / estimate | liger backward: trace / estimate |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in records:
        s, t = r["settings"], r["training"]
        e = estimate_for(s)
        peak = max(t["peak_live_bytes"].values())
        lv = t.get("liger_live_bytes", {})
        fwd, bwd = e.candidates["forward (loss)"], e.candidates["backward (liger)"]
        lines.append(
            f"| {s['method']} {s['quant']} T={s['seq_len']:,} ckpt={s['grad_checkpointing']} | {peak:,} | "
            f"{e.peak_live_bytes:,} | {e.peak_live_bytes - peak:,} | {e.peak_phase} | "
            f"{lv.get('forward', 0):,} / {fwd:,} | {lv.get('backward', 0):,} / {bwd:,} |"
        )
    lines += [
        "",
        "LoRA without checkpointing peaks in the final RMSNorm's backward, right after liger's",
        "(five fp32 [N, H] tensors). With non-reentrant checkpointing it peaks while backward",
        "recomputes the last decoder layer (torch.utils.checkpoint recomputes on the first unpack, in",
        "down_proj's backward): the layer's saved tensors held again, down_proj's two output",
        "gradients, and up_proj's LoRA term with its fp32 [N, I] temporaries",
        "(`activations.recompute_up_proj_rows`). Liger's forward and backward columns are the live",
        "bytes the stand-in reports at those two moments of the loss itself. QLoRA at 8K tokens",
        "still peaks in the last layer's fp32 math attention backward (b x h x T x T tensors), so",
        "liger saves little there (without checkpointing the [N, V] tensors were a small part;",
        "with checkpointing nothing: compare the QLoRA rows of the table above).",
        "",
    ]
    return lines


def markdown(records: list[dict[str, Any]], liger: list[dict[str, Any]] | None = None) -> str:
    if records and records[0]["settings"].get("device") in ("cuda", "cpu"):
        return cuda_markdown(records)
    liger = _load(LIGER) if liger is None else liger
    batched = [r for r in records if _batched(r)]
    records = [r for r in records if not _batched(r)]
    env = records[0]["environment"] if records else {}
    lines = [
        "# Training memory: estimator vs trace (Llama 3.2 3B)",
        "",
        "Each row is one real training step of the full Llama 3.2 3B traced on fake tensors",
        "(`python -m runtime train-measure --device trace`, `runtime/train.py`): grad_accum",
        "micro-batches of forward + `ForCausalLMLoss` + backward, the optimizer step, then the steady",
        "state (states present) and a second step. The trace counts live tensor bytes per phase",
        "(`runtime/track.py`); `estimate_training` derives the same peaks by mechanism",
        "(`estimator/training/`, docs/training.md). LoRA: r=16, all-linear, fp32 adapters, AdamW",
        "(foreach). QLoRA: NF4 base, `prepare_model_for_kbit_training`. Full: bf16, AdamW.",
        "Rows marked `bf16 autocast` run the Trainer's `bf16=True`: the forward under bf16 autocast",
        "(`runtime/autocast.py` stands in for CUDA's autocast kernels on fake tensors) and accelerate's",
        "`convert_outputs_to_fp32`; full `fp32` is fp32 master weights under that autocast.",
        "",
        f"Versions: torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"bitsandbytes {env.get('bitsandbytes')}. Reproduce: `bash validation/training/grid.sh` then "
        "`.venv/bin/python validation/training/report.py`.",
        "",
    ]
    rs = rows(records)
    lines += peak_table(rs)
    lines += [
        "",
        "Per phase (trace / estimate, bytes of live tensors at the phase's peak):",
        "",
        "| point | forward | backward | optimizer |",
        "|---|---|---|---|",
    ]
    for x in rs:
        cells = []
        for p in ("forward", "backward", "optimizer"):
            t, e = x["trace"][p], x["estimate"][p]
            cells.append(f"{t:,} / {e:,}" + ("" if t == e else f" ({e - t:+,})"))
        lines.append(f"| {x['point']} | " + " | ".join(cells) + " |")
    exact = sum(1 for x in rs if x["peak_trace"] == x["peak_estimate"] and x["rounded_trace"] == x["rounded_estimate"])
    static = sum(1 for x in rs if x["static_ok"])
    lines += [
        "",
        f"Peaks equal to the byte: {exact} of {len(rs)} points; weights, adapters and optimizer states "
        f"equal: {static} of {len(rs)}.",
        "",
        "A QLoRA forward phase above the estimate's forward candidate (checkpointed 8K) peaks inside a",
        "layer's attention: SDPA's math path on fp32 (`_scaled_dot_product_attention_math`). That",
        "moment is not a candidate (it stays below the step's peak), and under fake tensors it is",
        "also above CUDA's: aten adds the causal mask out of place for tensor subclasses",
        "(`attn.add(mask)`) and in place on CUDA (`attn.add_(mask)`), one b x h x T x T fp32 tensor more.",
        "",
        "What the trace stands in for (the same stand-ins the estimate models, each allocating what",
        "the CUDA kernel allocates): flash attention forward and backward (`mha_bwd`), bitsandbytes",
        "4-bit matmul forward and backward, CUDA's bool dropout mask, bitsandbytes 8-bit optimizer",
        "states from its own `init_state`. Real-GPU counters (allocator blocks, cuBLAS workspace,",
        "CUDA context) are not in these numbers: `scripts/gpu-validate.sh` has a training grid for",
        "a GPU.",
        "",
    ]
    lines += packed_markdown(batched)
    if liger:
        lines += liger_markdown(liger)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else HERE / "trace.jsonl"
    dst = Path(argv[2]) if len(argv) > 2 else HERE / "README.md"
    records = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    dst.write_text(markdown(records))
    print(f"wrote {dst} ({len(records)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

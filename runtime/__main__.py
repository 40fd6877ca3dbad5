"""``python -m runtime``: measure one point, sweep a grid, or validate the estimator.

    python -m runtime measure --model llama-3.2-3b --quant bf16 --context 8192 --batch 1 --device trace --json
    python -m runtime sweep --quants bf16,nf4 --contexts 1K,8K --device cpu --out sweep.jsonl
    python -m runtime validate --results sweep.jsonl --out-dir report/

Bad input (and ``--device cuda`` without CUDA) exits with code 2 and one line on stderr.
``measure`` prints a table and, as its last line, the JSON result (``--json``: only the JSON);
it exits 0 for status ok or oom and 1 for error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from estimator.report import PHASE_FIELDS
from estimator.units import one_line

from .settings import ATTNS, COMPUTE_DTYPES, DEVICES, ISOLATIONS, LOGITS, RUNTIME_QUANTS, SettingsError, make_settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        print(f"error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def _point_args(p: argparse.ArgumentParser, grid: bool) -> None:
    p.add_argument("--model", default="llama-3.2-3b", help="preset name or path to a config.json (or its folder)")
    if grid:
        p.add_argument("--quants", default="bf16", help=f"comma list of {','.join(RUNTIME_QUANTS)}")
        p.add_argument(
            "--contexts",
            default="1K,4K,8K",
            help="comma list of contexts: the window, prompt + new tokens (8192 or 8K)",
        )
        p.add_argument("--batches", default="1", help="comma list of batch sizes")
        p.add_argument("--extra", default="", help="extra CONTEXT:BATCH points for every quant, e.g. 8K:4")
    else:
        p.add_argument("--quant", default="bf16", help=f"one of {', '.join(RUNTIME_QUANTS)}")
        p.add_argument(
            "--context", default="8192", help="context: the window the KV cache holds, prompt + new tokens (8192 or 8K)"
        )
        p.add_argument("--batch", default="1", help="sequences")
    p.add_argument("--new-tokens", default="32", help="decode steps after the prefill")
    p.add_argument("--kv-dtype", default="auto", help="auto (= compute dtype); DynamicCache supports nothing else")
    p.add_argument("--attn", default="sdpa", help=f"one of {', '.join(ATTNS)}")
    p.add_argument("--logits", default="last", help=f"one of {', '.join(LOGITS)} (generate() keeps the last)")
    p.add_argument("--prefill-chunk", default=None, help="prefill in chunks of this many tokens")
    p.add_argument(
        "--bnb-compute-dtype", default="bf16", help=f"4-bit compute dtype, one of {', '.join(COMPUTE_DTYPES)}"
    )
    p.add_argument("--device", default="trace", help=f"one of {', '.join(DEVICES)}")
    p.add_argument("--weights", default="random", help="random, a local safetensors checkpoint folder, or a hub id")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m runtime", description="Measure LLM inference memory and compare with the estimator.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    m = sub.add_parser("measure", help="measure one point")
    _point_args(m, grid=False)
    m.add_argument("--json", action="store_true", help="print only the JSON result")
    for name, hlp in (
        ("sweep", "measure a grid into a JSONL file (resumable)"),
        ("validate", "compare a sweep with the estimator (runs the sweep if --quants is given)"),
    ):
        s = sub.add_parser(name, help=hlp)
        _point_args(s, grid=True)
        s.add_argument("--isolation", default="shared-process", help=f"one of {', '.join(ISOLATIONS)}")
        s.add_argument("--timeout", default=None, help="seconds per point (process isolation); finite, > 0")
        s.add_argument("--budget-s", default=None, help="stop starting points after this many seconds; finite, > 0")
        if name == "sweep":
            s.add_argument("--out", required=True, help="JSONL results file (appended; existing points are skipped)")
        else:
            s.add_argument("--results", action="append", default=[], help="JSONL results file(s) to read")
            s.add_argument("--out-dir", required=True, help="folder for validation.md and validation.json")
            s.add_argument("--quiet", action="store_true", help="do not print the table")
    _train_args(sub.add_parser("train-measure", help="measure one training step (forward, backward, optimizer)"))
    sub.add_parser("_worker", help=argparse.SUPPRESS)
    return ap


def _common(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": a.model,
        "new_tokens": a.new_tokens,
        "kv_dtype": a.kv_dtype,
        "attn": a.attn,
        "logits": a.logits,
        "prefill_chunk": a.prefill_chunk,
        "bnb_compute_dtype": a.bnb_compute_dtype,
        "device": a.device,
        "weights": a.weights,
    }


def _split(text: str, field: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise SettingsError(f"{field} must be a comma list: {text!r}")
    return items


def _check_model(model: str) -> None:
    from estimator.errors import EstimatorError
    from estimator.model import load_model

    try:
        load_model(model)
    except EstimatorError as e:
        raise SettingsError(str(e)) from None


def _check_weights(s: dict[str, Any]) -> None:
    """--weights must be a checkpoint of --model (see ``runtime.measure.check_weights``)."""
    from .measure import check_weights

    check_weights(s)


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SettingsError(
                "device: cuda requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use --device cpu or trace"
            )


def _grid(a: argparse.Namespace) -> list[dict[str, Any]]:
    from .sweep import grid

    extra = []
    for item in _split(a.extra, "extra") if a.extra else []:
        c, _, b = item.partition(":")
        if not b:
            raise SettingsError(f"extra must be CONTEXT:BATCH items like 8K:4: {item!r}")
        s = make_settings(context=c, batch=b, new_tokens=a.new_tokens)
        extra.append((s["context"], s["batch"]))
    # each context is checked together with --new-tokens (the window must hold the prompt and them)
    contexts = [make_settings(context=c, new_tokens=a.new_tokens)["context"] for c in _split(a.contexts, "contexts")]
    batches = [make_settings(batch=b)["batch"] for b in _split(a.batches, "batches")]
    return grid(_split(a.quants, "quants"), contexts, batches, extra, **_common(a))


def _table(r: dict[str, Any]) -> str:
    from estimator.units import format_bytes

    def f(x: Any) -> str:
        return "-" if x is None else format_bytes(x)

    s = r["settings"]
    out = [
        f"{s['model']} {s['quant']} context={s['context']} batch={s['batch']} attn={s['attn']} "
        f"device={s['device']} status={r['status']}" + (f" ({r['error']})" if r.get("error") else "")
    ]
    cols = PHASE_FIELDS
    out.append(f"{'phase':<8}" + "".join(f"{c.replace('_bytes', ''):>22}" for c in cols))
    for ph in ("load", "prefill", "decode"):
        out.append(f"{ph:<8}" + "".join(f"{f(r['phases'][ph].get(c)):>22}" for c in cols))
    out.append(f"{'run':<8}" + "".join(f"{f(r.get(c)):>22}" for c in cols))
    return "\n".join(out)


def _train_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``train-measure``: the estimator's ``estimate_training`` settings plus --device."""
    p.add_argument("--model", default="llama-3.2-3b", help="preset name or path to a config.json (or its folder)")
    p.add_argument("--method", default="lora", help="full, lora or qlora")
    p.add_argument("--rank", default="16", help="LoRA rank")
    p.add_argument(
        "--targets", default="all-linear", help="all-linear or a comma list of q,k,v,o,gate,up,down,lm_head,embed"
    )
    p.add_argument("--dropout", default="0", help="LoRA dropout")
    p.add_argument(
        "--quant",
        default=None,
        help="qlora: nf4, nf4-dq, fp4, fp4-dq (default nf4); lora: bf16; full: bf16, or fp32 master weights",
    )
    p.add_argument("--adapter-dtype", default="fp32", help="fp32 (PEFT's autocast_adapter_dtype) or bf16")
    p.add_argument("--optimizer", default="adamw", help="adamw, adamw-fused, sgd, sgd-momentum, adafactor, ...")
    p.add_argument("--seq-len", default="2048", help="tokens per sequence")
    p.add_argument("--micro-batch", default="1", help="sequences per micro-batch")
    p.add_argument("--grad-accum", default="1", help="micro-batches per optimizer step")
    p.add_argument("--grad-checkpointing", default="off", help="off, non-reentrant or reentrant")
    p.add_argument(
        "--mixed-precision", default="off", help="off, or bf16 (the Trainer's bf16=True: autocast around the forward)"
    )
    p.add_argument(
        "--packed", action="store_true", help="flatten the micro-batch into one row (padding-free, position_ids)"
    )
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa or flash_attention_2")
    p.add_argument(
        "--loss", default="transformers", help="transformers (ForCausalLMLoss) or liger (fused linear cross-entropy)"
    )
    p.add_argument(
        "--liger-layers", action="store_true", help="Liger's RMSNorm, SwiGLU and RoPE kernels (liger-kernel 0.8.5)"
    )
    p.add_argument("--device", default="trace", help="trace, cpu or cuda")
    p.add_argument("--out", default=None, help="append the JSON result as one line to this JSONL file")
    p.add_argument("--json", action="store_true", help="print only the JSON result")


def _train_measure(a: argparse.Namespace) -> int:
    from estimator.units import parse_context, parse_int

    from .train import train_measure, train_settings

    def num(text: str, field: str) -> int:
        try:
            return parse_context(text, field) if field == "seq_len" else parse_int(text, field)
        except ValueError as e:
            raise SettingsError(str(e)) from None

    try:
        dropout = float(a.dropout)
    except ValueError:
        raise SettingsError(f"dropout must be a number in [0, 1): {a.dropout!r}") from None
    quant = a.quant or ("nf4" if a.method == "qlora" else "bf16")
    s = train_settings(
        model=a.model,
        method=a.method,
        rank=num(a.rank, "rank"),
        targets=a.targets,
        dropout=dropout,
        quant=quant,
        adapter_dtype=a.adapter_dtype,
        optimizer=a.optimizer,
        seq_len=num(a.seq_len, "seq_len"),
        micro_batch=num(a.micro_batch, "micro_batch"),
        grad_accum=num(a.grad_accum, "grad_accum"),
        grad_checkpointing=a.grad_checkpointing,
        mixed_precision=a.mixed_precision,
        packed=a.packed,
        attn_implementation=a.attn_implementation,
        loss=a.loss,
        liger_layers=a.liger_layers,
        device=a.device,
    )
    _check_device(s["device"])
    r = train_measure(s)
    line = json.dumps(r)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    if not a.json:
        from estimator.units import format_bytes

        t = r.get("training") or {}
        print(f"{s['model']} {s['method']} seq_len={s['seq_len']} device={s['device']} status={r['status']}")
        for ph in ("forward", "backward", "optimizer"):
            v = r["phases"][ph]["peak_allocated_bytes"]
            print(f"{ph:<10}{'-' if v is None else format_bytes(v):>22}")
        if t:
            print(f"trainable params {t.get('trainable_params'):,}")
    print(line)
    return 1 if r["status"] == "error" else 0


def main(argv: list[str] | None = None) -> int:
    from .sweep import die_with_parent

    die_with_parent()  # a worker of a sweep: first thing, before any heavy import
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "_worker":
            from .sweep import worker

            return worker()
        if a.cmd == "train-measure":
            return _train_measure(a)
        if a.cmd == "measure":
            s = make_settings(quant=a.quant, context=a.context, batch=a.batch, **_common(a))
            _check_model(s["model"])
            _check_weights(s)
            _check_device(s["device"])
            from .measure import measure

            r = measure(s)
            if not a.json:
                print(_table(r))
            print(json.dumps(r))
            return 1 if r["status"] == "error" else 0
        from .sweep import check_seconds, read_results, run_sweep

        timeout, budget_s = check_seconds(a.timeout, "timeout"), check_seconds(a.budget_s, "budget_s")
        points = _grid(a)
        _check_model(points[0]["model"])
        _check_weights(points[0])  # every point of a grid has the same model and weights
        make_settings(isolation=a.isolation)
        _check_device(points[0]["device"])

        if a.cmd == "sweep":
            run_sweep(points, a.out, isolation=a.isolation, timeout=timeout, budget_s=budget_s)
            return 0
        from .validate import to_markdown, validate

        if not a.results:
            raise SettingsError("results: give --results FILE.jsonl (it is created when the sweep runs)")
        if "--quants" in (argv if argv is not None else sys.argv):
            run_sweep(points, a.results[0], isolation=a.isolation, timeout=timeout, budget_s=budget_s)
        results = [r for path in a.results for r in read_results(path)]
        if not results:
            raise SettingsError(f"results: no measurements in {', '.join(a.results)}")
        rep = validate(results, a.out_dir)
        if not a.quiet:
            print(to_markdown(rep["rows"], rep["summary"], rep["environment"]))
        return 0
    except SettingsError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

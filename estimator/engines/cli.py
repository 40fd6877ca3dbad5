"""Command-line flags of the engine models, mounted on ``python -m estimator estimate|fit``:
argument parsing and formatting only; the numbers come from the engine libraries.

``add_engine_arguments(parser)`` adds ``--engine`` and each engine's own flags (the core parser
owns ``--model``, ``--quant``, ``--kv-dtype``, ``--context``, ``--gpu``, ``--gpu-memory``);
``engine_estimate`` / ``engine_fit`` map the flags to the keywords of ``vllm.estimate_report`` /
``vllm.fit_report`` and ``llamacpp.estimate_report`` / ``llamacpp.fit_report`` and return the JSON
object to print; ``format_engine_table`` renders it in GiB. When vLLM would not start,
``EngineRefusal`` carries vLLM's own message (the CLI prints it as one line and exits 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, overload

from ..errors import EstimatorError, InvalidSpecError
from ..gpus import Gpu
from ..launch import format_launch, launch_for
from ..model import ModelSpec
from ..overhead import cuda_context_bytes, cuda_context_range_bytes
from . import ENGINES
from . import llamacpp as lc
from . import vllm as vl
from .vllm import EngineRefusal

GiB = 1 << 30
_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "ollama": "llama.cpp", "hf": "transformers"}
# One --quant vocabulary per engine (the transformers one is estimator.quant.QUANTS).
VLLM_QUANTS = vl.QUANT_CHOICES  # a --dtype, or an in-flight --quantization
LLAMACPP_QUANTS = tuple(lc.FTYPES)  # the GGUF file types (llama-quantize's names)
VLLM_KV_DTYPES = ("auto", "fp8", "bf16", "fp16")
LLAMACPP_KV_DTYPES = ("f16", "q8_0", "q4_0")


def _engine(text: str) -> str:
    t = _ALIASES.get(str(text).lower(), str(text).lower())
    if t not in ENGINES:
        raise argparse.ArgumentTypeError(f"--engine must be one of {', '.join(ENGINES)}: {text!r}")
    return t


def _int_type(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an ASCII integer in [lo, hi] (argparse's ``int`` takes "²" and "١٢")."""
    from ..units import parse_int

    def parse(text: str) -> int:
        try:
            return parse_int(text, flag, lo, hi)
        except EstimatorError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "integer"
    return parse


def _vllm_release(text: str) -> str:
    """--vllm-version: v0, v1 or a vLLM release ("0.8.5"), kept as given once it resolves."""
    try:
        vl.resolve_release(text)
    except EstimatorError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip().lower()


def _llamacpp_build(text: str) -> str:
    """--llamacpp-version: current, 2025-01, a build (b5913 / 5913) or a date, kept once it resolves."""
    try:
        lc.resolve_build(text)
    except EstimatorError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip().lower()


def _fraction(text: str) -> float:
    """--gpu-memory-utilization: a finite number in (0, 1] ("nan" and "inf" are refused)."""
    import re

    if not re.fullmatch(r"\s*(0?\.[0-9]{1,12}|1(\.0{0,12})?|0)\s*", text, re.ASCII):
        raise argparse.ArgumentTypeError(f"--gpu-memory-utilization must be a number in (0, 1]: {text!r}")
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"--gpu-memory-utilization must be a number in (0, 1]: {text!r}")
    return v


# llama.cpp refuses more sequences than LLAMA_MAX_SEQ (256 in src/llama-cparams.h since mid 2025; 64
# before): "n_seq_max must be <= 256".
LLAMA_MAX_SEQ = 256
MAX_ENGINE_TOKENS = 1 << 24  # batch budgets far beyond any engine default (vLLM: 16384; llama.cpp: 512)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine`` and the vLLM / llama.cpp flags to an ``estimate`` or ``fit`` parser, once.

    The parser owns ``--quant``, ``--kv-dtype``, ``--context``, ``--gpu`` and ``--gpu-memory``; they
    are read per engine: vLLM takes the dtypes and in-flight quantizations of ``VLLM_QUANTS`` and KV
    ``VLLM_KV_DTYPES``; llama.cpp takes the GGUF types of ``LLAMACPP_QUANTS`` and KV ``LLAMACPP_KV_DTYPES``.
    """
    parser.add_argument(
        "--engine",
        type=_engine,
        default="transformers",
        help="serving engine: transformers, vllm or llama.cpp (ollama) (default transformers)",
    )
    g = parser.add_argument_group("vLLM (--engine vllm; the context is max_model_len)")
    g.add_argument(
        "--gpu-memory-utilization",
        type=_fraction,
        default=0.9,
        help="fraction of GPU memory vLLM may use (default 0.9)",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=_int_type("--max-num-batched-tokens", 1, MAX_ENGINE_TOKENS),
        default=None,
        help="tokens per scheduler step (default: vLLM's default for the GPU and version)",
    )
    g.add_argument(
        "--max-num-seqs",
        type=_int_type("--max-num-seqs", 1, 1 << 20),
        default=None,
        help="max concurrent sequences (default: vLLM's, 1024 on H100-class GPUs with V1, else 256)",
    )
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    g.add_argument(
        "--vllm-version",
        type=_vllm_release,
        default=vl.NEWEST_RELEASE,
        metavar="RELEASE",
        help=f"vLLM release modelled (0.6.4, 0.8.5, 0.10.2, ... {vl.NEWEST_RELEASE}), or the accounting "
        f"v0 / v1 (default {vl.NEWEST_RELEASE})",
    )
    g.add_argument(
        "--tensor-parallel-size",
        type=_int_type("--tensor-parallel-size", 1, 1024),
        default=1,
        help="GPUs per tensor-parallel group (1, 2, 4, 8)",
    )
    g.add_argument(
        "--pipeline-parallel-size",
        type=_int_type("--pipeline-parallel-size", 1, 1024),
        default=1,
        help="pipeline stages (default 1)",
    )
    g.add_argument(
        "--safetensors",
        default=None,
        help="read exact weight bytes from this safetensors file, shard index or folder (header only)",
    )
    g = parser.add_argument_group("llama.cpp / Ollama (--engine llama.cpp; the context is n_ctx)")
    g.add_argument(
        "--parallel",
        type=_int_type("--parallel", 1, LLAMA_MAX_SEQ),
        default=1,
        help="parallel sequences sharing n_ctx (default 1)",
    )
    g.add_argument(
        "--ubatch",
        type=_int_type("--ubatch", 1, MAX_ENGINE_TOKENS),
        default=512,
        help="physical batch n_ubatch (default 512)",
    )
    g.add_argument("--flash-attn", action="store_true", help="flash attention on")
    g.add_argument(
        "--n-gpu-layers",
        type=_int_type("--n-gpu-layers", -1, 1 << 16),
        default=-1,
        help="layers offloaded to the GPU; -1 = all (default)",
    )
    g.add_argument("--gguf", default=None, help="read the tensor inventory from this .gguf file's header")
    g.add_argument(
        "--llamacpp-version",
        type=_llamacpp_build,
        default="current",
        metavar="BUILD",
        help="llama.cpp build (b5913 or 5913), date (2025-01) or layout: current (per-sequence KV "
        f"streams, b{lc.STREAMS_BUILD} on) or 2025-01 (unified KV)",
    )


# --- flags to library keywords -------------------------------------------------------------------


def _total(gpu: Gpu | None, gpu_memory_bytes: int | None) -> int | None:
    if gpu_memory_bytes is not None:
        return gpu_memory_bytes
    return gpu.memory_bytes if gpu is not None else None


@overload
def _context_of(args: argparse.Namespace, default: int, window: int | None = None) -> int: ...
@overload
def _context_of(args: argparse.Namespace, default: None = None, window: int | None = None) -> int | None: ...
def _context_of(args: argparse.Namespace, default: int | None = None, window: int | None = None) -> int | None:
    """--context (the window: vLLM's max_model_len, llama.cpp's n_ctx), at most ``window``."""
    from ..units import parse_context

    c = getattr(args, "context", None)
    n = parse_context(c, "--context") if c is not None else default
    if n is not None and window is not None and n > window:
        raise InvalidSpecError(
            f"--context must be at most the model's window (max_position_embeddings {window:,}): {n!r}"
        )
    return n


def _cuda_context(gpu: Gpu | None) -> int:
    """The CUDA context of the GPU's class (estimator.overhead), as the transformers estimate uses."""
    return cuda_context_bytes(gpu.cls if gpu is not None else "custom")


def _cuda_context_range(gpu: Gpu | None) -> tuple[int, int]:
    """Its range for the class (``overhead.CUDA_CONTEXT_RANGE_BYTES``)."""
    return cuda_context_range_bytes(gpu.cls if gpu is not None else "custom")


def _labels(args: argparse.Namespace, gpu: Gpu | None) -> dict[str, Any]:
    """The settings as the flags name them (the engine libraries fill in the rest)."""
    return {
        "quant": getattr(args, "quant", None),
        "kv_dtype": getattr(args, "kv_dtype", None),
        "gpu": getattr(gpu, "key", None),
    }


def _vllm_weights(args: argparse.Namespace) -> tuple[str, str | None]:
    """--quant for vLLM: a weights dtype (``--dtype``), or ``bitsandbytes`` / ``fp8``
    (``--quantization``, applied in flight to the model-dtype checkpoint)."""
    q = str(getattr(args, "quant", "auto") or "auto").lower()
    if q in vl.QUANTIZATIONS:
        return "auto", q
    if q not in vl.DTYPES:
        raise InvalidSpecError(
            f"--quant for vLLM must be one of {', '.join(VLLM_QUANTS)} (weights dtype or --quantization): {q!r}"
        )
    return q, None


def _vllm_kw(args: argparse.Namespace, spec: ModelSpec, gpu: Gpu | None) -> dict[str, Any]:
    """``estimate_vllm`` keywords from the vLLM flags (validated: one line naming the accepted values)."""
    kv = str(getattr(args, "kv_dtype", "auto") or "auto").lower()
    if kv not in ("auto",) + tuple(vl.KV_DTYPE_BYTES):  # the fp8 variants and dtype spellings are taken too
        raise InvalidSpecError(f"--kv-dtype for vLLM must be auto, fp8, bf16 or fp16: {kv!r}")
    dtype, quantization = _vllm_weights(args)
    kw = dict(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        dtype=dtype,
        quantization=quantization,
        kv_cache_dtype=kv,
        **vl.resolve_release(str(getattr(args, "vllm_version", None) or vl.NEWEST_RELEASE)).estimate_kw(),
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        enforce_eager=args.enforce_eager,
        cuda_context_bytes=_cuda_context(gpu),
        gpu_name=getattr(gpu, "name", None),
        gpu_arch=getattr(gpu, "arch", None),
    )
    path = getattr(args, "safetensors", None)
    if path:
        from .gguf_file import checkpoint_weight_bytes, read_safetensors_header

        kw["checkpoint_weights_bytes"] = checkpoint_weight_bytes(
            read_safetensors_header(path), dtype_bytes=vl._dtype_bytes(dtype, spec)
        )
    return kw


def _llamacpp_kw(args: argparse.Namespace, spec: ModelSpec, gpu: Gpu | None) -> tuple[ModelSpec, str, dict[str, Any]]:
    """(model, quant, ``estimate_llamacpp`` keywords plus ``settings``) from the llama.cpp flags; with
    ``--gguf`` the model and tensors are the file's and the quant is "gguf"."""
    quant = str(getattr(args, "quant", "q4_k_m") or "q4_k_m").lower()
    tensors = None
    path = getattr(args, "gguf", None)
    if path:
        from .gguf_file import read_gguf, spec_from_gguf

        meta, tensors = read_gguf(path)
        spec = spec_from_gguf(meta, tensors)
        quant = "gguf"
    elif quant not in LLAMACPP_QUANTS:
        raise InvalidSpecError(f"--quant for llama.cpp must be one of {', '.join(LLAMACPP_QUANTS)}: {quant!r}")
    kv = str(getattr(args, "kv_dtype", "f16") or "f16").lower()
    kv = {"auto": "f16", "fp16": "f16"}.get(kv, kv)
    if kv not in lc.KV_TYPES:  # f32 and bf16 are taken too
        raise InvalidSpecError(f"--kv-dtype for llama.cpp must be f16, q8_0 or q4_0: {kv!r}")
    given = str(getattr(args, "llamacpp_version", "current") or "current")
    layout, _ = lc.resolve_build(given)
    settings = {**_labels(args, gpu), "quant": quant, "gguf": path}
    if given.strip().lower() not in lc.VERSIONS:
        settings["llamacpp_build"] = given.strip().lower()
    kw = dict(
        n_ubatch=args.ubatch,
        parallel=args.parallel,
        flash_attn=bool(args.flash_attn),
        n_gpu_layers=args.n_gpu_layers,
        kv_dtype=kv,
        tensors=tensors,
        version=layout,
        settings=settings,
    )
    return spec, quant, kw


# --- the commands --------------------------------------------------------------------------------


def engine_estimate(
    args: argparse.Namespace, spec: ModelSpec, gpu: Gpu | None, gpu_memory_bytes: int | None
) -> dict[str, Any]:
    """The JSON object ``estimate --engine vllm|llama.cpp`` prints.

    vLLM: ``vllm.estimate_report`` at max_model_len = ``--context``; raises ``EngineRefusal``
    with vLLM's message when it would not start. llama.cpp: ``llamacpp.estimate_report`` at
    n_ctx = ``--context``.
    """
    engine = getattr(args, "engine", "transformers")
    total = _total(gpu, gpu_memory_bytes)
    if engine == "vllm":
        if total is None:
            raise InvalidSpecError("--engine vllm needs --gpu NAME or --gpu-memory SIZE: none given")
        n = _context_of(args)
        return _with_launch(
            vl.estimate_report(spec, total, _labels(args, gpu), max_model_len=n, **_vllm_kw(args, spec, gpu)).to_dict()
        )
    if engine == "llama.cpp":
        spec, quant, kw = _llamacpp_kw(args, spec, gpu)
        n_ctx = _context_of(args, 4096, spec.max_position_embeddings)
        return _with_launch(
            lc.estimate_report(
                spec,
                quant,
                n_ctx,
                gpu_memory_bytes=total,
                cuda_context_bytes=_cuda_context(gpu) if total is not None else 0,
                cuda_context_range_bytes=_cuda_context_range(gpu) if total is not None else None,
                **kw,
            ).to_dict()
        )
    raise InvalidSpecError(f"--engine {engine!r} is handled by the core estimator, not estimator.engines")


def engine_fit(
    args: argparse.Namespace, spec: ModelSpec, gpu: Gpu | None, gpu_memory_bytes: int | None
) -> dict[str, Any]:
    """``fit --engine ...``: the largest context that starts (vLLM max_model_len, ``vllm.fit_report``)
    or fits (llama.cpp n_ctx, ``llamacpp.fit_report``), with the estimate there."""
    engine = getattr(args, "engine", "transformers")
    total = _total(gpu, gpu_memory_bytes)
    if total is None:
        raise InvalidSpecError("fit needs --gpu NAME or --gpu-memory SIZE: none given")
    if engine == "vllm":
        out = vl.fit_report(spec, total, _labels(args, gpu), **_vllm_kw(args, spec, gpu))
    elif engine == "llama.cpp":
        spec, quant, kw = _llamacpp_kw(args, spec, gpu)
        out = lc.fit_report(
            spec,
            quant,
            total,
            cuda_context_bytes=_cuda_context(gpu),
            cuda_context_range_bytes=_cuda_context_range(gpu),
            **kw,
        )
    else:
        raise InvalidSpecError(f"--engine {engine!r} is handled by the core estimator, not estimator.engines")
    if "estimate" in out:
        out["estimate"] = out["estimate"].to_dict()
    return _with_launch(out)


def _with_launch(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``"launch"``: the command that starts the engine with these settings
    (``estimator.launch``), when there is an estimate."""
    launch = launch_for(d)
    if launch is not None:
        d["launch"] = launch.to_dict()
    return d


# --- formatting ----------------------------------------------------------------------------------


def _g(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def _span(result: Mapping[str, Any], key: str, fmt: str) -> str:
    """ " (range LOW-HIGH)" for a count with ``key``_low / ``key``_high that differ, else ""."""
    lo, hi = result.get(f"{key}_low"), result.get(f"{key}_high")
    if lo is None or hi is None or lo == hi:
        return ""
    return f" (range {lo:{fmt}}-{hi:{fmt}})"


def format_fit_range(certain: int, possible: int) -> str:
    """A fit answer on the estimate's range: the largest context that fits for certain and the
    largest that may fit (``fit`` for every engine prints it)."""
    sure = f"fits for certain up to {certain:,} tokens" if certain else "no context fits for certain"
    return f"on the range of device used: {sure}; may fit up to {possible:,} tokens; longer ones do not fit"


def format_engine_table(result: Mapping[str, Any]) -> str:
    """A readable table in GiB for an ``engine_estimate`` or ``engine_fit`` result."""
    lines: list[str] = []
    if "max_context" in result:
        whole = " (the whole window fits)" if result.get("whole_window_fits") else ""
        lines.append(
            f"engine {result['engine']}: largest context on {_g(result['gpu_memory_bytes'])}: "
            f"{result['max_context']:,} tokens{whole}"
        )
        certain, possible = result.get("max_context_low"), result.get("max_context_high")
        if certain is not None and possible is not None and (certain, possible) != (result["max_context"],) * 2:
            lines.append(format_fit_range(certain, possible))
        if "estimate" not in result:
            return "\n".join(lines)
        launch = result.get("launch")
        result = {**result["estimate"], "launch": launch} if launch else result["estimate"]
    eng = result.get("engine", result.get("settings", {}).get("engine"))
    s = result.get("settings", {})
    rows: list[tuple[str, Any]] = []
    if eng == "vllm":
        lines.append(
            f"vLLM {s.get('vllm_release')} ({s.get('vllm_version')} accounting), per GPU (x{result['num_gpus']} GPUs), "
            f"max_model_len {result['max_model_len']:,}, util {s.get('gpu_memory_utilization')}"
        )
        rows = [
            ("requested (total x util)", result["requested_memory_bytes"]),
            ("weights (as loaded)", result["weights_bytes"]),
            ("profile activation peak", result["activations_bytes"]),
            ("non-torch memory", result["non_torch_bytes"]),
            ("CUDA graphs", result["cuda_graph_bytes"]),
            ("KV pool", result["kv_pool_bytes"]),
            ("device used", result["device_used_bytes"]),
        ]
        tail = [
            f"KV blocks (16 tokens): {result['num_gpu_blocks']:,}{_span(result, 'num_gpu_blocks', ',')}   "
            f"KV tokens: {result['kv_cache_tokens']:,}{_span(result, 'kv_cache_tokens', ',')}",
            f"max concurrency at {result['max_model_len']:,} tokens: {result['max_concurrency']:.2f}x"
            f"{_span(result, 'max_concurrency', '.2f')}",
        ]
        ss = result.get("smallest_gpu_set")
        if ss:
            tail.append(
                f"smallest catalog GPU set for these settings: {ss['num_gpus']} x {ss['gpu']} "
                f"(TP {ss['tensor_parallel_size']}, PP {ss['pipeline_parallel_size']})"
            )
    else:
        lines.append(
            f"llama.cpp, n_ctx {s.get('context'):,}, quant {s.get('quant')}, "
            f"n_gpu_layers {result['n_gpu_layers']}, parallel {s.get('parallel')}, "
            f"flash_attn {'on' if s.get('flash_attn') else 'off'}"
        )
        rows = [
            ("GPU model buffer", result["model_buffer_bytes"]),
            ("GPU KV buffer", result["kv_buffer_bytes"]),
            ("GPU compute buffer", result["compute_buffer_bytes"]),
            ("CUDA context (assumed)", result["overhead_bytes"]),
            ("device used", result["device_used_bytes"]),
            ("host model buffer", result["host_buffer_bytes"]),
            ("host KV buffer", result["host_kv_buffer_bytes"]),
            ("host compute buffer", result["host_compute_buffer_bytes"]),
        ]
        tail = []
        if result.get("fits") is not None:
            tail.append(f"fits: {'yes' if result['fits'] else 'no'}   headroom: {_g(result['headroom_bytes'])}")
    w = max(len(r[0]) for r in rows)
    lines += [f"  {name:<{w}}  {_g(v):>12}" for name, v in rows]
    lines += tail
    if result.get("launch"):
        lines.append(format_launch(result["launch"]))
    return "\n".join(lines)


__all__ = [
    "ENGINES",
    "EngineRefusal",
    "LLAMACPP_KV_DTYPES",
    "LLAMACPP_QUANTS",
    "VLLM_KV_DTYPES",
    "VLLM_QUANTS",
    "add_engine_arguments",
    "engine_estimate",
    "engine_fit",
    "format_engine_table",
]

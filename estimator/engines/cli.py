"""Command-line hooks for the engine models, mounted on ``python -m estimator estimate|fit``.

``add_engine_arguments(parser)`` adds ``--engine`` and each engine's flags under the engine's own
names; ``engine_estimate`` / ``engine_fit`` return the JSON object to print; ``format_engine_table``
renders it in GiB. When vLLM would not start, ``EngineRefusal`` carries vLLM's own message
(the CLI prints it as one line and exits 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import EstimatorError, InvalidSpecError
from ..gpus import get_gpu
from ..model import ModelSpec
from ..overhead import cuda_context_bytes
from . import executorch as et
from . import llamacpp as lc
from . import vllm as vl

GiB = 1 << 30
ENGINES = ("transformers", "vllm", "llama.cpp")
_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "ollama": "llama.cpp", "hf": "transformers"}
VLLM_DTYPES = ("auto", "bf16", "fp16", "fp32")


class EngineRefusal(EstimatorError):
    """The engine would refuse to start; ``str(e)`` is the engine's own reason."""


def _engine(text: str) -> str:
    t = _ALIASES.get(str(text).lower(), str(text).lower())
    if t not in ENGINES:
        raise argparse.ArgumentTypeError(f"--engine must be one of {', '.join(ENGINES)}: {text!r}")
    return t


def _int_type(flag: str, lo: int, hi: int):
    """An argparse type: an ASCII integer in [lo, hi] (argparse's ``int`` takes "²" and "١٢")."""
    from ..units import parse_int

    def parse(text: str) -> int:
        try:
            return parse_int(text, flag, lo, hi)
        except EstimatorError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "integer"
    return parse


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


def _add(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    if any(f in parser._option_string_actions for f in flags):  # the core parser may own it already
        return
    parser.add_argument(*flags, **kw)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine`` and the vLLM / llama.cpp flags to an ``estimate`` or ``fit`` parser.

    ``--quant`` and ``--kv-dtype`` stay free strings owned by the core parser and are validated
    per engine: vLLM takes bf16/fp16/fp32/auto and KV auto/fp8/bf16/fp16; llama.cpp takes the GGUF
    types (q4_k_m, q8_0, ...) and KV f16/q8_0/q4_0.
    """
    _add(parser, "--engine", type=_engine, default="transformers",
         help="serving engine: transformers, vllm or llama.cpp (ollama) (default transformers)")
    g = parser.add_argument_group("vLLM (--engine vllm; the context is max_model_len)")
    _add(g, "--gpu-memory-utilization", type=_fraction, default=0.9,
         help="fraction of GPU memory vLLM may use (default 0.9)")
    _add(g, "--max-num-batched-tokens", type=_int_type("--max-num-batched-tokens", 1, MAX_ENGINE_TOKENS), default=None,
         help="tokens per scheduler step (default: vLLM's default for the GPU and version)")
    _add(g, "--max-num-seqs", type=_int_type("--max-num-seqs", 1, 1 << 20), default=None,
         help="max concurrent sequences (default: vLLM's, 1024 on H100-class GPUs with V1, else 256)")
    _add(g, "--enforce-eager", action="store_true", help="no CUDA graphs")
    _add(g, "--vllm-version", choices=("v0", "v1"), default="v1", help="engine accounting (default v1)")
    _add(g, "--tensor-parallel-size", type=_int_type("--tensor-parallel-size", 1, 1024), default=1, help="GPUs per tensor-parallel group (1, 2, 4, 8)")
    _add(g, "--pipeline-parallel-size", type=_int_type("--pipeline-parallel-size", 1, 1024), default=1, help="pipeline stages (default 1)")
    _add(g, "--safetensors", default=None,
         help="read exact weight bytes from this safetensors file, shard index or folder (header only)")
    g = parser.add_argument_group("llama.cpp / Ollama (--engine llama.cpp; the context is n_ctx)")
    _add(g, "--parallel", type=_int_type("--parallel", 1, LLAMA_MAX_SEQ), default=1, help="parallel sequences sharing n_ctx (default 1)")
    _add(g, "--ubatch", type=_int_type("--ubatch", 1, MAX_ENGINE_TOKENS), default=512, help="physical batch n_ubatch (default 512)")
    _add(g, "--flash-attn", action="store_true", help="flash attention on")
    _add(g, "--n-gpu-layers", type=_int_type("--n-gpu-layers", -1, 1 << 16), default=-1, help="layers offloaded to the GPU; -1 = all (default)")
    _add(g, "--gguf", default=None, help="read the tensor inventory from this .gguf file's header")
    _add(g, "--llamacpp-version", choices=lc.VERSIONS, default="current",
         help="llama.cpp graph/KV layout: current (per-sequence KV streams) or 2025-01 (unified KV)")


def _total(gpu: Any, gpu_memory_bytes: int | None, engine: str) -> int | None:
    if gpu_memory_bytes is not None:
        return gpu_memory_bytes
    return gpu.memory_bytes if gpu is not None else None


def _context_of(args: argparse.Namespace, default: int | None = None, window: int | None = None) -> int | None:
    """--context (the window: vLLM's max_model_len, llama.cpp's n_ctx), at most ``window``."""
    from ..units import parse_context
    c = getattr(args, "context", None)
    n = parse_context(c, "--context") if c is not None else default
    if n is not None and window is not None and n > window:
        raise InvalidSpecError(f"--context must be at most the model's window (max_position_embeddings "
                               f"{window:,}): {n!r}")
    return n


def _settings(args: argparse.Namespace, spec: ModelSpec, engine: str, gpu: Any, total: int | None, **extra: Any) -> dict:
    s = {"engine": engine, "model": spec.name, "quant": getattr(args, "quant", None),
         "kv_dtype": getattr(args, "kv_dtype", None), "gpu": getattr(gpu, "key", None),
         "gpu_memory_bytes": total}
    s.update(extra)
    return s


def _vllm_weights(args: argparse.Namespace) -> tuple[str, str | None]:
    """--quant for vLLM: a weights dtype (``--dtype``), or ``bitsandbytes`` / ``fp8``
    (``--quantization``, applied in flight to the model-dtype checkpoint)."""
    q = str(getattr(args, "quant", "auto") or "auto").lower()
    if q in vl.QUANTIZATIONS:
        return "auto", q
    if q not in VLLM_DTYPES:
        raise InvalidSpecError(f"--quant for vLLM must be one of {', '.join(VLLM_DTYPES + vl.QUANTIZATIONS)} "
                               f"(weights dtype or --quantization): {q!r}")
    return q, None


def _vllm_dtype(args: argparse.Namespace) -> str:
    return _vllm_weights(args)[0]


def _vllm(args: argparse.Namespace, spec: ModelSpec, total: int, max_model_len: int | None,
          gpu: Any = None) -> vl.VllmEstimate:
    kv = str(getattr(args, "kv_dtype", "auto") or "auto").lower()
    if kv not in ("auto",) + tuple(vl.KV_DTYPE_BYTES):
        raise InvalidSpecError(f"--kv-dtype for vLLM must be auto, fp8, bf16 or fp16: {kv!r}")
    try:
        return vl.estimate_vllm(
            spec, total, gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=max_model_len,
            max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
            dtype=_vllm_dtype(args), quantization=_vllm_weights(args)[1], kv_cache_dtype=kv,
            version=args.vllm_version,
            tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
            enforce_eager=args.enforce_eager, cuda_context_bytes=_cuda_context(args),
            checkpoint_weights_bytes=_checkpoint_bytes(args, spec),
            gpu_name=getattr(gpu, "name", None), gpu_arch=getattr(gpu, "arch", None))
    except vl.VllmStartupError as e:
        raise EngineRefusal(str(e)) from None


def _smallest_set(args: argparse.Namespace, spec: ModelSpec, max_model_len: int) -> dict | None:
    """The fewest identical catalog GPUs (then the smallest card) on which vLLM starts these settings."""
    try:
        r = vl.smallest_gpu_set(spec, max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                                max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                                dtype=_vllm_dtype(args), quantization=_vllm_weights(args)[1],
                                kv_cache_dtype=str(args.kv_dtype or "auto").lower(),
                                version=args.vllm_version, enforce_eager=args.enforce_eager)
    except EstimatorError:
        return None
    if r is None:
        return None
    return {"gpu": r["gpu"].key, "tensor_parallel_size": r["tensor_parallel_size"],
            "pipeline_parallel_size": r["pipeline_parallel_size"], "num_gpus": r["num_gpus"],
            "memory_bytes_per_gpu": r["gpu"].memory_bytes, "num_gpu_blocks": r["estimate"].num_gpu_blocks}


def _checkpoint_bytes(args: argparse.Namespace, spec: ModelSpec) -> int | None:
    path = getattr(args, "safetensors", None)
    if not path:
        return None
    from .gguf_file import checkpoint_weight_bytes, read_safetensors_header
    d = vl._dtype_bytes(_vllm_dtype(args), spec)
    return checkpoint_weight_bytes(read_safetensors_header(path), dtype_bytes=d)


def _cuda_context(args: argparse.Namespace) -> int:
    """The CUDA context of the chosen GPU's class (estimator.overhead), as the transformers estimate uses."""
    g = get_gpu(args.gpu) if getattr(args, "gpu", None) else None
    return cuda_context_bytes(g.cls if g is not None else "custom")


def vllm_result(e: vl.VllmEstimate, settings: dict) -> dict:
    """The JSON object for a vLLM estimate (core byte fields + vLLM's own fields)."""
    kv = max(e.kv_pool_bytes, 0)
    used = e.device_used_bytes
    overhead = used - e.weights_bytes - kv - e.activation_peak_bytes
    return {
        "settings": settings, "engine": "vllm",
        "weights_bytes": e.weights_bytes, "kv_cache_bytes": kv, "activations_bytes": e.activation_peak_bytes,
        "overhead_bytes": overhead, "peak_allocated_bytes": None, "peak_reserved_bytes": None,
        "device_used_bytes": used, "total_bytes": used,
        "fits": e.starts, "headroom_bytes": e.total_gpu_memory_bytes - used,
        "kv_pool_bytes": e.kv_pool_bytes, "num_gpu_blocks": e.num_gpu_blocks, "block_bytes": e.block_bytes,
        "max_concurrency": round(e.max_concurrency, 4), "kv_cache_tokens": e.kv_cache_tokens,
        "requested_memory_bytes": e.requested_memory_bytes, "non_torch_bytes": e.non_torch_bytes,
        "cuda_graph_bytes": e.cuda_graph_bytes, "cuda_context_bytes": e.cuda_context_bytes,
        "sampler_peak_bytes": e.sampler_peak_bytes, "forward_peak_bytes": e.forward_peak_bytes,
        "max_model_len": e.max_model_len, "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs, "tensor_parallel_size": e.tensor_parallel_size,
        "pipeline_parallel_size": e.pipeline_parallel_size, "num_gpus": e.tensor_parallel_size * e.pipeline_parallel_size,
        "per_gpu": True, "refusal": e.refusal,
    }


def llamacpp_result(e: lc.LlamaCppEstimate, settings: dict, total: int | None, cuda_context_bytes: int = 0) -> dict:
    """The JSON object for a llama.cpp estimate (core byte fields + llama.cpp's buffers)."""
    overhead = cuda_context_bytes if e.n_gpu_layers > 0 else 0
    used = e.device_bytes + overhead
    return {
        "settings": settings, "engine": "llama.cpp",
        "weights_bytes": e.model_buffer_bytes, "kv_cache_bytes": e.kv_buffer_bytes,
        "activations_bytes": e.compute_buffer_bytes, "overhead_bytes": overhead,
        "peak_allocated_bytes": None, "peak_reserved_bytes": None,
        "device_used_bytes": used, "total_bytes": used,
        "fits": (used <= total) if total is not None else None,
        "headroom_bytes": (total - used) if total is not None else None,
        "model_buffer_bytes": e.model_buffer_bytes, "host_buffer_bytes": e.host_buffer_bytes,
        "kv_buffer_bytes": e.kv_buffer_bytes, "host_kv_buffer_bytes": e.host_kv_buffer_bytes,
        "compute_buffer_bytes": e.compute_buffer_bytes, "host_compute_buffer_bytes": e.host_compute_buffer_bytes,
        "gguf_tensor_bytes": e.gguf_tensor_bytes, "n_gpu_layers": e.n_gpu_layers, "kv_cells": e.kv_cells,
        "host_bytes": e.host_bytes,
    }


def _llamacpp_inputs(args: argparse.Namespace, spec: ModelSpec) -> tuple[ModelSpec, str, Any, dict[str, Any]]:
    """(model, quant name, tensors or None, estimate_llamacpp keywords) from the llama.cpp flags."""
    quant = str(getattr(args, "quant", "q4_k_m") or "q4_k_m").lower()
    tensors = None
    path = getattr(args, "gguf", None)
    if path:
        from .gguf_file import read_gguf, spec_from_gguf
        meta, tensors = read_gguf(path)
        spec = spec_from_gguf(meta, tensors)
        quant = "gguf"
    elif quant not in lc.FTYPES:
        raise InvalidSpecError(f"--quant for llama.cpp must be one of {', '.join(lc.GGUF_QUANTS)}: {quant!r}")
    kv = str(getattr(args, "kv_dtype", "f16") or "f16").lower()
    kv = {"auto": "f16", "fp16": "f16"}.get(kv, kv)
    if kv not in ("f16", "q8_0", "q4_0", "f32", "bf16"):
        raise InvalidSpecError(f"--kv-dtype for llama.cpp must be f16, q8_0 or q4_0: {kv!r}")
    kw = dict(n_ubatch=args.ubatch, parallel=args.parallel, flash_attn=bool(args.flash_attn),
              n_gpu_layers=args.n_gpu_layers, kv_dtype=kv, tensors=tensors,
              version=getattr(args, "llamacpp_version", "current") or "current")
    return spec, quant, tensors, kw


def _llamacpp(args: argparse.Namespace, spec: ModelSpec, n_ctx: int, gpu_present: bool) -> tuple[lc.LlamaCppEstimate, ModelSpec, str]:
    spec, quant, tensors, kw = _llamacpp_inputs(args, spec)
    e = lc.estimate_llamacpp(spec, quant if tensors is None else "q4_k_m", n_ctx, gpu=gpu_present, **kw)
    if tensors is not None:
        import dataclasses
        e = dataclasses.replace(e, quant="gguf")
    return e, spec, quant


def engine_estimate(args: argparse.Namespace, spec: ModelSpec, gpu: Any, gpu_memory_bytes: int | None) -> dict:
    """The JSON object ``estimate --engine vllm|llama.cpp`` prints.

    vLLM: per-GPU startup accounting at max_model_len = ``--context``; raises ``EngineRefusal``
    with vLLM's message when it would not start. llama.cpp: buffers at n_ctx = ``--context``.
    """
    engine = getattr(args, "engine", "transformers")
    total = _total(gpu, gpu_memory_bytes, engine)
    if engine == "vllm":
        if total is None:
            raise InvalidSpecError("--engine vllm needs --gpu NAME or --gpu-memory SIZE: none given")
        e = _vllm(args, spec, total, _context_of(args), gpu)
        settings = _settings(args, spec, engine, gpu, total, context=e.max_model_len,
                             gpu_memory_utilization=args.gpu_memory_utilization,
                             max_num_batched_tokens=e.max_num_batched_tokens, max_num_seqs=e.max_num_seqs,
                             enforce_eager=args.enforce_eager, vllm_version=args.vllm_version,
                             tensor_parallel_size=args.tensor_parallel_size,
                             pipeline_parallel_size=args.pipeline_parallel_size)
        if not e.starts:
            raise EngineRefusal(e.refusal)
        out = vllm_result(e, settings)
        out["smallest_gpu_set"] = _smallest_set(args, spec, e.max_model_len)
        return out
    if engine == "llama.cpp":
        spec2 = _llamacpp_inputs(args, spec)[0]
        n_ctx = _context_of(args, 4096, spec2.max_position_embeddings)
        e, spec2, quant = _llamacpp(args, spec, n_ctx, True)
        settings = _settings(args, spec2, engine, gpu, total, context=n_ctx, quant=quant,
                             parallel=args.parallel, ubatch=args.ubatch, flash_attn=bool(args.flash_attn),
                             n_gpu_layers=args.n_gpu_layers, gguf=getattr(args, "gguf", None),
                             llamacpp_version=getattr(args, "llamacpp_version", "current"))
        return llamacpp_result(e, settings, total, _cuda_context(args) if total is not None else 0)
    raise InvalidSpecError(f"--engine {engine!r} is handled by the core estimator, not estimator.engines")


def engine_fit(args: argparse.Namespace, spec: ModelSpec, gpu: Any, gpu_memory_bytes: int | None) -> dict:
    """``fit --engine ...``: the largest context that starts (vLLM max_model_len) or fits (llama.cpp n_ctx)."""
    engine = getattr(args, "engine", "transformers")
    total = _total(gpu, gpu_memory_bytes, engine)
    if total is None:
        raise InvalidSpecError("fit needs --gpu NAME or --gpu-memory SIZE: none given")
    if engine == "vllm":
        kw = dict(gpu_memory_utilization=args.gpu_memory_utilization,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                  dtype=_vllm_dtype(args), quantization=_vllm_weights(args)[1],
                  kv_cache_dtype=str(args.kv_dtype or "auto").lower(),
                  version=args.vllm_version, tensor_parallel_size=args.tensor_parallel_size,
                  pipeline_parallel_size=args.pipeline_parallel_size, enforce_eager=args.enforce_eager,
                  gpu_name=getattr(gpu, "name", None), gpu_arch=getattr(gpu, "arch", None))
        try:
            t = vl.max_model_len_vllm(spec, total, **kw)
        except vl.VllmStartupError as e:
            raise EngineRefusal(str(e)) from None
        out: dict[str, Any] = {"engine": "vllm", "max_context": t, "gpu_memory_bytes": total,
                               "max_position_embeddings": spec.max_position_embeddings,
                               "whole_window_fits": t == spec.max_position_embeddings}
        if t == 0:
            e = vl.estimate_vllm(spec, total, max_model_len=16, **kw)
            raise EngineRefusal(e.refusal or "vLLM does not start at any max_model_len on this GPU")
        args2 = argparse.Namespace(**vars(args))
        args2.context = str(t)
        out["estimate"] = engine_estimate(args2, spec, gpu, gpu_memory_bytes)
        return out
    if engine == "llama.cpp":
        ctx_overhead = _cuda_context(args)
        spec2, quant, tensors, kw = _llamacpp_inputs(args, spec)
        t = lc.max_context_llamacpp(spec2, quant if tensors is None else "q4_k_m", total, margin_bytes=ctx_overhead,
                                    cap=spec2.max_position_embeddings, **kw)
        out = {"engine": "llama.cpp", "max_context": t, "gpu_memory_bytes": total,
               "max_position_embeddings": spec2.max_position_embeddings, "cuda_context_bytes": ctx_overhead,
               "whole_window_fits": t == spec2.max_position_embeddings}
        if t:
            a = argparse.Namespace(**vars(args))
            a.context = str(t)
            out["estimate"] = engine_estimate(a, spec, gpu, gpu_memory_bytes)
        return out
    raise InvalidSpecError(f"--engine {engine!r} is handled by the core estimator, not estimator.engines")


def _g(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def format_engine_table(result: dict) -> str:
    """A readable table in GiB for an ``engine_estimate`` or ``engine_fit`` result."""
    lines: list[str] = []
    if "max_context" in result:
        whole = " (the whole window fits)" if result.get("whole_window_fits") else ""
        lines.append(f"engine {result['engine']}: largest context on {_g(result['gpu_memory_bytes'])}: "
                     f"{result['max_context']:,} tokens{whole}")
        if "estimate" not in result:
            return "\n".join(lines)
        result = result["estimate"]
    eng = result.get("engine", result.get("settings", {}).get("engine"))
    s = result.get("settings", {})
    rows: list[tuple[str, Any]] = []
    if eng == "vllm":
        lines.append(f"vLLM {s.get('vllm_version')} accounting, per GPU (x{result['num_gpus']} GPUs), "
                     f"max_model_len {result['max_model_len']:,}, util {s.get('gpu_memory_utilization')}")
        rows = [("requested (total x util)", result["requested_memory_bytes"]),
                ("weights (as loaded)", result["weights_bytes"]),
                ("profile activation peak", result["activations_bytes"]),
                ("non-torch memory", result["non_torch_bytes"]),
                ("CUDA graphs", result["cuda_graph_bytes"]),
                ("KV pool", result["kv_pool_bytes"]),
                ("device used", result["device_used_bytes"])]
        tail = [f"KV blocks (16 tokens): {result['num_gpu_blocks']:,}   "
                f"KV tokens: {result['kv_cache_tokens']:,}   "
                f"max concurrency at {result['max_model_len']:,} tokens: {result['max_concurrency']:.2f}x"]
        ss = result.get("smallest_gpu_set")
        if ss:
            tail.append(f"smallest catalog GPU set for these settings: {ss['num_gpus']} x {ss['gpu']} "
                        f"(TP {ss['tensor_parallel_size']}, PP {ss['pipeline_parallel_size']})")
    else:
        lines.append(f"llama.cpp, n_ctx {s.get('context'):,}, quant {s.get('quant')}, "
                     f"n_gpu_layers {result['n_gpu_layers']}, parallel {s.get('parallel')}, "
                     f"flash_attn {'on' if s.get('flash_attn') else 'off'}")
        rows = [("GPU model buffer", result["model_buffer_bytes"]),
                ("GPU KV buffer", result["kv_buffer_bytes"]),
                ("GPU compute buffer", result["compute_buffer_bytes"]),
                ("CUDA context (assumed)", result["overhead_bytes"]),
                ("device used", result["device_used_bytes"]),
                ("host model buffer", result["host_buffer_bytes"]),
                ("host KV buffer", result["host_kv_buffer_bytes"]),
                ("host compute buffer", result["host_compute_buffer_bytes"])]
        tail = []
        if result.get("fits") is not None:
            tail.append(f"fits: {'yes' if result['fits'] else 'no'}   headroom: {_g(result['headroom_bytes'])}")
    w = max(len(r[0]) for r in rows)
    lines += [f"  {name:<{w}}  {_g(v):>12}" for name, v in rows]
    lines += tail
    return "\n".join(lines)


__all__ = ["ENGINES", "EngineRefusal", "add_engine_arguments", "engine_estimate", "engine_fit",
           "format_engine_table", "et"]

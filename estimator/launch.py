"""The flags to launch with: the command that realises a setting the estimator answered.

One function per engine, each taking what the estimator already has:

- ``vllm_launch(report)``: ``vllm serve MODEL ...`` from a vLLM report (``vllm.estimate_report`` /
  ``vllm.fit_report``'s estimate, a ``MemoryReport`` or its ``to_dict()``), with the
  ``--kv-cache-memory-bytes`` form (the KV pool the estimate found, in bytes) as an alternative.
- ``llamacpp_launch(report)``: ``llama-server -m MODEL.gguf ...`` from a llama.cpp report, with the
  Ollama equivalent (``ollama_launch``) as an alternative.
- ``transformers_launch(settings)``: the Python of ``from_pretrained(...)`` and ``generate(...)`` for
  a transformers ``Settings``.
- ``launch_for(result)``: the launch of a CLI result (an estimate's or a fit's ``to_dict()`` of any
  engine), for ``python -m estimator``; ``format_launch`` renders one as text lines.

A ``Launch`` is a frozen dataclass: ``command`` is copy-pasteable (shell words quoted with
``shlex.quote``; Python source for transformers), ``args`` the argv (program first, the environment
not included) or, for transformers, the keyword arguments as Python source, ``env`` the environment
the command sets, ``notes`` what a flag cannot say, ``options`` engine-specific values as JSON
(Ollama's per-request options, transformers' keyword arguments, vLLM's KV bytes) and
``alternatives`` other launches of the same setting.

Where each flag was checked (engine sources, with the release):

- vLLM: ``vllm/engine/arg_utils.py`` adds ``--kv-cache-memory-bytes`` from
  ``CacheConfig.kv_cache_memory_bytes`` (``vllm/config/cache.py``: "Size of KV Cache per GPU in bytes
  ... when not-None ignores gpu_memory_utilization"); the flag is spelled ``--kv-cache-memory-bytes``,
  not ``--kv-cache-memory``. It came with vLLM PR #21489 ("Allow users to specify kv cache memory
  size", mid 2025); the first release that has it could not be confirmed here (0.10.x or 0.11):
  ``vllm serve --help | grep kv-cache-memory-bytes`` tells.
- llama.cpp: ``common/arg.cpp`` (upstream, late 2025): ``-c``, ``-np``, ``-ub``, ``-b``, ``-ngl N``,
  ``-ctk`` / ``-ctv TYPE``, ``-fa [on|off|auto]`` (default auto; older builds took a bare ``-fa``),
  ``-kvu`` / ``--kv-unified``; ``tools/server/server.cpp`` (late 2025; llama.cpp PR #16736) turns
  ``-np 1`` into 4 slots over a unified KV cache unless ``-kvu`` is given.
- Ollama: v0.33.0-rc2 ``llm/llama_server.go`` starts llama-server with ``-c num_ctx x NumParallel
  -np NumParallel`` (the KV cache holds num_ctx per parallel request; the same product as
  ``server/sched.go`` since v0.1.33 and ``llm/server.go`` KvSize in v0.12-v0.13),
  ``--cache-type-k/-v OLLAMA_KV_CACHE_TYPE``, ``--flash-attn on|off`` from OLLAMA_FLASH_ATTENTION
  (auto when unset), ``-b``/``-ub num_batch``, ``-ngl num_gpu``; ``envconfig/config.go``:
  OLLAMA_CONTEXT_LENGTH (the default num_ctx, since v0.5.13), OLLAMA_NUM_PARALLEL.
- transformers 5.24 (installed with the runtime extra): ``from_pretrained(dtype=...,
  attn_implementation=..., quantization_config=BitsAndBytesConfig(...))``; ``GenerationConfig``:
  ``cache_implementation`` ("static", "quantized"), ``cache_config``, ``max_cache_len``,
  ``prefill_chunk_size`` (chunked prefill in ``generate``, ``generation/utils.py`` ``_prefill``);
  ``cache_utils.QuantizedCache``: backend "quanto" takes nbits 2 or 4 only, "hqq" 1, 2, 3, 4 or 8,
  "fp8" a per-tensor scale and no residual window.

Standard library only.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidSpecError
from .kv import resolve_kv_dtype
from .quant import compute_dtype, get_quant

if TYPE_CHECKING:
    from .estimate import Settings
    from .report import MemoryReport

# The Hugging Face checkpoints whose config.json the presets ship (base models: eos_token_id 128001).
HF_MODELS = {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
}
PLACEHOLDER = "MODEL"  # a model without a known checkpoint name
TORCH_DTYPES = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}
VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
VLLM_KV_DTYPES = {
    "fp8": "fp8",
    "fp8_e4m3": "fp8_e4m3",
    "fp8_e5m2": "fp8_e5m2",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
LLAMACPP_DEFAULT_UBATCH = 512  # common.h n_ubatch
LLAMACPP_DEFAULT_BATCH = 2048  # common.h n_batch; llama.cpp uses min(n_batch, n_ubatch) as the ubatch


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start an engine with the settings of one estimate (see the module docstring)."""

    engine: str  # "vllm", "llama.cpp", "ollama" or "transformers"
    command: str  # copy-pasteable: a shell line, or Python source (language "python")
    args: tuple[str, ...]  # argv (program first, no env); transformers: keyword arguments as source
    env: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    language: str = "bash"  # "bash" or "python": how to show ``command``
    options: dict[str, Any] = field(default_factory=dict)
    alternatives: tuple[Launch, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every field; ``alternatives`` as a list of their ``to_dict()``."""
        return {
            "engine": self.engine,
            "language": self.language,
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "notes": list(self.notes),
            "options": dict(self.options),
            "alternatives": [a.to_dict() for a in self.alternatives],
        }


def shell_command(args: tuple[str, ...], env: Mapping[str, str] | None = None) -> str:
    """``K=V ... prog arg ...`` with every word quoted for a POSIX shell: ``shlex.split`` gives back
    ``[f"{k}={v}" for k, v in env] + list(args)``."""
    words = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()] + [shlex.quote(a) for a in args]
    return " ".join(words)


def _shell(
    engine: str,
    args: list[str],
    env: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
    options: Mapping[str, Any] | None = None,
    alternatives: tuple[Launch, ...] = (),
) -> Launch:
    return Launch(
        engine=engine,
        command=shell_command(tuple(args), env),
        args=tuple(args),
        env=dict(env or {}),
        notes=tuple(notes or ()),
        options=dict(options or {}),
        alternatives=alternatives,
    )


def model_id(name: str | None) -> str:
    """The checkpoint to launch: the Hugging Face id of a preset, else the name as given (a custom
    config's folder name), or ``MODEL`` when there is none."""
    if not name or name == "custom":
        return PLACEHOLDER
    return HF_MODELS.get(name, name)


def _parts(report: MemoryReport | Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(settings, details) of a report or of its ``to_dict()``."""
    if isinstance(report, Mapping):
        s = report.get("settings")
        return (s if isinstance(s, Mapping) else {}), report
    s = report.settings
    settings = s.to_dict() if hasattr(s, "to_dict") else dict(s)
    return settings, report.details


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidSpecError(f"{what} must be an integer: {v!r}")
    return v


# --- vLLM ----------------------------------------------------------------------------------------


def vllm_launch(report: MemoryReport | Mapping[str, Any], *, model: str | None = None) -> Launch:
    """``vllm serve MODEL`` with the settings the vLLM estimate used, its defaults resolved.

    ``--max-model-len`` (the context), ``--gpu-memory-utilization`` (the value the estimate used),
    ``--max-num-seqs`` and ``--max-num-batched-tokens`` (the resolved values: vLLM's defaults depend
    on the release and the GPU), ``--dtype``, ``--quantization`` (bitsandbytes / fp8), ``--kv-cache-dtype``
    when not auto, ``--tensor-parallel-size`` / ``--pipeline-parallel-size`` when > 1,
    ``--enforce-eager``; the V0 accounting adds ``VLLM_USE_V1=0``. With a KV pool in the report, the
    alternative adds ``--kv-cache-memory-bytes`` = KV blocks x block bytes (per GPU: the pool the
    estimate found, rounded down to whole blocks, so vLLM allocates the same number of blocks).
    ``model``: the checkpoint (default: the preset's Hugging Face id)."""
    s, d = _parts(report)
    n = _int(d.get("max_model_len", s.get("context")), "max_model_len")
    util = s.get("gpu_memory_utilization", 0.9)
    args = [
        "vllm",
        "serve",
        model or model_id(s.get("model")),
        "--max-model-len",
        str(n),
        "--gpu-memory-utilization",
        str(util),
    ]
    notes: list[str] = []
    seqs, batched = (
        d.get("max_num_seqs", s.get("max_num_seqs")),
        d.get("max_num_batched_tokens", s.get("max_num_batched_tokens")),
    )
    if seqs is not None:
        args += ["--max-num-seqs", str(_int(seqs, "max_num_seqs"))]
    if batched is not None:
        args += ["--max-num-batched-tokens", str(_int(batched, "max_num_batched_tokens"))]
    tp = _int(d.get("tensor_parallel_size", s.get("tensor_parallel_size", 1)), "tensor_parallel_size")
    pp = _int(d.get("pipeline_parallel_size", s.get("pipeline_parallel_size", 1)), "pipeline_parallel_size")
    if tp > 1:
        args += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        args += ["--pipeline-parallel-size", str(pp)]
    quant = str(s.get("quant") or "auto").lower()
    if quant in ("bitsandbytes", "fp8"):
        args += ["--dtype", "auto", "--quantization", quant]
    elif quant in VLLM_DTYPES:
        args += ["--dtype", VLLM_DTYPES[quant]]
    else:
        raise InvalidSpecError(
            f"quant for vLLM must be one of {', '.join(VLLM_DTYPES)}, bitsandbytes or fp8: {quant!r}"
        )
    kv = str(s.get("kv_dtype") or "auto").lower()
    if kv in VLLM_KV_DTYPES:
        args += ["--kv-cache-dtype", VLLM_KV_DTYPES[kv]]
        if VLLM_KV_DTYPES[kv] in ("bfloat16", "float16"):
            notes.append(
                "--kv-cache-dtype bfloat16/float16 is taken by recent vLLM (CacheDType in "
                "vllm/config/cache.py); older releases take auto or fp8 only: there, auto (the model "
                "dtype) is the same cache."
            )
    elif kv not in ("auto", "fp32", "float32"):
        raise InvalidSpecError(f"kv_dtype for vLLM must be auto, fp8, bf16 or fp16: {kv!r}")
    elif kv != "auto":
        notes.append("vLLM has no float32 KV cache dtype: the cache follows --dtype.")
    if s.get("enforce_eager"):
        args.append("--enforce-eager")
    env: dict[str, str] = {}
    version = str(s.get("vllm_version") or "v1")
    if version != "v1":
        from .engines.vllm_releases import parse_release

        rel = parse_release(str(s["vllm_release"])) if s.get("vllm_release") else None
        if rel is None or rel >= (0, 8, 0):  # V1 is the default engine from 0.8.0 (vllm_releases)
            env["VLLM_USE_V1"] = "0"
        notes.append(
            "V0 engine: the default before vLLM 0.8.0, VLLM_USE_V1=0 from 0.8 to 0.10, removed in 0.11.0 "
            "(estimator.engines.vllm_releases)."
        )
    alternatives: tuple[Launch, ...] = ()
    blocks, block_bytes = d.get("num_gpu_blocks"), d.get("block_bytes")
    options: dict[str, Any] = {}
    if isinstance(blocks, int) and isinstance(block_bytes, int) and blocks > 0 and block_bytes > 0:
        kv_bytes = blocks * block_bytes
        options["kv_cache_memory_bytes"] = kv_bytes
        if version == "v1":
            alternatives = (
                _shell(
                    "vllm",
                    args + ["--kv-cache-memory-bytes", str(kv_bytes)],
                    env,
                    notes=[
                        f"--kv-cache-memory-bytes: the KV pool in bytes ({blocks:,} blocks x {block_bytes:,} B per "
                        "GPU), set directly instead of sized from --gpu-memory-utilization and the profile run "
                        "(vLLM PR #21489, mid 2025; the first release with it is not confirmed here: "
                        "vllm serve --help | grep kv-cache-memory-bytes)."
                    ],
                    options=options,
                ),
            )
    return _shell("vllm", args, env, notes, options, alternatives)


# --- llama.cpp and Ollama ------------------------------------------------------------------------


def _gguf_name(s: Mapping[str, Any]) -> str:
    path = s.get("gguf")
    if path:
        return str(path)
    base = model_id(s.get("model")).rsplit("/", 1)[-1]
    return f"{base}-{str(s.get('quant') or 'q4_k_m').upper()}.gguf"


def _llamacpp_settings(report: MemoryReport | Mapping[str, Any]) -> dict[str, Any]:
    """The llama.cpp settings of a report, normalised: n_ctx, parallel, ubatch, flash_attn, KV type,
    layers on the GPU (the count llama.cpp logs: all = n_layer + 1, with the output layer)."""
    s, d = _parts(report)
    kv = str(s.get("kv_dtype") or "f16").lower()
    kv = {"auto": "f16", "fp16": "f16", "fp32": "f32", "bf16": "bf16"}.get(kv, kv)
    ngl = _int(s.get("n_gpu_layers", -1), "n_gpu_layers")
    resolved = d.get("n_gpu_layers")
    # -ngl takes a count. llama.cpp offloads the repeating layers n_layer - ngl .. n_layer - 1 and the
    # output layer when ngl > n_layer (src/llama-model.cpp load_tensors), so "all" is n_layer + 1: the
    # count the estimate resolved and llama.cpp logs ("offloaded 29/29 layers to GPU"). That exact count
    # is printed rather than 99 (the same for models under 99 layers, too few above) or -1 (whose
    # meaning, default or auto-fit, varies between llama-server builds).
    if isinstance(resolved, int) and not isinstance(resolved, bool) and resolved >= 0:
        ngl = resolved
    return {
        "n_ctx": _int(s.get("context"), "context"),
        "parallel": _int(s.get("parallel", 1), "parallel"),
        "ubatch": _int(s.get("ubatch", LLAMACPP_DEFAULT_UBATCH), "ubatch"),
        "flash_attn": bool(s.get("flash_attn", False)),
        "kv": kv,
        "ngl": ngl,
        "version": str(s.get("llamacpp_version") or "current"),
        "gguf": _gguf_name(s),
    }


def llamacpp_launch(report: MemoryReport | Mapping[str, Any], *, model: str | None = None) -> Launch:
    """``llama-server -m MODEL.gguf`` with n_ctx (``-c``), the parallel sequences (``-np``, always
    given), the layers on the GPU (``-ngl``), flash attention, ``-ub`` when not 512 and
    ``-ctk``/``-ctv`` for a quantized KV cache; the Ollama equivalent (``ollama_launch``) is the
    alternative. ``model``: the .gguf path (default: the ``--gguf`` file, else a name from the
    model and the GGUF type)."""
    c = _llamacpp_settings(report)
    current = c["version"] != "2025-01"
    args = [
        "llama-server",
        "-m",
        model or c["gguf"],
        "-c",
        str(c["n_ctx"]),
        "-np",
        str(c["parallel"]),
        "-ngl",
        str(c["ngl"]),
    ]
    notes: list[str] = []
    if current and c["parallel"] == 1:
        # llama-server (tools/server/server.cpp since late 2025, the change discussed in llama.cpp PR #16736)
        # turns -np 1 into 4 slots over a unified KV cache unless -kvu is given; with one sequence a
        # unified cache is the same cache.
        args.append("-kvu")
    if c["ubatch"] != LLAMACPP_DEFAULT_UBATCH:
        if c["ubatch"] > LLAMACPP_DEFAULT_BATCH:  # the ubatch is min(n_batch, n_ubatch)
            args += ["-b", str(c["ubatch"])]
        args += ["-ub", str(c["ubatch"])]
    if current:
        args += ["-fa", "on" if c["flash_attn"] else "off"]  # -fa takes on|off|auto; auto is the default
    elif c["flash_attn"]:
        args.append("-fa")  # early-2025 builds: a bare switch
    if c["kv"] != "f16":
        args += ["-ctk", c["kv"], "-ctv", c["kv"]]
    if current:
        notes.append(
            "-fa on|off: llama.cpp since late summer 2025 (its default is auto); older builds take a bare -fa for on."
        )
    if c["parallel"] > 1:
        notes.append(f"-c is shared: each of the {c['parallel']} slots holds {c['n_ctx'] // c['parallel']:,} tokens.")
    return _shell("llama.cpp", args, notes=notes, alternatives=(ollama_launch(report),))


def ollama_launch(report: MemoryReport | Mapping[str, Any], *, model: str | None = None) -> Launch:
    """``ollama serve`` with the environment that gives the llama.cpp setting: OLLAMA_CONTEXT_LENGTH
    (num_ctx per request = n_ctx / parallel: Ollama allocates num_ctx x OLLAMA_NUM_PARALLEL),
    OLLAMA_NUM_PARALLEL, OLLAMA_FLASH_ATTENTION (1 or 0: unset is auto in recent Ollama),
    OLLAMA_KV_CACHE_TYPE for a quantized KV cache. ``options`` holds the per-request equivalents
    (``num_ctx``; ``num_gpu`` for the layers on the GPU, ``num_batch`` when not 512, which have no
    server-wide variable). ``model``: the model name in the request example."""
    c = _llamacpp_settings(report)
    num_ctx = max(1, c["n_ctx"] // c["parallel"])  # OLLAMA_CONTEXT_LENGTH=0 would mean "the default"
    env = {
        "OLLAMA_CONTEXT_LENGTH": str(num_ctx),
        "OLLAMA_NUM_PARALLEL": str(c["parallel"]),
        "OLLAMA_FLASH_ATTENTION": "1" if c["flash_attn"] else "0",
    }
    if c["kv"] != "f16":
        env["OLLAMA_KV_CACHE_TYPE"] = c["kv"]
    options: dict[str, Any] = {"num_ctx": num_ctx, "num_gpu": c["ngl"]}
    if c["ubatch"] != LLAMACPP_DEFAULT_UBATCH:
        options["num_batch"] = c["ubatch"]
    notes = [
        f"Ollama's num_ctx is per request: it starts llama-server with -c num_ctx x OLLAMA_NUM_PARALLEL "
        f"= {num_ctx * c['parallel']:,} (llm/llama_server.go, v0.33). A request's "
        f'"options": {_json_object(options)} sets the same per model (num_gpu: layers on the GPU; '
        f"or PARAMETER lines in a Modelfile)."
    ]
    if num_ctx * c["parallel"] != c["n_ctx"]:
        notes.append(
            f"n_ctx {c['n_ctx']:,} is not a multiple of {c['parallel']} parallel sequences: Ollama "
            f"gets {num_ctx * c['parallel']:,}."
        )
    if model:
        notes.append(f"Model: {model}.")
    return _shell("ollama", ["ollama", "serve"], env, notes, options)


def _json_object(d: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f'"{k}": {v}' for k, v in d.items()) + "}"


# --- transformers --------------------------------------------------------------------------------


def _py(v: Any) -> str:
    """Python source of a JSON-like value, strings in double quotes."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_py(k)}: {_py(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _bnb_config(quant: str, bnb_compute: str) -> tuple[list[str], dict[str, Any]]:
    """BitsAndBytesConfig's keyword arguments as source and as JSON (runtime/load.py builds the same)."""
    if quant == "int8":
        return ["load_in_8bit=True"], {"load_in_8bit": True}
    kw: dict[str, Any] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant.split("-")[0],
        "bnb_4bit_use_double_quant": quant.endswith("-dq"),
        "bnb_4bit_compute_dtype": TORCH_DTYPES[bnb_compute],
    }
    return [f"{k}={v if k == 'bnb_4bit_compute_dtype' else _py(v)}" for k, v in kw.items()], kw


def transformers_launch(settings: Settings, *, model: str | None = None) -> Launch:
    """The Python that loads and runs ``settings`` with transformers: ``from_pretrained(dtype=...,
    attn_implementation=..., quantization_config=BitsAndBytesConfig(...), device_map="cuda")`` and
    ``generate(input_ids, max_new_tokens=..., ...)`` with the cache (``cache_implementation``
    "quantized" with ``cache_config`` for an int4 / int8 / fp8 KV cache, "static" for a static one),
    ``max_cache_len`` and ``prefill_chunk_size`` (chunked prefill) when set. ``args``: every keyword
    argument as source; ``options``: {"from_pretrained": ..., "generate": ...} as JSON."""
    s = settings
    quant = get_quant(s.quant)
    cdtype = compute_dtype(s.quant)
    name = model or model_id(s.model.name)
    notes: list[str] = []
    if quant.family == "executorch":
        text = (
            "# et-4bit is an ExecuTorch export (estimator.engines.executorch), not a transformers load:\n"
            "# see the Llama 3.2 ExecuTorch release variants."
        )
        return Launch(
            engine="transformers",
            command=text,
            args=(),
            language="python",
            notes=("No transformers launch: et-4bit runs in ExecuTorch.",),
        )
    load: list[tuple[str, str, Any]] = [
        ("dtype", TORCH_DTYPES[cdtype], cdtype),
        ("attn_implementation", _py(s.attn), s.attn),
    ]
    imports = ["AutoModelForCausalLM"]
    bnb: list[str] = []
    if quant.family == "bnb":
        bnb, kw = _bnb_config(s.quant, s.bnb_compute_dtype)
        load.append(("quantization_config", f"BitsAndBytesConfig({', '.join(bnb)})", {"BitsAndBytesConfig": kw}))
        imports.append("BitsAndBytesConfig")
    load.append(("device_map", _py("cuda"), "cuda"))
    model_line = f"    {_py(name)},"
    if quant.family in ("fp8", "gptq", "awq"):
        what = {"fp8": "a per-tensor FP8 (e4m3)", "gptq": "a GPTQ int4 (group 128)", "awq": "an AWQ int4 (group 128)"}[
            quant.family
        ]
        model_line += f"  # replace with {what} checkpoint of this model"
        notes.append(
            f"{quant.label}: load a pre-quantized checkpoint; its config.json carries the "
            "quantization_config, so from_pretrained takes none."
        )

    gen: list[tuple[str, str, Any]] = [("max_new_tokens", str(s.new_tokens), s.new_tokens)]
    kv = resolve_kv_dtype(s.kv_dtype, 4 if cdtype == "fp32" else 2)
    cache = s.cache
    if kv in ("int4", "int8", "fp8"):
        # QuantizedCache backends (transformers 5.24 cache_utils): quanto takes nbits 2 or 4 only, so
        # int8 goes through hqq; fp8 is per tensor with no residual window.
        cfg: dict[str, Any] = (
            {"backend": "fp8"}
            if kv == "fp8"
            else {"backend": "quanto", "nbits": 4}
            if kv == "int4"
            else {"backend": "hqq", "nbits": 8}
        )
        gen += [("cache_implementation", _py("quantized"), "quantized"), ("cache_config", _py(cfg), cfg)]
        notes.append(
            {
                "int4": "int4 KV cache: QuantizedCache with optimum-quanto (pip install optimum-quanto).",
                "int8": "int8 KV cache: QuantizedCache with HQQ (pip install hqq); quanto takes 2 or 4 bits.",
                "fp8": "fp8 KV cache: QuantizedCache's fp8 backend (transformers 5.24; a per-tensor scale).",
            }[kv]
        )
        if cache == "static":
            notes.append("transformers has no static quantized cache: the quantized cache is dynamic.")
    elif kv != cdtype:
        notes.append(
            f"KV cache {kv}: generate() has no argument for it; transformers' cache takes the model's dtype ({cdtype})."
        )
    if cache == "static" and kv not in ("int4", "int8", "fp8"):
        gen.append(("cache_implementation", _py("static"), "static"))
        if s.max_cache_len is not None:
            gen.append(("max_cache_len", str(s.max_cache_len), s.max_cache_len))
    if s.prefill_chunk is not None:
        gen.append(("prefill_chunk_size", str(s.prefill_chunk), s.prefill_chunk))
        notes.append(
            "prefill_chunk_size: GenerationConfig's chunked prefill (transformers 5.24 "
            "generation/utils.py _prefill); an older transformers without it needs a loop feeding "
            "the prompt in chunks into one cache, then generate() on the rest."
        )
    if s.padding:
        gen.append(("attention_mask", "attention_mask", "attention_mask"))
    if s.logits != "last":
        notes.append(
            f"logits={s.logits!r}: the estimate's prefill keeps every position's logits (a plain "
            "model(input_ids) forward); generate() keeps the last one only."
        )

    prompt = s.context - s.new_tokens
    lines = [
        "import torch",
        f"from transformers import {', '.join(imports)}",
        "",
        "model = AutoModelForCausalLM.from_pretrained(",
        model_line,
    ]
    for k, src, _ in load:  # BitsAndBytesConfig(...) one argument a line
        lines += (
            [f"    {k}=BitsAndBytesConfig("] + [f"        {a}," for a in bnb] + ["    ),"]
            if k == "quantization_config" and len(bnb) > 1
            else [f"    {k}={src},"]
        )
    lines += [
        ")",
        f"# input_ids: [{s.batch}, {prompt}] token ids on cuda (context {s.context:,} = {prompt:,} prompt "
        f"+ {s.new_tokens} new tokens)" + (", attention_mask: the padding mask" if s.padding else ""),
        "out = model.generate(",
        "    input_ids,",
    ]
    lines += [f"    {k}={src}," for k, src, _ in gen]
    lines.append(")")
    args = tuple(f"{k}={src}" for k, src, _ in load + gen)
    options = {"model": name, "from_pretrained": {k: v for k, _, v in load}, "generate": {k: v for k, _, v in gen}}
    return Launch(
        engine="transformers",
        command="\n".join(lines),
        args=args,
        language="python",
        notes=tuple(notes),
        options=options,
    )


# --- CLI results ---------------------------------------------------------------------------------


def launch_for(result: Mapping[str, Any], settings: Settings | None = None) -> Launch | None:
    """The launch of a ``python -m estimator estimate|fit`` result: its engine's launch of the
    estimate (a fit's ``estimate``); transformers needs its ``settings`` (at the estimate's context).
    None when there is no estimate (nothing fits)."""
    est = result.get("estimate", result) if "max_context" in result else result
    if not isinstance(est, Mapping) or "settings" not in est:
        return None
    engine = est.get("engine") or est["settings"].get("engine")
    if engine == "vllm":
        return vllm_launch(est)
    if engine == "llama.cpp":
        return llamacpp_launch(est)
    if settings is None:
        raise InvalidSpecError("a transformers launch needs its Settings")
    return transformers_launch(settings)


def format_launch(launch: Launch | Mapping[str, Any]) -> str:
    """Text lines for a terminal: ``launch: COMMAND`` (Python source indented under ``launch
    (python):``), each alternative (``or (ENGINE): ...``), then the notes."""
    d = launch.to_dict() if isinstance(launch, Launch) else launch
    if d.get("language") == "python":
        lines = ["launch (python):"] + [f"    {line}" if line else "" for line in str(d["command"]).splitlines()]
    else:
        lines = [f"launch: {d['command']}"]
    for note in d.get("notes", ()):
        lines.append(f"  note: {note}")
    for alt in d.get("alternatives", ()):
        lines.append(f"  or ({alt['engine']}): {alt['command']}")
        lines += [f"    note: {note}" for note in alt.get("notes", ())]
    return "\n".join(lines)


__all__ = [
    "HF_MODELS",
    "Launch",
    "format_launch",
    "launch_for",
    "llamacpp_launch",
    "model_id",
    "ollama_launch",
    "shell_command",
    "transformers_launch",
    "vllm_launch",
]

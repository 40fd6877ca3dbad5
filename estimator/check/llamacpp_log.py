"""A llama.cpp / Ollama / llama-cpp-python startup log against ``estimate_llamacpp``, buffer by buffer.

What is read (each wording llama.cpp used from 2024 to 2026; a line may carry a prefix: Ollama's
journald or ``time=... level=...`` fields, docker-compose ``name  | ``, ``[timestamp]``, LM Studio /
LLamaSharp tags, colour codes):

- the build: ``build: 4701 (be3bbd62)`` / ``main: build = 1550 (8e672ef)`` / ``version: 4202 (9f912511)``, the
  2024 server's ``build info | ... build=3225 commit="925c3095"`` (or its JSON ``"build":2859,"commit":"7bd4ffb7"``)
  and 2026's ``version: 0.3.0 (build 10621, commit c1d0e7a00)``;
- the model shape: ``llama_model_loader: - kv N: llama.block_count u32 = 28`` (and embedding_length,
  feed_forward_length, attention.head_count(_kv), attention.key_length, context_length, vocab_size,
  general.name, general.file_type), ``tokenizer.ggml.tokens arr[str,128256]``, the tensor count
  (``loaded meta data with .. and 255 tensors``) and ``- type f32: 58 tensors`` (these two tell a tied
  embedding and ``rope_freqs``), or ``llm_load_print_meta:`` / ``print_info:`` (n_layer, n_embd, ...,
  ``file type = Q4_K - Medium`` / ``model ftype``);
- the offload: ``offloaded 29/29 layers to GPU``, Ollama's ``layers.offload=29`` and the runner
  command line (``--ctx-size --batch-size --n-gpu-layers --parallel --flash-attn --kv-cache-type``);
- the context: ``llama_new_context_with_model:`` / ``llama_init_from_model:`` / ``llama_context:``
  ``n_ctx``, ``n_seq_max``, ``n_ctx_per_seq``, ``n_batch``, ``n_ubatch``, ``flash_attn``, ``kv_unified``;
  the KV cache: ``llama_kv_cache_init: kv_size = .. type_k = 'f16'``, ``llama_kv_cache_unified:`` /
  ``llama_kv_cache:`` ``size = .. MiB ( 8192 cells, 28 layers, 1/1 seqs), K (f16): ..``,
  ``KV self size = .. MiB, K (f16): .., V (f16): ..``;
- the buffers: ``<dev> model buffer size`` (and the older ``llm_load_tensors: CUDA0 buffer size``),
  ``<dev> KV buffer size``, ``<dev> compute buffer size``, ``<dev> output buffer size``, where a
  device is a GPU (CUDA0, ROCm0, Metal, Vulkan0, ...) or host memory (CPU, CPU_Mapped, CUDA_Host).

Every other line is counted in ``unparsed_lines``. Settings the log states win over the options;
options fill what the log lacks (``model``, ``quant``, ``n_ctx``, ``parallel``, ``n_ubatch``,
``flash_attn``, ``n_gpu_layers``, ``kv_dtype``, ``version``); what neither gives raises
``MissingSetting`` naming it. Two settings are inferred from logged sizes when the log states them
nowhere else, each with a note: the context from the KV buffer and the GGUF type from the model
buffers. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engines import llamacpp as lc
from ..errors import InvalidSpecError
from ..model import PRESETS, ModelSpec, from_hf_config, load_model, load_preset, preset_for
from . import CheckResult, LogNotRecognised, MissingSetting, Term

MiB = 1 << 20
# First build with per-sequence KV streams: ``llamacpp.STREAMS_BUILD`` (b5913); a build maps to its
# layout through ``llamacpp.resolve_build``, the one place for that boundary.
STREAMS_BUILD = lc.STREAMS_BUILD

OWNERS = {
    "model_buffer": "llamacpp.model_buffers (GGUF tensor types, 512-row padding, 128 B alignment)",
    "host_model_buffer": "llamacpp.model_buffers (token_embd and CPU layers in host memory, 32 B alignment)",
    "kv_buffer": "llamacpp.kv_buffer_bytes (n_layer x cells x K/V row bytes; cells padded to 32 / 256 with FA)",
    "host_kv_buffer": "llamacpp.kv_buffer_bytes (KV of the layers left on the CPU)",
    "compute_buffer": "llamacpp.compute_buffers (ggml-alloc replay of the reserve graph)",
    "host_compute_buffer": "llamacpp.compute_buffers (graph inputs and CPU ops in host memory)",
    "output_buffer": "not modelled (logits / embeddings output buffer in host memory)",
}
_HOST = ("CPU", "CPU_Mapped", "CUDA_Host", "CPU_REPACK", "CPU_AARCH64", "ROCm_Host", "Metal_Mapped")

# llama_ftype (include/llama.h) -> GGUF type name of estimator.engines.llamacpp.FTYPES
_FILE_TYPE = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    7: "q8_0",
    8: "q5_0",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
    30: "iq4_xs",
    32: "bf16",
}
_SIZE_SUFFIX = {"small": "_s", "medium": "_m", "large": "_l"}

# --- line patterns (``search``: a line may carry any prefix) ---------------------------------------
_BUILD = re.compile(
    r"\b(?:build(?:\s*=|:)|version:)\s*(?P<b1>\d+)\s*\((?P<c1>[0-9a-f]+)\)"  # build: 5781 (ba3ef86c5)
    r"|\(build (?P<b2>\d+), commit (?P<c2>[0-9a-f]+)\)"  # version: 0.3.0 (build 10621, commit c1d0e7a00)
    r"|\bbuild\"?[=:]\s*(?P<b3>\d+)[,\s]+\"?commit\"?[=:]\s*\"(?P<c3>[0-9a-f]+)\""  # 2024 server: build=3225 commit="925c3095"
)
_META_KV = re.compile(r"llama_model_loader: - kv\s+\d+:\s+(\S+)\s+(\S+)\s+=\s+(.*)$")
_META_TYPE = re.compile(r"llama_model_loader: - type\s+(\w+):\s+(\d+) tensors")
_META_COUNT = re.compile(r"loaded meta data with \d+ key-value pairs and (\d+) tensors")
_PRINT = re.compile(r"(?:llm_load_print_meta|print_info):\s+([\w.]+(?: [a-z]+)?)\s*=\s*(.*)$")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(
    r"(?P<fn>\w+):\s+(?P<dev>[A-Za-z][\w()]*)\s+(?:(?P<kind>model|KV|compute|output)\s+)?buffer size\s*=\s*"
    r"(?P<mib>[\d.]+) MiB"
)
_CTX = re.compile(
    r"(?:llama_new_context_with_model|llama_init_from_model|llama_context):\s+"
    r"(n_ctx|n_ctx_per_seq|n_ctx_seq|n_seq_max|n_batch|n_ubatch|flash_attn|kv_unified|causal_attn)\s*=\s*(\S+)"
)
_KV_INIT = re.compile(r"kv_size\s*=\s*(\d+),.*?type_k\s*=\s*'(\w+)',\s*type_v\s*=\s*'(\w+)'")
_KV_SIZE = re.compile(
    r"llama_kv_cache\w*: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)(?:/(\d+))? seqs\),"
    r"\s*K \((\w+)\):.*V \((\w+)\)"
)
_KV_SELF = re.compile(r"KV self size\s*=\s*([\d.]+) MiB, K \((\w+)\):\s*[\d.]+ MiB, V \((\w+)\)")
_OLLAMA_OFFLOAD = re.compile(r"msg=\"?offload.*?layers\.model=(\d+)\s+layers\.offload=(\d+)")
_OLLAMA_CMD = re.compile(r"msg=\"starting llama server\".*?cmd=\"([^\"]*)\"")
_OLLAMA = re.compile(r"level=\w+ source=\w+\.go:\d+ msg=|\bollama\[\d+\]: ")


@dataclass
class _Parsed:
    build: int | None = None
    commit: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # GGUF key (arch prefix kept) -> value text
    printed: dict[str, str] = field(default_factory=dict)  # print_info key -> value text
    type_counts: dict[str, int] = field(default_factory=dict)
    n_tensors: int | None = None
    offloaded: tuple[int, int] | None = None
    ctx: dict[str, str] = field(default_factory=dict)
    cmd: dict[str, str] = field(default_factory=dict)  # Ollama runner flags
    kv_types: tuple[str, str] | None = None
    kv_cells: int | None = None
    kv_total_mib: float | None = None
    buffers: dict[tuple[str, str], float] = field(default_factory=dict)  # (kind, device) -> MiB
    lines: dict[str, str] = field(default_factory=dict)  # term -> first line it was read from
    wording: set[str] = field(default_factory=set)  # the function names seen (dates the build)
    ollama: bool = False
    recognised: int = 0
    unparsed: int = 0


def _parse(text: str) -> _Parsed:
    p = _Parsed()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if _read_line(p, line):
            p.recognised += 1
        else:
            p.unparsed += 1
    return p


def _read_line(p: _Parsed, line: str) -> bool:  # noqa: C901 - one branch per line kind
    if _OLLAMA.search(line):
        p.ollama = True
    m = _BUFFER.search(line)
    if m:
        kind = m["kind"] or ("model" if "load_tensors" in m["fn"] else None)
        if kind is None:
            return False
        kind = kind.lower()
        slot = (kind, m["dev"])
        p.buffers[slot] = p.buffers.get(slot, 0.0) + float(m["mib"])
        p.lines.setdefault(f"{kind}:{_is_host(m['dev'])}", line[m.start() :])
        p.wording.add(m["fn"])
        return True
    m = _META_KV.search(line)
    if m:
        key, typ, value = m[1], m[2], m[3].strip()
        if typ.startswith("arr[") and key.endswith("tokenizer.ggml.tokens"):
            n = re.match(r"arr\[\w+,(\d+)\]", typ)
            if n:
                p.meta["tokenizer.ggml.tokens.count"] = n[1]
        if typ == "str":  # a pasted log may run other output into the line: keep the value only
            value = re.split(r"\s{2,}|\s\|\s", value)[0]
        p.meta[key] = value if typ == "str" else value.split()[0] if value else value
        return True
    m = _META_TYPE.search(line)
    if m:
        p.type_counts[m[1]] = int(m[2])
        return True
    m = _META_COUNT.search(line)
    if m:
        p.n_tensors = int(m[1])
        return True
    m = _BUILD.search(line)
    if m:
        p.build, p.commit = int(m["b1"] or m["b2"] or m["b3"]), m["c1"] or m["c2"] or m["c3"]
        return True
    m = _OFFLOADED.search(line)
    if m:
        p.offloaded = (int(m[1]), int(m[2]))
        return True
    m = _CTX.search(line)
    if m:
        p.ctx.setdefault(m[1], m[2])
        p.wording.add(line[m.start() : m.start() + line[m.start() :].index(":")])
        return True
    m = _KV_SIZE.search(line)
    if m:
        p.kv_total_mib, p.kv_cells, p.kv_types = float(m[1]), int(m[2]), (m[6], m[7])
        if m[5]:
            p.ctx.setdefault("n_seq_max", m[5])
        p.wording.add("llama_kv_cache")
        return True
    m = _KV_SELF.search(line)
    if m:
        p.kv_total_mib, p.kv_types = float(m[1]), (m[2], m[3])
        return True
    m = _KV_INIT.search(line)
    if m:
        p.kv_cells, p.kv_types = int(m[1]), (m[2], m[3])
        return True
    m = _PRINT.search(line)
    if m:
        p.printed.setdefault(m[1].strip(), m[2].strip())
        return True
    m = _OLLAMA_OFFLOAD.search(line)
    if m:
        p.ollama = True
        p.cmd.setdefault("layers.model", m[1])
        p.cmd.setdefault("layers.offload", m[2])
        return True
    m = _OLLAMA_CMD.search(line)
    if m:
        p.ollama = True
        args = m[1].split()
        for i, a in enumerate(args):
            if a.startswith("--"):
                nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "1"
                p.cmd[a[2:]] = nxt
        return True
    return False


def _is_host(dev: str) -> bool:
    return dev in _HOST or dev.endswith("_Host") or dev.startswith("CPU")


def detect(text: str) -> bool:
    """Cheap and specific: a llama.cpp function prefix with a buffer, metadata or context line."""
    head = text[: 1 << 20]
    return bool(
        re.search(
            r"(?:llama_model_loader: - kv|llama_model_loader: loaded meta data|(?:model|KV|compute) buffer size =|"
            r"llm_load_tensors:|load_tensors: offload|llama_new_context_with_model:|llama_context: n_ctx|"
            r"llama_kv_cache(?:_init|_unified)?: )",
            head,
        )
    )


# --- settings ------------------------------------------------------------------------------------


def _arch(p: _Parsed) -> str:
    return p.meta.get("general.architecture") or p.printed.get("arch") or "llama"


def _meta_int(p: _Parsed, key: str, printed: str | None = None) -> int | None:
    arch = _arch(p)
    for k in (f"{arch}.{key}", key):
        v = p.meta.get(k)
        if v is not None:
            try:
                return int(v)
            except ValueError:
                pass
    if printed is not None and printed in p.printed:
        try:
            return int(p.printed[printed].split()[0])
        except ValueError:
            return None
    return None


def _model_name(p: _Parsed) -> str | None:
    return p.meta.get("general.name") or p.printed.get("general.name")


def _shape(p: _Parsed) -> dict[str, int | None]:
    return {
        "num_hidden_layers": _meta_int(p, "block_count", "n_layer"),
        "hidden_size": _meta_int(p, "embedding_length", "n_embd"),
        "intermediate_size": _meta_int(p, "feed_forward_length", "n_ff"),
        "num_attention_heads": _meta_int(p, "attention.head_count", "n_head"),
        "num_key_value_heads": _meta_int(p, "attention.head_count_kv", "n_head_kv"),
        "vocab_size": _meta_int(p, "vocab_size", "n_vocab") or _meta_int(p, "tokenizer.ggml.tokens.count"),
    }


def _missing_shape(p: _Parsed) -> list[str]:
    return [k for k, v in _shape(p).items() if v is None]


def _spec_from_log(p: _Parsed, notes: list[str]) -> ModelSpec | None:
    """The shape the metadata states, as a preset when it is one, else through ``from_hf_config``."""
    shape = _shape(p)
    name = _model_name(p)
    preset = preset_for(name)
    if preset is not None:
        spec = load_preset(preset)
        known = {k: v for k, v in shape.items() if v is not None}
        if all(getattr(spec, k) == v for k, v in known.items()):
            notes.append(f"model: general.name {name!r} is the preset {preset}")
            return spec
    missing = [k for k, v in shape.items() if v is None]
    if missing:
        return None
    arch = _arch(p)
    head_dim = _meta_int(p, "attention.key_length", "n_embd_head_k")
    L = shape["num_hidden_layers"]
    assert L is not None
    tied = _tied(p, L)
    cfg: dict[str, Any] = {
        "model_type": arch,
        **shape,
        "tie_word_embeddings": bool(tied),
        "max_position_embeddings": _meta_int(p, "context_length", "n_ctx_train") or 2048,
    }
    if head_dim:
        cfg["head_dim"] = head_dim
    spec = from_hf_config(cfg, name=name or arch)
    notes.append(
        f"model: shape from the GGUF metadata ({L} layers, hidden {shape['hidden_size']}, "
        f"{'tied' if tied else 'untied' if tied is not None else 'untied (not stated; assumed)'} embedding)"
    )
    return spec


def _tied(p: _Parsed, L: int) -> bool | None:
    """A tied embedding has no ``output.weight``: 9 tensors a layer + token_embd + output_norm
    (+ rope_freqs, which makes the F32 count 2 L + 2 instead of 2 L + 1)."""
    if p.n_tensors is None:
        return None
    rope = _rope_freqs(p, L)
    return p.n_tensors - (1 if rope else 0) == 9 * L + 2


def _rope_freqs(p: _Parsed, L: int) -> bool | None:
    f32 = p.type_counts.get("f32")
    if f32 is None:
        return None
    return f32 == 2 * L + 2


def _quant_name(text: str) -> str | None:
    """``Q4_K - Medium`` -> q4_k_m, ``Q8_0`` -> q8_0, ``all F32`` -> f32, ``IQ4_XS - 4.25 bpw`` -> iq4_xs."""
    t = text.strip().removeprefix("all ").removeprefix("MOSTLY_")
    m = re.match(r"([A-Za-z0-9_]+)(?:\s*-\s*(\w+))?", t)
    if not m:
        return None
    q = m[1].lower() + _SIZE_SUFFIX.get((m[2] or "").lower(), "")
    return q if q in lc.FTYPES else None


def _logged_quant(p: _Parsed) -> str | None:
    for k in ("file type", "model ftype", "ftype"):
        if k in p.printed:
            q = _quant_name(p.printed[k])
            if q:
                return q
    ft = p.meta.get("general.file_type")
    if ft is not None and ft.isdigit():
        return _FILE_TYPE.get(int(ft))
    return None


def _version(p: _Parsed) -> tuple[str, str]:
    if "kv_unified" in p.ctx:
        return "current", "the log prints kv_unified (per-sequence KV streams, b5913 and later)"
    if p.build is not None:
        v, _ = lc.resolve_build(str(p.build))
        return v, f"build {p.build} states the layout: {'per-sequence KV streams' if v == 'current' else 'unified KV'}"
    if p.wording & {"llama_new_context_with_model", "llama_init_from_model", "llm_load_tensors"}:
        return "2025-01", "no build line; the llama_new_context_with_model / llm_load_tensors wording predates b5913"
    if p.wording & {"sched_reserve", "llama_kv_cache"}:
        return "current", "no build line; the llama_kv_cache / sched_reserve wording is after b5913"
    return "current", "no build line and no dated wording: the current layout is assumed"


def _flag(v: str | None) -> bool | None:
    if v is None:
        return None
    v = v.strip().lower()
    if v in ("1", "true", "on", "enabled", "yes"):
        return True
    if v in ("0", "false", "off", "disabled", "no"):
        return False
    return None  # "auto": decided later by the backend


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _mib_bytes(mib: float) -> int:
    return round(mib * MiB)


def _buffer(p: _Parsed, kind: str, host: bool) -> float | None:
    vals = [v for (k, d), v in p.buffers.items() if k == kind and _is_host(d) == host]
    return sum(vals) if vals else None


# --- the check -----------------------------------------------------------------------------------


def check(
    text: str,
    *,
    model: Any = None,
    gpu: str | None = None,
    gpu_memory_bytes: int | None = None,
    **options: Any,
) -> CheckResult:
    p = _parse(text)
    if not p.recognised:
        raise LogNotRecognised("log: no llama.cpp / Ollama line recognised")
    notes: list[str] = []
    inferred: dict[str, Any] = {}

    spec = load_model(model) if model is not None else _spec_from_log(p, notes)
    if model is not None and spec is not None:
        notes.append(f"model: {spec.name} as given")
        stated = {k: v for k, v in _shape(p).items() if v is not None}
        differ = [f"{k} {v} (log) vs {getattr(spec, k)}" for k, v in stated.items() if getattr(spec, k) != v]
        if differ:
            notes.append("model: the given shape differs from the log's metadata: " + "; ".join(differ))
    if spec is None:
        name, missing = _model_name(p), _missing_shape(p)
        why = "the log states no model shape"
        if name or len(missing) < 6:
            why = f"general.name {name!r} is no preset and the metadata lacks {', '.join(missing)}"
        raise MissingSetting(f"model: {why}; pass --model PRESET ({', '.join(PRESETS)}) or a config.json path")
    inferred["model"] = spec.name
    L = spec.num_hidden_layers

    version, why = _version(p)
    if options.get("version"):
        version, why = lc.resolve_build(str(options["version"]), "version")
        why = f"as given ({options['version']}): {why}"
    notes.append(f"llama.cpp layout {version!r}: {why}")
    inferred["version"] = version
    inferred["build"] = p.build
    inferred["engine"] = "ollama (llama.cpp runner)" if p.ollama else "llama.cpp"

    # context and batch
    n_ctx = _int(p.ctx.get("n_ctx")) or _int(p.cmd.get("ctx-size")) or _int(options.get("n_ctx"))
    parallel = _int(p.ctx.get("n_seq_max")) or _int(p.cmd.get("parallel"))
    per_seq = _int(p.ctx.get("n_ctx_per_seq")) or _int(p.ctx.get("n_ctx_seq"))
    if parallel is None and n_ctx and per_seq and n_ctx % per_seq == 0:
        parallel = n_ctx // per_seq
        notes.append(f"parallel: {parallel} sequences from n_ctx {n_ctx} / n_ctx_per_seq {per_seq}")
    parallel = parallel or _int(options.get("parallel")) or 1
    n_ubatch = _int(p.ctx.get("n_ubatch")) or _int(options.get("n_ubatch")) or 512
    fa = _flag(p.ctx.get("flash_attn"))
    if fa is None and "flash-attn" in p.cmd:
        fa = _flag(p.cmd["flash-attn"]) if p.cmd["flash-attn"] != "1" else True
    if fa is None and options.get("flash_attn") is not None:
        fa = bool(options["flash_attn"])
    if fa is None:
        said = p.ctx.get("flash_attn") or p.cmd.get("flash-attn")
        fa = version == "current"  # --flash-attn auto (default since Sept 2025) enables it on CUDA
        what = f"logged as {said!r}" if said else "not in the log"
        notes.append(f"flash_attn: {what}; {'on (auto)' if fa else 'off'} assumed, the build's default")
    kv_unified = _flag(p.ctx.get("kv_unified"))
    kv_k, kv_v = p.kv_types or (str(options.get("kv_dtype") or p.cmd.get("kv-cache-type") or "f16"),) * 2
    kv_dtype = kv_k.lower()
    if kv_v.lower() != kv_dtype:
        notes.append(f"kv: K {kv_k} and V {kv_v} differ; the prediction uses {kv_dtype} for both")

    # offload
    gpu_buffers = any(not _is_host(d) for (_k, d) in p.buffers)
    if p.offloaded is not None:
        n_gpu_layers = -1 if p.offloaded[0] >= L + 1 else p.offloaded[0]
    elif "layers.offload" in p.cmd:
        n_gpu_layers = -1 if int(p.cmd["layers.offload"]) >= L + 1 else int(p.cmd["layers.offload"])
    elif "n-gpu-layers" in p.cmd:
        n_gpu_layers = int(p.cmd["n-gpu-layers"])
    elif options.get("n_gpu_layers") is not None:
        n_gpu_layers = int(options["n_gpu_layers"])
    elif _buffer(p, "kv", False) and _buffer(p, "kv", True):
        g, h = _buffer(p, "kv", False) or 0.0, _buffer(p, "kv", True) or 0.0
        n_gpu_layers = round(L * g / (g + h))  # the KV of a layer lives where the layer runs
        notes.append(f"n_gpu_layers: {n_gpu_layers} inferred from the GPU / host KV split ({g:.2f} / {h:.2f} MiB)")
    else:
        n_gpu_layers = -1
        if gpu_buffers:
            notes.append("n_gpu_layers: the log states no offload; all layers on the GPU assumed")
    on_gpu = gpu_buffers or bool(options.get("gpu", False))

    # the context from the KV cache when nothing else states it
    if n_ctx is None and p.kv_cells is not None:
        n_ctx = p.kv_cells
        notes.append(f"n_ctx: {n_ctx} from the KV cache size in cells")
    if n_ctx is None:
        kv_mib = p.kv_total_mib
        if kv_mib is None:
            on_gpu_kv, on_host_kv = _buffer(p, "kv", False), _buffer(p, "kv", True)
            if on_gpu_kv is not None or on_host_kv is not None:
                kv_mib = (on_gpu_kv or 0.0) + (on_host_kv or 0.0)
        per_cell = lc.kv_buffer_bytes(spec, 1, kv_dtype, flash_attn=True) if kv_dtype in lc.KV_TYPES else 0
        if kv_mib is not None and per_cell:
            cells = _mib_bytes(kv_mib) / (per_cell / 256)  # kv_buffer_bytes pads 1 to 256 cells with FA
            n_ctx = round(cells)
            notes.append(f"n_ctx: {n_ctx} inferred from the KV buffer ({kv_mib:.2f} MiB); the log states no n_ctx")
    if n_ctx is None:
        raise MissingSetting("n_ctx: the log states no context size and no KV buffer; pass n_ctx (--ctx-size)")

    # the GGUF type
    quant = _logged_quant(p) or (str(options["quant"]).lower() if options.get("quant") else None)
    tensors_kw = _tensor_overrides(p, L)
    if quant is None and _buffer(p, "model", False) is None and _buffer(p, "model", True) is None:
        if n_gpu_layers < 0 or n_gpu_layers > L:
            quant = "q4_k_m"  # no logged term depends on it: all weights on the GPU, no model buffer logged
            notes.append("quant: not stated and no model buffer logged; no logged term depends on it (q4_k_m used)")
    if quant is None:
        quant = _quant_from_buffers(p, spec, tensors_kw, n_gpu_layers)
        if quant is None:
            raise MissingSetting("quant: the log states no GGUF file type; pass quant (e.g. q4_k_m)")
        notes.append(f"quant: {quant} inferred from the model buffer sizes (the log states no file type)")
    inferred.update(
        quant=quant,
        n_ctx=n_ctx,
        parallel=parallel,
        n_ubatch=n_ubatch,
        n_batch=_int(p.ctx.get("n_batch")) or _int(p.cmd.get("batch-size")),
        flash_attn=fa,
        kv_dtype=kv_dtype,
        kv_unified=kv_unified,
        n_gpu_layers=n_gpu_layers,
        gpu=gpu,
        gpu_memory_bytes=gpu_memory_bytes,
    )

    tensors = lc.gguf_tensors(spec, quant, **tensors_kw) if tensors_kw else None
    try:
        e = lc.estimate_llamacpp(
            spec,
            quant,
            n_ctx,
            n_ubatch=n_ubatch,
            parallel=parallel,
            flash_attn=fa,
            n_gpu_layers=n_gpu_layers,
            kv_dtype=kv_dtype,
            gpu=on_gpu,
            version=version,
            kv_unified=kv_unified,
            tensors=tensors,
        )
    except InvalidSpecError as exc:
        raise InvalidSpecError(f"llama.cpp estimate for the logged settings: {exc}") from exc
    predicted = {
        "model_buffer": e.model_buffer_bytes,
        "host_model_buffer": e.host_buffer_bytes,
        "kv_buffer": e.kv_buffer_bytes,
        "host_kv_buffer": e.host_kv_buffer_bytes,
        "compute_buffer": e.compute_buffer_bytes,
        "host_compute_buffer": e.host_compute_buffer_bytes,
    }
    terms: list[Term] = []
    for name, (kind, host) in {
        "model_buffer": ("model", False),
        "host_model_buffer": ("model", True),
        "kv_buffer": ("kv", False),
        "host_kv_buffer": ("kv", True),
        "compute_buffer": ("compute", False),
        "host_compute_buffer": ("compute", True),
        "output_buffer": ("output", True),
    }.items():
        mib = _buffer(p, kind, host)
        if mib is None:
            continue
        line = p.lines.get(f"{kind}:{host}", "")
        terms.append(Term(name, _mib_bytes(mib), predicted.get(name), owner=OWNERS[name], line=line[:160]))
    if not terms:
        raise LogNotRecognised("log: llama.cpp lines recognised, but no buffer size line to check")
    if len({d for (_k, d) in p.buffers if not _is_host(d)}) > 1:
        notes.append("several GPUs: their buffers are summed; the estimate models one device")
    drift = [t for t in terms if t.rel_error is not None and t.name != "output_buffer"]
    if drift:
        worst = max(drift, key=lambda t: abs(t.rel_error or 0.0))
        notes.append(f"largest drift: {worst.name} {100 * (worst.rel_error or 0.0):+.2f}% ({worst.owner})")
    engine_version = f"b{p.build} ({p.commit})" if p.build is not None else None
    return CheckResult("llama.cpp", engine_version, inferred, tuple(terms), tuple(notes), p.unparsed)


def _tensor_overrides(p: _Parsed, L: int) -> dict[str, Any]:
    rope = _rope_freqs(p, L)
    return {} if rope is None else {"rope_freqs": rope}


def _quant_from_buffers(p: _Parsed, spec: ModelSpec, tensors_kw: Mapping[str, Any], n_gpu_layers: int) -> str | None:
    """The GGUF type whose GPU model buffer is the logged one within 0.5% (GPU + host when the GPU
    holds almost nothing: a host mmap range can span more than the host tensors)."""
    gpu_mib = _buffer(p, "model", False) or 0.0
    use_gpu = gpu_mib > 16.0
    logged = gpu_mib if use_gpu else gpu_mib + (_buffer(p, "model", True) or 0.0)
    if not logged:
        return None
    best: tuple[float, str] | None = None
    for q in lc.GGUF_QUANTS:
        ts = lc.gguf_tensors(spec, q, **tensors_kw)
        mb = lc.model_buffers(ts, spec.num_hidden_layers, n_gpu_layers if use_gpu else -1, True)
        total = (mb.gpu_model_buffer_bytes + (0 if use_gpu else mb.host_model_buffer_bytes)) / MiB
        err = abs(total - logged) / logged
        if err <= 0.005 and (best is None or err < best[0]):
            best = (err, q)
    return best[1] if best else None

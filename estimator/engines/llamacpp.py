"""llama.cpp / Ollama memory model for GGUF files: weights, KV cache, compute buffers, offload.

What llama.cpp allocates at startup, and prints:

- ``CUDA0 model buffer``: every tensor of the offloaded layers, plus ``output.weight``
  (for a tied embedding the loader creates ``output`` as a *duplicate* of ``token_embd``;
  ``src/llama-model.cpp``: ``output = create_tensor(tn(LLM_TENSOR_TOKEN_EMBD), ..., TENSOR_DUPLICATED)``).
- ``CPU model buffer`` (``CPU_Mapped`` with mmap): ``token_embd`` (the input layer always lives
  on the CPU: ``dev_input = cpu``) and every tensor of the layers that are not offloaded.
- ``KV buffer``: ``n_layer x (row_size(type_k, n_embd_k_gqa) + row_size(type_v, n_embd_v_gqa))
  x kv_size`` (``src/llama-kv-cache.cpp``: one ``ggml_new_tensor`` per layer for K and for V).
- ``compute buffer``: the size ``ggml_gallocr`` reserves for the worst-case graph (``n_ubatch``
  tokens attending to the full KV), obtained here by replaying ggml-alloc's greedy allocator
  (``ggml/src/ggml-alloc.c``: ``ggml_dyn_tallocr_alloc`` best fit, in-place reuse for
  ``ggml_op_can_inplace`` ops, free when the last consumer ran) over the llama graph
  (``llm_build_llama`` / ``build_attn``). ``CUDA_Host compute buffer``: the graph inputs that the
  scheduler keeps on the CPU (token ids, positions, KQ mask, output ids) plus the token-embedding
  rows fetched on the CPU.

Worked example, Llama 3.2 3B Q4_K_M, ``n_ctx`` 8192, ``n_ubatch`` 512, no flash attention, all
29 layers offloaded (Ollama, Jan 2025): model buffer 2,011,539,712 B (1918.35 MiB, printed
1918.35), host model buffer 323,205,120 B (308.23 MiB), KV 939,524,096 B (896.00 MiB).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..errors import InvalidSpecError, UnknownNameError
from ..model import ModelSpec, tensors
from ..solve import largest_true

MiB = 1 << 20

# --- block formats -----------------------------------------------------------------------
# (elements per block, bytes per block), ggml/src/ggml-common.h (block_q4_0 = half d + 16 B qs,
# block_q4_K = 2 halves + 12 B scales + 128 B qs, ...), and ggml.c type_traits.
GGML_TYPES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210), "Q8_K": (256, 292), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
    "I8": (1, 1), "I16": (1, 2), "I32": (1, 4), "I64": (1, 8), "F64": (1, 8),
}

# llama_ftype name -> default (base) tensor type, src/llama-quant.cpp llama_model_quantize_impl.
FTYPES: dict[str, str] = {
    "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K",
    "q5_k_m": "Q5_K", "q5_k_s": "Q5_K", "q5_0": "Q5_0", "q4_k_m": "Q4_K", "q4_k_s": "Q4_K",
    "q4_0": "Q4_0", "q3_k_l": "Q3_K", "q3_k_m": "Q3_K", "q3_k_s": "Q3_K", "q2_k": "Q2_K",
    "iq4_xs": "IQ4_XS",
}
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m",
               "q4_k_s", "q4_0", "q3_k_m", "q3_k_s", "q2_k", "iq4_xs")
# KV cache types accepted by llama.cpp's --cache-type-k/-v that this model covers.
KV_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32", "bf16": "BF16"}

CUDA_ALIGNMENT = 128   # ggml-cuda.cu ggml_backend_cuda_buffer_type_get_alignment
CPU_ALIGNMENT = 32     # ggml-backend.cpp TENSOR_ALIGNMENT for the CPU buffer type
MATRIX_ROW_PADDING = 512  # ggml-cuda/common.cuh: quantized rows are padded to 512 on CUDA
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu: ops with host weights are offloaded for batches >= 32 rows
KQ_MASK_PAD = {"2025-01": 32, "current": 64}  # GGML_KQ_MASK_PAD in ggml.h by era
VERSIONS = ("2025-01", "current")


def row_bytes(ggml_type: str, ne0: int) -> int:
    """Bytes of one row of ``ne0`` elements (``ggml_row_size``). Raises if ne0 is not whole blocks."""
    blck, size = GGML_TYPES[ggml_type]
    if ne0 % blck:
        raise InvalidSpecError(f"row of {ne0} elements is not a whole number of {ggml_type} blocks ({blck})")
    return ne0 // blck * size


def tensor_bytes(ggml_type: str, shape: tuple[int, ...]) -> int:
    """``ggml_nbytes`` of a contiguous tensor; shape is GGUF order (ne0 = row length first)."""
    n_rows = 1
    for s in shape[1:]:
        n_rows *= s
    return row_bytes(ggml_type, shape[0]) * n_rows


def _pad(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One GGUF tensor: name, shape in GGUF order (ne0 first), ggml type, layer (None = global)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    layer: int | None = None

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.ggml_type, self.shape)


# --- mixtures ---------------------------------------------------------------------------------

def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """``use_more_bits`` lambda of ``llama_tensor_get_type`` (src/llama-quant.cpp)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL",
             "IQ4_XS": "IQ4_NL"}  # llama-quant.cpp convert_incompatible_tensor switch


def _is_70b(spec: ModelSpec) -> bool:
    # llama_model::type == LLM_TYPE_70B for the llama arch: 80 layers (llama-model.cpp load_hparams).
    return spec.num_hidden_layers == 80 and spec.model_type == "llama"


def tensor_type(ftype: str, role: str, i_layer: int | None, spec: ModelSpec, has_output: bool,
                has_imatrix: bool = False) -> str:
    """The type ``llama_tensor_get_type`` picks for a 2-D weight. ``role`` is the GGUF tensor base name
    (``token_embd``, ``output``, ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_gate``,
    ``ffn_up``, ``ffn_down``)."""
    base = FTYPES[ftype]
    if base in ("F32", "F16", "BF16"):
        return base  # mixture rules apply only when the default type is quantized
    n = spec.num_hidden_layers
    n_gqa = spec.num_attention_heads // spec.num_key_value_heads
    t = base
    if role == "output" or (role == "token_embd" and not has_output):
        # the output rule: Q6_K unless the base is Q8_0, or Q8_0 for rows that are not whole 256-blocks
        if spec.hidden_size % GGML_TYPES[base][0] != 0:
            t = "Q8_0"
        elif base != "Q8_0":
            t = "Q6_K"
    elif role == "attn_v":
        i = i_layer or 0
        if ftype == "q2_k":
            t = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ftype == "q3_k_m":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "q3_k_l":
            t = "Q5_K"
        elif ftype == "iq4_xs" and n_gqa >= 4:
            t = "Q5_K"
        elif ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            t = "Q6_K"
        elif ftype == "q4_k_s" and i < 4:
            t = "Q5_K"
        if _is_70b(spec) and t in ("Q3_K", "Q4_K"):
            t = "Q5_K"
    elif role == "ffn_down":
        i = i_layer or 0
        if ftype == "q2_k":
            t = "Q3_K"
        elif ftype == "q3_k_m":
            t = "Q5_K" if i < n // 16 else "Q4_K"
        elif ftype == "q3_k_l":
            t = "Q5_K"
        elif ftype == "q4_k_m":
            if use_more_bits(i, n):
                t = "Q6_K"
        elif i < n // 8 and ftype == "iq4_xs" and not has_imatrix:
            t = "Q5_K"
        elif ftype == "q5_k_m" and use_more_bits(i, n):
            t = "Q6_K"
        elif ftype == "q4_k_s" and i < n // 8:
            t = "Q5_K"
        elif ftype in ("q4_0", "q5_0") and has_imatrix and i < n // 8:
            t = "Q4_1" if ftype == "q4_0" else "Q5_1"
    elif role == "attn_output":
        if ftype == "q2_k":
            t = "Q3_K"
        elif ftype == "q3_k_m":
            t = "Q4_K"
        elif ftype == "q3_k_l":
            t = "Q5_K"
    return t


def _fit_type(t: str, ne0: int) -> str:
    """Shape fallback when the row is not a whole number of blocks (llama-quant.cpp)."""
    if ne0 % GGML_TYPES[t][0] == 0:
        return t
    t2 = _FALLBACK.get(t, "F16")
    return t2 if ne0 % GGML_TYPES[t2][0] == 0 else "F16"


def has_rope_freqs(spec: ModelSpec, hf_config: Mapping | None = None) -> bool:
    """``rope_freqs.weight`` (F32, n_rot/2) is written by convert_hf_to_gguf.py for Llama 3.1+ configs
    with ``rope_scaling.rope_type == "llama3"`` (LlamaModel.generate_extra_tensors)."""
    cfg = hf_config
    if cfg is None:
        try:
            from ..model import PRESETS, preset_config
            cfg = preset_config(spec.name) if spec.name in PRESETS else {}
        except Exception:  # pragma: no cover - presets always load
            cfg = {}
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    return isinstance(rs, Mapping) and (rs.get("rope_type") or rs.get("type")) == "llama3"


# Hugging Face tensor names -> GGUF names (convert_hf_to_gguf's tensor map for LLM_ARCH_LLAMA).
_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
_GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _gguf_name(hf_name: str, layer: int | None) -> str:
    if layer is None:
        return _GGUF_GLOBAL[hf_name]
    module, _, kind = hf_name.removeprefix(f"model.layers.{layer}.").rpartition(".")
    return f"blk.{layer}.{_GGUF_LAYER[module]}.{kind}"


@functools.lru_cache(maxsize=256)
def _gguf_tensors_cached(spec: ModelSpec, ftype: str, rope_freqs: bool, has_imatrix: bool) -> tuple[GgufTensor, ...]:
    """The model's tensor inventory (``estimator.model.tensors``) as GGUF tensors: GGUF names, shapes
    in GGUF order (ne0 = in_features first), and the ggml type llama-quantize picks for each."""
    if ftype not in FTYPES:
        raise UnknownNameError(f"quant must be one of {', '.join(GGUF_QUANTS)} for llama.cpp: {ftype!r}")
    has_output = not spec.tie_word_embeddings
    out = []
    for t in tensors(spec):
        if t.kind == "buffer":  # rotary inv_freq: llama.cpp recomputes it (rope_freqs below)
            continue
        name = _gguf_name(t.name, t.layer)
        shape = tuple(reversed(t.shape))
        if len(shape) < 2:
            # 1-D tensors are never quantized (n_dims < 2) and convert_hf_to_gguf writes them as F32.
            out.append(GgufTensor(name, shape, "F32", t.layer))
            continue
        role = name.removeprefix(f"blk.{t.layer}.").removesuffix(".weight")
        ggml_type = tensor_type(ftype, role, t.layer, spec, has_output, has_imatrix)
        if FTYPES[ftype] not in ("F32", "F16", "BF16"):
            ggml_type = _fit_type(ggml_type, shape[0])
        out.append(GgufTensor(name, shape, ggml_type, t.layer))
    if rope_freqs:
        out.append(GgufTensor("rope_freqs.weight", (spec.rotary_dim // 2,), "F32", 0))
    return tuple(out)


def gguf_tensors(spec: ModelSpec, quant: str, *, rope_freqs: bool | None = None,
                 has_imatrix: bool = False) -> tuple[GgufTensor, ...]:
    """The tensors of a GGUF file that ``llama-quantize --<quant>`` writes for this Llama-family config."""
    quant = quant.lower()
    if rope_freqs is None:
        rope_freqs = has_rope_freqs(spec)
    return _gguf_tensors_cached(spec, quant, rope_freqs, has_imatrix)


def gguf_file_tensor_bytes(tensors: Iterable[GgufTensor]) -> int:
    """Sum of tensor data bytes (the GGUF file minus header and 32-byte alignment gaps)."""
    return sum(t.nbytes for t in tensors)


def type_counts(tensors: Iterable[GgufTensor]) -> dict[str, int]:
    """Tensors per ggml type, as llama.cpp prints them ("llama_model_loader: - type q4_K: 168 tensors")."""
    c: dict[str, int] = {}
    for t in tensors:
        c[t.ggml_type] = c.get(t.ggml_type, 0) + 1
    return c


# --- model buffers and offload ----------------------------------------------------------------

def _cuda_alloc_size(t: GgufTensor) -> int:
    """ggml_backend_cuda_buffer_type_get_alloc_size: quantized rows padded to MATRIX_ROW_PADDING."""
    size = t.nbytes
    blck = GGML_TYPES[t.ggml_type][0]
    if blck > 1 and t.shape[0] % MATRIX_ROW_PADDING:
        size += row_bytes(t.ggml_type, MATRIX_ROW_PADDING - t.shape[0] % MATRIX_ROW_PADDING)
    return _pad(size, CUDA_ALIGNMENT)


@dataclass(frozen=True, slots=True)
class ModelBuffers:
    """Model weight buffers as llama.cpp prints them. All fields are bytes."""

    gpu_model_buffer_bytes: int     # "CUDA0 model buffer size"
    host_model_buffer_bytes: int    # "CPU model buffer size" / "CPU_Mapped model buffer size"
    n_gpu_layers: int               # effective, counting the output layer as llama.cpp does (n_layer + 1 = all)


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> tuple[int, bool]:
    """(first GPU layer, output on GPU) for ``-ngl``; -1 means all (llama-cpp-python, Ollama num_gpu).

    src/llama-model.cpp load_tensors: ``i_gpu_start = max(n_layer - n_gpu_layers, 0)``; the output
    layer is offloaded when ``n_gpu_layers > n_layer``.
    """
    if n_gpu_layers < 0 or n_gpu_layers > n_layer:
        n_gpu_layers = n_layer + 1
    return max(n_layer - n_gpu_layers, 0), n_gpu_layers > n_layer


def model_buffers(tensors: Iterable[GgufTensor], n_layer: int, n_gpu_layers: int = -1,
                  gpu: bool = True) -> ModelBuffers:
    """Split the tensors into the GPU and host model buffers for ``n_gpu_layers``.

    ``token_embd`` always stays on the host; a model without ``output.weight`` gets an ``output``
    duplicate of ``token_embd`` on the output layer's device. rope_freqs goes with layer 0.
    """
    tensors = list(tensors)
    i_gpu_start, out_gpu = offloaded_layers(n_layer, n_gpu_layers)
    if not gpu:
        i_gpu_start, out_gpu = n_layer, False
    has_output = any(t.name == "output.weight" for t in tensors)
    gpu_b = host_b = 0
    for t in tensors:
        entries = [(t, t.layer)]
        if t.name == "token_embd.weight":
            entries = [(t, "input")]
            if not has_output:
                entries.append((dataclasses.replace(t, name="output.weight"), "output"))
        elif t.name in ("output.weight", "output_norm.weight"):
            entries = [(t, "output")]
        for tt, where in entries:
            on_gpu = (where == "output" and out_gpu) or (isinstance(where, int) and where >= i_gpu_start)
            if tt is not t and not on_gpu:
                continue  # a host-side duplicate shares token_embd's (mmapped) data
            if on_gpu:
                gpu_b += _cuda_alloc_size(tt)
            else:
                host_b += _pad(tt.nbytes, CPU_ALIGNMENT)
    eff = (n_layer - i_gpu_start) + (1 if out_gpu else 0)
    return ModelBuffers(gpu_b, host_b, eff)


# --- KV cache ----------------------------------------------------------------------------------

def kv_size_cells(n_ctx: int, flash_attn: bool, version: str = "current") -> int:
    """KV cells: n_ctx padded to 256 with flash attention, 32 without (``llama_kv_cache::get_padding``;
    shared/reference/memory-model.md section 8.3). ``version`` is accepted for symmetry."""
    return _pad(n_ctx, 256 if flash_attn else 32)


def kv_buffer_bytes(spec: ModelSpec, n_ctx: int, type_k: str = "f16", type_v: str | None = None,
                    n_layers: int | None = None, flash_attn: bool = False, version: str = "current") -> int:
    """Bytes of the KV buffer for ``n_ctx`` cells (shared by all ``--parallel`` sequences).

    ``n_layer x kv_size x (row_size(type_k, n_embd_k_gqa) + row_size(type_v, n_embd_v_gqa))``.
    A quantized V cache needs flash attention (llama_init_from_model refuses otherwise).
    """
    type_v = type_v or type_k
    for t in (type_k, type_v):
        if t not in KV_TYPES:
            raise UnknownNameError(f"kv_dtype must be one of {', '.join(KV_TYPES)} for llama.cpp: {t!r}")
    if KV_TYPES[type_v] not in ("F16", "F32", "BF16") and not flash_attn:
        raise InvalidSpecError(f"kv_dtype {type_v!r}: llama.cpp needs --flash-attn for a quantized V cache")
    cells = kv_size_cells(n_ctx, flash_attn, version)
    L = spec.num_hidden_layers if n_layers is None else n_layers
    return L * cells * (row_bytes(KV_TYPES[type_k], spec.kv_dim) + row_bytes(KV_TYPES[type_v], spec.kv_dim))


# --- compute buffer: replay of ggml-alloc over the llama graph ----------------------------------

_INPLACE_OPS = {"add", "mul", "rms_norm", "rope", "soft_max", "unary", "scale"}  # ggml_op_can_inplace


class _Tallocr:
    """ggml_dyn_tallocr: best fit among free blocks except the last, else the (unbounded) tail."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.free: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = _pad(size, self.alignment)
        best = -1
        best_size = 1 << 63
        for i in range(len(self.free) - 1):
            if size <= self.free[i][1] <= best_size:
                best, best_size = i, self.free[i][1]
        if best == -1:
            best = len(self.free) - 1
        blk = self.free[best]
        off = blk[0]
        blk[0] += size
        blk[1] -= size
        if blk[1] == 0:
            del self.free[best]
        self.max_size = max(self.max_size, off + size)
        return off

    def release(self, off: int, size: int) -> None:
        size = _pad(size, self.alignment)
        fb = self.free
        for i, blk in enumerate(fb):
            if blk[0] + blk[1] == off:
                blk[1] += size
                if i + 1 < len(fb) and blk[0] + blk[1] == fb[i + 1][0]:
                    blk[1] += fb[i + 1][1]
                    del fb[i + 1]
                return
            if off + size == blk[0]:
                blk[0] = off
                blk[1] += size
                if i > 0 and fb[i - 1][0] + fb[i - 1][1] == blk[0]:
                    fb[i - 1][1] += blk[1]
                    del fb[i]
                return
        j = 0
        while j < len(fb) and fb[j][0] < off:
            j += 1
        fb.insert(j, [off, size])


class _Graph:
    """A minimal ggml graph: nodes in execution order with sizes, sources and view links."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []

    def add(self, name: str, nbytes: int, srcs: list, op: str = "op", dev: str = "gpu",
            view_of: dict | None = None, inp: bool = False, out: bool = False) -> dict:
        n = {"name": name, "size": nbytes, "srcs": [s for s in srcs if s is not None], "op": op,
             "dev": dev, "view_of": view_of, "input": inp, "output": out, "external": False}
        self.nodes.append(n)
        return n

    @staticmethod
    def ext(name: str) -> dict:
        """A tensor with its own data (weight or KV cache): never allocated by the graph allocator."""
        return {"name": name, "size": 0, "srcs": [], "op": "none", "dev": "ext", "view_of": None,
                "input": False, "output": False, "external": True}


def _simulate(g: _Graph, alignments: dict[str, int]) -> dict[str, int]:
    """Replay ggml_gallocr_alloc_graph_impl; returns the max buffer size per device."""
    allocs = {d: _Tallocr(a) for d, a in alignments.items()}
    state: dict[int, dict] = {}

    def st(t: dict) -> dict:
        return state.setdefault(id(t), {"children": 0, "views": 0, "allocated": False, "off": None, "own": False})

    for n in g.nodes:
        if n["view_of"] is not None:
            st(n["view_of"])["views"] += 1
        for s in n["srcs"]:
            st(s)["children"] += 1

    def allocate(t: dict) -> None:
        s = st(t)
        if t["external"] or s["allocated"] or s["own"] or t["view_of"] is not None:
            return
        s["allocated"] = s["own"] = True
        if t["op"] in _INPLACE_OPS:
            for p in t["srcs"]:
                ps = st(p)
                psize = p["view_of"]["size"] if p["view_of"] is not None else p["size"]
                if p["external"] or not ps["own"] or p["output"] or psize != t["size"] or p["dev"] != t["dev"]:
                    continue
                if ps["children"] == 1 and ps["views"] == 0:
                    if p["view_of"] is not None:
                        vs = st(p["view_of"])
                        if vs["views"] == 1 and vs["children"] == 0:
                            s["off"] = vs["off"]
                            s["reuse"] = p["view_of"]
                            ps["allocated"] = False
                            vs["allocated"] = False
                            return
                    else:
                        s["off"] = ps["off"]
                        ps["allocated"] = False
                        return
        s["off"] = allocs[t["dev"]].alloc(t["size"])

    def free(t: dict) -> None:
        if t["output"] or t["external"]:
            return
        s = st(t)
        allocs[t["dev"]].release(s["off"], t["size"])
        s["allocated"] = False

    # inputs first, in order of use
    for n in g.nodes:
        if n["input"]:
            allocate(n)
        for p in n["srcs"]:
            if p["input"]:
                allocate(p)
    for n in g.nodes:
        for p in n["srcs"]:
            allocate(p)
        allocate(n)
        for p in n["srcs"]:
            ps = st(p)
            ps["children"] -= 1
            if ps["children"] == 0 and ps["views"] == 0:
                if p["view_of"] is not None:
                    v = p["view_of"]
                    vs = st(v)
                    vs["views"] -= 1
                    if vs["views"] == 0 and vs["children"] == 0 and vs["allocated"]:
                        free(v)
                elif ps["allocated"]:
                    free(p)
    return {d: a.max_size for d, a in allocs.items()}


@dataclass(frozen=True, slots=True)
class ComputeBuffers:
    """Compute buffers as llama.cpp prints them. All fields are bytes."""

    gpu_compute_buffer_bytes: int    # "CUDA0 compute buffer size"
    host_compute_buffer_bytes: int   # "CUDA_Host compute buffer size" (pinned host), or "CPU compute buffer" CPU-only


def compute_buffers(spec: ModelSpec, n_ctx: int, n_ubatch: int = 512, flash_attn: bool = False,
                    n_gpu_layers: int = -1, gpu: bool = True, parallel: int = 1,
                    kv_unified: bool | None = None, version: str = "current",
                    host_weight_bytes: int = 0, op_offload: bool = True) -> ComputeBuffers:
    """Worst-case compute buffers that ``ggml_backend_sched_reserve`` sizes at context creation.

    The reserve graph has ``n_tokens = min(n_ctx, n_ubatch)`` tokens, all of them outputs, attending
    to the whole KV cache (``n_kv = kv_size``), or to one sequence's share per stream when the KV cache
    is split into per-sequence streams (llama.cpp since mid-2025, ``kv_unified = false``).
    """
    if version not in VERSIONS:
        raise UnknownNameError(f"llama.cpp version must be one of {', '.join(VERSIONS)}: {version!r}")
    if n_ubatch < 1:
        raise InvalidSpecError(f"n_ubatch must be >= 1: {n_ubatch}")
    if kv_unified is None:
        kv_unified = version == "2025-01"
    kv = kv_size_cells(n_ctx, flash_attn, version)
    T = min(n_ctx, n_ubatch)
    n_stream = 1 if (kv_unified or parallel <= 1) else parallel
    if n_stream > 1:
        kv = kv_size_cells(n_ctx // n_stream, flash_attn, version)
    E, I, hd, nh = spec.hidden_size, spec.intermediate_size, spec.head_dim, spec.num_attention_heads
    nkv = spec.num_key_value_heads
    Eq, Ek = nh * hd, nkv * hd
    L = spec.num_hidden_layers
    V = spec.vocab_size
    n_out = T
    pad = KQ_MASK_PAD[version]
    i_gpu_start, out_gpu = offloaded_layers(L, n_gpu_layers)
    if not gpu:
        i_gpu_start, out_gpu = L, False

    def dev_layer(i: int) -> str:
        return "gpu" if i >= i_gpu_start else "cpu"

    g = _Graph()
    # Inputs live on the CPU (sched: tensors flagged input go to the last backend, the CPU);
    # each GPU split gets a copy (allocated as an input of that split in the GPU buffer).
    tokens = g.add("inp_tokens", 4 * T, [], "none", "cpu", inp=True)
    pos_c = g.add("inp_pos", 4 * T, [], "none", "cpu", inp=True)
    mask_rows = _pad(T // n_stream, pad) * n_stream
    mask_c = g.add("KQ_mask", 4 * kv * mask_rows, [], "none", "cpu", inp=True)
    out_ids_c = g.add("inp_out_ids", 4 * n_out, [], "none", "cpu", inp=True)
    inpL = g.add("inp_embd", 4 * E * T, [tokens, _Graph.ext("token_embd")], "get_rows", "cpu")
    copies: dict[tuple[int, str], dict] = {}

    def on(dev: str, t: dict) -> dict:
        if t["dev"] in (dev, "ext"):
            return t
        key = (id(t), dev)
        if key not in copies:
            copies[key] = g.add(t["name"] + "#copy", t["size"], [], "none", dev, inp=True)
        return copies[key]

    masks: dict[str, dict] = {}

    def mask_for(dev: str) -> dict:
        if dev not in masks:
            m = on(dev, mask_c)
            if flash_attn:  # ggml_cast(KQ_mask, F16), built once per graph
                m = g.add("KQ_mask_f16", 2 * kv * mask_rows, [m], "cpy", dev)
            masks[dev] = m
        return masks[dev]

    W = _Graph.ext("w")
    KV = _Graph.ext("kv")
    cur = inpL
    for il in range(L):
        d = dev_layer(il)
        inpSA = on(d, cur)
        x = g.add("norm", 4 * E * T, [inpSA], "rms_norm", d)
        x = g.add("attn_norm", 4 * E * T, [x, W], "mul", d)
        q = g.add("Qcur", 4 * Eq * T, [W, x], "mul_mat", d)
        qr = g.add("Qcur_r", 0, [q], "view", d, view_of=q)
        q = g.add("Qrope", 4 * Eq * T, [qr, on(d, pos_c), W], "rope", d)
        k = g.add("Kcur", 4 * Ek * T, [W, x], "mul_mat", d)
        kr = g.add("Kcur_r", 0, [k], "view", d, view_of=k)
        k = g.add("Krope", 4 * Ek * T, [kr, on(d, pos_c), W], "rope", d)
        v = g.add("Vcur", 4 * Ek * T, [W, x], "mul_mat", d)
        g.add("k_store", 0, [k, KV], "cpy", d)["external"] = True  # cpy into a cache view: no buffer
        if not flash_attn:
            vt = g.add("Vcur_t", 0, [v], "view", d, view_of=v)
            g.add("v_store", 0, [vt, KV], "cpy", d)["external"] = True
        else:
            g.add("v_store", 0, [v, KV], "cpy", d)["external"] = True
        qp = g.add("q", 0, [q], "view", d, view_of=q)
        m = mask_for(d)
        if flash_attn:
            a = g.add("fattn", 4 * hd * nh * T, [qp, KV, KV, m], "flash_attn_ext", d)
            ar = g.add("fattn_r", 0, [a], "view", d, view_of=a)
            o_in = ar
        else:
            kq = g.add("kq", 4 * kv * T * nh, [KV, qp], "mul_mat", d)
            kq = g.add("kq_soft_max", 4 * kv * T * nh, [kq, m], "soft_max", d)
            kqv = g.add("kqv", 4 * hd * T * nh, [KV, kq], "mul_mat", d)
            kqp = g.add("kqv_p", 0, [kqv], "view", d, view_of=kqv)
            o_in = g.add("kqv_merged_cont", 4 * Eq * T, [kqp], "cont", d)
        x = g.add("attn_out", 4 * E * T, [W, o_in], "mul_mat", d)
        if il == L - 1:
            oid = on(d, out_ids_c)
            x = g.add("get_rows_cur", 4 * E * n_out, [x, oid], "get_rows", d)
            inpSA = g.add("get_rows_inpSA", 4 * E * n_out, [inpSA, oid], "get_rows", d)
        ffn_inp = g.add("ffn_inp", x["size"], [x, inpSA], "add", d)
        Tn = n_out if il == L - 1 else T
        x = g.add("ffn_norm", 4 * E * Tn, [ffn_inp], "rms_norm", d)
        x = g.add("ffn_norm_w", 4 * E * Tn, [x, W], "mul", d)
        gate = g.add("ffn_gate", 4 * I * Tn, [W, x], "mul_mat", d)
        gate = g.add("ffn_silu", 4 * I * Tn, [gate], "unary", d)
        up = g.add("ffn_up", 4 * I * Tn, [W, x], "mul_mat", d)
        par = g.add("ffn_gate_par", 4 * I * Tn, [gate, up], "mul", d)
        down = g.add("ffn_down", 4 * E * Tn, [W, par], "mul_mat", d)
        cur = g.add("l_out", 4 * E * Tn, [down, ffn_inp], "add", d)
    d = "gpu" if out_gpu else "cpu"
    x = on(d, cur)
    x = g.add("result_norm", x["size"], [x], "rms_norm", d)
    x = g.add("result_norm_w", x["size"], [x, W], "mul", d)
    g.add("result_output", 4 * V * n_out, [W, x], "mul_mat", d, out=True)
    sizes = _simulate(g, {"gpu": CUDA_ALIGNMENT, "cpu": CPU_ALIGNMENT})
    gpu_b = sizes.get("gpu", 0) if gpu else 0
    partial = gpu and (i_gpu_start > 0 or not out_gpu)
    if partial and op_offload and T >= OP_OFFLOAD_MIN_BATCH and host_weight_bytes:
        # Op offload: a matmul whose weight sits in host memory still runs on the GPU when the batch
        # is >= 32 rows (ggml-cuda offload_op); the scheduler copies the weight into the GPU compute
        # buffer for that split. The worst case is the largest host-resident weight plus the matmul's
        # input and output rows (the output layer: weight + [vocab, n_out] logits).
        out_rows = V if not out_gpu else max(I, Eq + 2 * Ek)
        gpu_b = max(gpu_b, _pad(host_weight_bytes, CUDA_ALIGNMENT) + 4 * T * (E + out_rows))
    return ComputeBuffers(gpu_b, sizes.get("cpu", 0))


# --- everything at once ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LlamaCppEstimate:
    """Buffers llama.cpp allocates for one model and context. All ``*_bytes`` fields are bytes.

    ``device_bytes`` is what the GPU holds (model + KV + compute buffers on the GPU);
    ``host_bytes`` is host RAM for buffers (host model buffer, CPU KV, host compute buffer).
    """

    quant: str
    model_buffer_bytes: int
    host_buffer_bytes: int
    kv_buffer_bytes: int
    host_kv_buffer_bytes: int
    compute_buffer_bytes: int
    host_compute_buffer_bytes: int
    gguf_tensor_bytes: int
    n_gpu_layers: int
    kv_cells: int

    @property
    def device_bytes(self) -> int:
        return self.model_buffer_bytes + self.kv_buffer_bytes + self.compute_buffer_bytes

    @property
    def host_bytes(self) -> int:
        return self.host_buffer_bytes + self.host_kv_buffer_bytes + self.host_compute_buffer_bytes

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["device_bytes"] = self.device_bytes
        d["host_bytes"] = self.host_bytes
        return d


def estimate_llamacpp(spec: ModelSpec, quant: str = "q4_k_m", n_ctx: int = 4096, *, n_ubatch: int = 512,
                      parallel: int = 1, flash_attn: bool = False, n_gpu_layers: int = -1,
                      kv_dtype: str = "f16", gpu: bool = True, version: str = "current",
                      kv_unified: bool | None = None,
                      tensors: Iterable[GgufTensor] | None = None) -> LlamaCppEstimate:
    """Buffers llama.cpp reports for ``spec`` quantized as ``quant`` at ``n_ctx`` total cells.

    ``n_ctx`` is the whole KV cache (``--ctx-size``), shared by ``parallel`` sequences. ``tensors``
    overrides the derived inventory (e.g. read from a real .gguf header).
    """
    if n_ctx < 1:
        raise InvalidSpecError(f"n_ctx must be >= 1: {n_ctx}")
    if parallel < 1:
        raise InvalidSpecError(f"parallel must be >= 1: {parallel}")
    kv_dtype = "f16" if kv_dtype in (None, "auto") else kv_dtype
    ts = list(tensors) if tensors is not None else list(gguf_tensors(spec, quant))
    L = spec.num_hidden_layers
    mb = model_buffers(ts, L, n_gpu_layers, gpu)
    i_gpu_start, _ = offloaded_layers(L, n_gpu_layers)
    gpu_layers = (L - i_gpu_start) if gpu else 0
    kv_gpu = kv_buffer_bytes(spec, n_ctx, kv_dtype, n_layers=gpu_layers, flash_attn=flash_attn, version=version)
    kv_cpu = kv_buffer_bytes(spec, n_ctx, kv_dtype, n_layers=L - gpu_layers, flash_attn=flash_attn, version=version)
    # largest matmul weight left in host memory (layers not offloaded, or the output layer)
    i0, out_on_gpu = offloaded_layers(L, n_gpu_layers)
    host_w = 0
    for t in ts:
        if len(t.shape) < 2 or t.name == "token_embd.weight":
            continue
        on_host = (t.layer is not None and t.layer < i0) or (t.name == "output.weight" and not out_on_gpu)
        if on_host:
            host_w = max(host_w, t.nbytes)
    if not out_on_gpu and not any(t.name == "output.weight" for t in ts):
        host_w = max(host_w, next((t.nbytes for t in ts if t.name == "token_embd.weight"), 0))
    cb = compute_buffers(spec, n_ctx, n_ubatch, flash_attn, n_gpu_layers, gpu, parallel, kv_unified, version,
                         host_weight_bytes=host_w)
    return LlamaCppEstimate(
        quant=quant, model_buffer_bytes=mb.gpu_model_buffer_bytes, host_buffer_bytes=mb.host_model_buffer_bytes,
        kv_buffer_bytes=kv_gpu, host_kv_buffer_bytes=kv_cpu, compute_buffer_bytes=cb.gpu_compute_buffer_bytes,
        host_compute_buffer_bytes=cb.host_compute_buffer_bytes, gguf_tensor_bytes=gguf_file_tensor_bytes(ts),
        n_gpu_layers=mb.n_gpu_layers if gpu else 0, kv_cells=kv_size_cells(n_ctx, flash_attn, version))


def max_context_llamacpp(spec: ModelSpec, quant: str, gpu_memory_bytes: int, *, margin_bytes: int = 0,
                         cap: int | None = None, **kw) -> int:
    """The largest n_ctx whose GPU buffers fit in ``gpu_memory_bytes - margin_bytes``, with every
    smaller n_ctx fitting too: a multiple of 256, or ``cap`` (default and at most the model's window)
    when the whole window fits; 0 if 256 does not fit. Every buffer grows with n_ctx (KV cells,
    the reserve graph's KQ), so a binary search over multiples of 256 is exact."""
    window = spec.max_position_embeddings
    cap = window if cap is None else min(cap, window)
    budget = gpu_memory_bytes - margin_bytes

    def fits(n: int) -> bool:
        return estimate_llamacpp(spec, quant, n, **kw).device_bytes <= budget

    if fits(cap):
        return cap
    return 256 * largest_true(lambda k: fits(256 * k), 1, cap // 256)

"""The tensors of a GGUF file: ``GgufTensor``, the Hugging Face -> GGUF name mapping, the tensor
inventory ``llama-quantize`` writes for a Llama-family config, the file's tensor bytes and the
per-type counts llama.cpp prints."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import UnknownNameError
from ...model import ModelSpec, tensors
from .mixture import _fit_type, tensor_type
from .types import FTYPES, GGUF_QUANTS, tensor_bytes


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


def has_rope_freqs(spec: ModelSpec, hf_config: Mapping[str, Any] | None = None) -> bool:
    """``rope_freqs.weight`` (F32, n_rot/2) is written by convert_hf_to_gguf.py for Llama 3.1+ configs
    with ``rope_scaling.rope_type == "llama3"`` (LlamaModel.generate_extra_tensors)."""
    cfg = hf_config
    if cfg is None:
        try:
            from ...model import PRESETS, preset_config

            cfg = preset_config(spec.name) if spec.name in PRESETS else {}
        except Exception:  # pragma: no cover - presets always load
            cfg = {}
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    return isinstance(rs, Mapping) and (rs.get("rope_type") or rs.get("type")) == "llama3"


# Hugging Face tensor names -> GGUF names (convert_hf_to_gguf's tensor map for LLM_ARCH_LLAMA).
_GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


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


def gguf_tensors(
    spec: ModelSpec, quant: str, *, rope_freqs: bool | None = None, has_imatrix: bool = False
) -> tuple[GgufTensor, ...]:
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

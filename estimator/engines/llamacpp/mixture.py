"""llama-quantize's per-tensor type rules: the ggml type each 2-D weight gets in a llama_ftype
mixture (``llama_tensor_get_type`` in src/llama-quant.cpp) and the shape fallback for rows that are
not a whole number of blocks."""

from __future__ import annotations

from ...model import ModelSpec
from .types import FTYPES, GGML_TYPES

# --- mixtures ---------------------------------------------------------------------------------


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """``use_more_bits`` lambda of ``llama_tensor_get_type`` (src/llama-quant.cpp)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_FALLBACK = {
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "Q2_K": "IQ4_NL",
    "Q3_K": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
}  # llama-quant.cpp convert_incompatible_tensor switch


def _is_70b(spec: ModelSpec) -> bool:
    # llama_model::type == LLM_TYPE_70B for the llama arch: 80 layers (llama-model.cpp load_hparams).
    return spec.num_hidden_layers == 80 and spec.model_type == "llama"


def tensor_type(
    ftype: str, role: str, i_layer: int | None, spec: ModelSpec, has_output: bool, has_imatrix: bool = False
) -> str:
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

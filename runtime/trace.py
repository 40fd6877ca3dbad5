"""Trace mode: the real transformers forward under fake tensors, counting live tensor bytes.

No memory is allocated, so the full Llama 3.2 3B at 128K context is measured in seconds on a
laptop. Recipe and pitfalls (../shared/reference/memory-model.md §6):

- The model is built on ``meta`` and materialised with ``to_empty(device="meta")`` inside
  ``FakeTensorMode``; ``meta`` stands in for cuda because fake cuda tensors break on CPU-only
  torch builds (Python indexing, ``uniform_``). Tied weights are re-tied after ``to_empty``.
- SDPA on fake tensors decomposes to the MATH kernel and materialises [b, h, T, S] scores, which
  a GPU never does for this case. ``sdpa`` is therefore replaced by a stand-in registered through
  ``AttentionInterface.register`` that allocates what the CUDA flash kernel allocates: the output
  [b, T, h, d] in the query dtype and the fp32 logsumexp [b, h, T] (aten
  ``_scaled_dot_product_flash_attention``). The name has no "flash" in it, or transformers tries
  to import a flash-attn package.
- ``eager`` keeps the real eager code of the model's own module, run through a stand-in
  (``cuda_eager_attention``) whose only change is the CUDA dispatch of
  ``softmax(x, dim, dtype=float32)``: ATen (``aten/src/ATen/native/SoftMax.cpp``, ``softmax``)
  calls ``_softmax(x, dim, half_to_float=True)`` for a Half input on CUDA, with no copy of the
  scores, and converts first (``x.toType(dtype)``, a copy) everywhere else, meta included. So
  fp16 scores take the fused kernel (4 B per score element for the fp32 probabilities), bf16
  ones are copied to fp32 first (another 4 B), as on the GPU.
- bitsandbytes layers are replaced by stand-ins holding fake tensors with the exact stored
  layout (taken from bitsandbytes itself on a small CPU tensor), whose forward allocates what
  the CUDA kernels of bitsandbytes 0.50 allocate: see ``_Bnb4bit`` and ``_Bnb8bit``. Those
  transients are analytic; the result says so (``details.bnb_transients = "analytic"``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any

import torch
from torch import nn

from estimator.quant import compute_dtype

from .load import DTYPES, config_dict, hf_config
from .settings import BNB_QUANTS

DEVICE = "meta"
STANDIN_ATTN = "memest_sdpa"
STANDIN_EAGER = "memest_eager"


def flash_like_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """Allocates what transformers' sdpa_attention_forward + aten's kernels allocate on CUDA.

    Without a mask (and head_dim <= 256) GQA goes to the kernel: only the output [b, q, h, d] and
    the fp32 logsumexp [b, h, q] (freed at once). With a mask, transformers materialises K and V
    for every query head (repeat_kv) and aten converts a bool mask to a float mask in the query
    dtype (convert_boolean_attn_mask); both live for the kernel call."""
    b, h, q, _ = query.shape
    extra = []
    if attention_mask is not None or key.shape[-1] > 256:
        s_len = key.shape[-2]
        extra += [
            torch.empty(b, h, s_len, key.shape[-1], dtype=key.dtype, device=key.device),
            torch.empty(b, h, s_len, value.shape[-1], dtype=value.dtype, device=value.device),
        ]
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        extra.append(torch.empty(attention_mask.shape, dtype=query.dtype, device=query.device))
    out = torch.empty(b, q, h, value.shape[-1], dtype=query.dtype, device=query.device)
    lse = torch.empty(b, h, q, dtype=torch.float32, device=query.device)
    del lse, extra
    return out, None


def cuda_softmax(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002 (torch's signature)
    """``torch.nn.functional.softmax`` as it dispatches on CUDA (``SoftMax.cpp``, ``softmax``):
    a Half input with ``dtype=float32`` goes straight to ``_softmax(half_to_float=True)``, which
    allocates only the fp32 output; anything else keeps torch's own path."""
    if dtype == torch.float32 and isinstance(input, torch.Tensor) and input.dtype == torch.float16:
        return torch._softmax(input, dim, True)
    return _TORCH_SOFTMAX(input, dim, _stacklevel=_stacklevel, dtype=dtype)


_TORCH_SOFTMAX = torch.nn.functional.softmax


@contextlib.contextmanager
def _softmax_as_on_cuda():
    torch.nn.functional.softmax = cuda_softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = _TORCH_SOFTMAX


def cuda_eager_attention(module, *args, **kwargs):
    """The model's own ``eager_attention_forward`` (looked up in the module that defines the
    attention class, so Llama, Qwen2, Qwen3... each run their code) with softmax dispatched as
    on CUDA (``cuda_softmax``). Masks are built as for "eager" (additive, model dtype)."""
    forward = sys.modules[type(module).__module__].eager_attention_forward
    with _softmax_as_on_cuda():
        return forward(module, *args, **kwargs)


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(STANDIN_ATTN, flash_like_attention)
    # Build masks exactly as for "sdpa" (None when is_causal can be used, else a 4-D bool mask).
    AttentionMaskInterface.register(STANDIN_ATTN, sdpa_mask)
    AttentionInterface.register(STANDIN_EAGER, cuda_eager_attention)
    AttentionMaskInterface.register(STANDIN_EAGER, eager_mask)


@functools.cache
def bnb_layout(quant: str, out_features: int, in_features: int) -> tuple[tuple[str, tuple, torch.dtype], ...]:
    """(part, shape, dtype) of every tensor bitsandbytes stores for one quantized Linear.

    Taken from bitsandbytes itself: a zero weight of the real shape is quantized on CPU with the
    same functions ``Params4bit``/``Int8Params`` call (the values do not change the layout)."""
    import bitsandbytes.functional as F

    w = torch.zeros(out_features, in_features, dtype=torch.bfloat16)
    if quant == "int8":
        return (
            ("parameters", (out_features, in_features), torch.int8),
            ("quant_state", (out_features,), torch.float32),
        )
    packed, qs = F.quantize_4bit(
        w,
        blocksize=64,
        compress_statistics=quant.endswith("-dq"),
        quant_type=quant.split("-")[0],
        quant_storage=torch.uint8,
    )
    parts = [("parameters", tuple(packed.shape), packed.dtype)]
    for t in (qs.absmax, qs.code, qs.offset):
        if isinstance(t, torch.Tensor):
            parts.append(("quant_state", tuple(t.shape), t.dtype))
    if qs.state2 is not None:
        parts += [
            ("quant_state", tuple(qs.state2.absmax.shape), qs.state2.absmax.dtype),
            ("quant_state", tuple(qs.state2.code.shape), qs.state2.code.dtype),
        ]
    return tuple(parts)


class _BnbStandIn(nn.Module):
    """Holds the quantized layout as fake tensors; forward allocates the CUDA transients."""

    def __init__(self, quant: str, linear: nn.Linear, compute: torch.dtype):
        super().__init__()
        self.quant, self.compute = quant, compute
        self.out_features, self.in_features = linear.out_features, linear.in_features
        self.layout = bnb_layout(quant, self.out_features, self.in_features)
        self.stored: list[torch.Tensor] = []

    def materialise(self, device: str) -> None:
        self.stored = [torch.empty(shape, dtype=dt, device=device) for _, shape, dt in self.layout]
        self.weight = nn.Parameter(self.stored[0], requires_grad=False)


class _Bnb4bit(_BnbStandIn):
    """bitsandbytes 0.50 ``Linear4bit.forward`` -> ``gemm_4bit`` on CUDA (memory-model §4.6).

    ``x.to(compute_dtype)`` when the compute dtype differs from the input (transformers' default
    is fp32). Then either the fused kernel, which allocates only the output, or
    ``_dequant_linear_fallback``: for double-quant, ``absmax_dq`` (fp32, one per 64-block) and
    ``absmax = absmax_dq + offset`` (another), both alive until it returns; ``B_dq`` [out, in]
    in the compute dtype; ``F.linear``. The output is cast back to the input dtype.

    Dispatch: the fused kernel for M <= 4 (``_GEMM_4BIT_CUSTOM_FLOOR_M``) and, for fp32, M < 8;
    dequant + linear above M = 512 on every arch but sm121 and sm80 short-K shapes. Between 5 and
    512 the choice is a per-arch heuristic (``_gemm_4bit_use_custom_cuda``) that this stand-in
    does not model: it assumes dequant there. So the trace is exact for prompts > 512 tokens
    per forward and decode batches <= 4 (<= 7 with fp32 compute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        xc = x.to(self.compute) if x.dtype != self.compute else x
        M = xc.numel() // self.in_features
        fused = M <= 4 if self.compute != torch.float32 else M < 8
        if fused:
            out = torch.empty(*x.shape[:-1], self.out_features, dtype=self.compute, device=x.device)
        else:
            blocks = -(-self.out_features * self.in_features // 64)
            nested = []
            if self.quant.endswith("-dq"):
                nested = [torch.empty(blocks, dtype=torch.float32, device=x.device) for _ in range(2)]
            b_dq = torch.empty(self.out_features, self.in_features, dtype=self.compute, device=x.device)
            out = torch.nn.functional.linear(xc, b_dq)
            del b_dq, nested
        del xc
        return out.to(in_dtype) if out.dtype != in_dtype else out


class _Bnb8bit(_BnbStandIn):
    """bitsandbytes 0.50 ``MatMul8bitLt.forward`` on CUDA, threshold 6.0 (memory-model §4.7), in
    the order of the real code (``autograd/_functions.py``, ``backends/cuda/ops.py``,
    ``backends/default/ops.py``):

    - ``int8_vectorwise_quant(A.to(fp16))``: row_stats fp32 [M] and out_row int8 [M, K] are
      allocated first, then ``A.abs() >= threshold`` (fp16 [M, K] then bool [M, K]); the fp16 copy
      of A is an argument temporary, freed when the call returns.
    - ``int8_scaled_mm``: ``out_i32`` int32 [M, N]; ``int8_mm_dequant`` allocates fp16 [M, N] and
      returns ``.to(A.dtype)`` while both are alive: 8 B x M x N at once.
    Outlier columns (data dependent, none for random weights) are not modelled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.out_features)
        M, K, N = x.numel() // self.in_features, self.in_features, self.out_features
        dev = x.device
        a16 = x.to(torch.float16)
        sca = torch.empty(M, dtype=torch.float32, device=dev)
        ca = torch.empty(M, K, dtype=torch.int8, device=dev)
        absA = torch.empty(M, K, dtype=torch.float16, device=dev)
        mask = torch.empty(M, K, dtype=torch.bool, device=dev)
        del absA
        cols = torch.empty(0, dtype=torch.int64, device=dev)
        del mask, a16
        out_i32 = torch.empty(M, N, dtype=torch.int32, device=dev)
        out16 = torch.empty(M, N, dtype=torch.float16, device=dev)
        out = out16.to(x.dtype) if x.dtype != torch.float16 else out16
        del out16, out_i32, ca, sca, cols
        return out.view(shape)


def build(s: dict[str, Any]):
    """The model for ``s`` on meta (no storage), with bnb stand-ins where the quant needs them."""
    from transformers import AutoModelForCausalLM

    from .load import quiet

    quiet()
    _register()
    attn = {"sdpa": STANDIN_ATTN, "eager": STANDIN_EAGER}.get(s["attn"], s["attn"])
    conf = hf_config(config_dict(s["model"]), attn)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, dtype=DTYPES[compute_dtype(s["quant"])])
    model.eval()
    q = s["quant"]
    if q in BNB_QUANTS:
        cls = _Bnb8bit if q == "int8" else _Bnb4bit
        compute = torch.float16 if q == "int8" else DTYPES[s["bnb_compute_dtype"]]
        # transformers converts every nn.Linear except the output embedding (lm_head), tied or not
        # (quantizers/base.py get_keys_to_not_convert).
        for name, mod in list(model.named_modules()):
            for cname, child in list(mod.named_children()):
                full = f"{name}.{cname}" if name else cname
                if isinstance(child, nn.Linear) and full != "lm_head":
                    setattr(mod, cname, cls(q, child, compute))
    return model


def materialise(model) -> list[torch.Tensor]:
    """Inside FakeTensorMode: give every parameter and buffer fake storage on DEVICE; re-tie."""
    model.to_empty(device=DEVICE)
    model.tie_weights()
    extra: list[torch.Tensor] = []
    for mod in model.modules():
        if isinstance(mod, _BnbStandIn):
            mod.materialise(DEVICE)
            extra += mod.stored
    return extra


def stored_parts(model, extra: list[torch.Tensor]) -> dict[str, int]:
    """WeightBytes-style parts of the traced model (bnb stand-ins contribute their layout)."""
    from .load import weight_parts

    parts = weight_parts(model)
    for mod in model.modules():
        if isinstance(mod, _BnbStandIn):
            for (part, _, _), t in zip(mod.layout[1:], mod.stored[1:]):
                parts[part + "_bytes"] += t.untyped_storage().nbytes()
    parts["total_bytes"] = parts["parameters_bytes"] + parts["quant_state_bytes"] + parts["buffers_bytes"]
    return parts

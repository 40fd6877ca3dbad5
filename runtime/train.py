"""One real training step (full, LoRA, QLoRA), measured per phase: forward, backward, optimizer.

The step is the loop of ``estimator.training.settings`` (PEFT's and transformers' plain PyTorch
loop): ``grad_accum`` micro-batches of ``loss = model(input_ids, labels).loss / grad_accum;
loss.backward()`` (the output dropped before backward, as the Trainer's ``compute_loss``), then
``optimizer.step(); optimizer.zero_grad(set_to_none=True)``. Then the steady state of every later
step: ``min(grad_accum, 2)`` more micro-batches with the optimizer states present and a second
optimizer step. A phase's peak is the most over all its runs; the optimizer phase includes the
first step's state allocation.

Devices:

- ``trace``: the model is built on meta and run under ``FakeTensorMode`` (as ``runtime.trace``),
  counting live tensor bytes (``runtime.track.LiveBytes``). Stand-ins where a CUDA kernel cannot
  run on fake tensors, each allocating what the kernel allocates:

  * SDPA: a differentiable flash-attention stand-in (``FlashAttention``). Forward: output
    [b, T, h, d] and fp32 logsumexp [b, h, T], both saved with q, k, v (aten
    ``_scaled_dot_product_flash_attention``). Backward, as ``mha_bwd`` in flash-attention's
    ``csrc/flash_attn/flash_api.cpp`` (vendored by PyTorch): dq, dk, dv like q, k, v; fp32
    ``softmax_d`` [b, h, T128] and ``dq_accum`` [b, T128, h, d32] (T rounded up to 128, d to 32);
    for GQA ``dk_expanded``/``dv_expanded`` [b, T, h, d], summed into dk, dv.
  * bitsandbytes 4-bit Linear (QLoRA): ``BnbLinear4bitStandIn``, a ``bnb.nn.Linear4bit`` subclass
    (so PEFT wraps it with its bnb LoRA layer) holding the exact stored layout; forward as
    ``Linear4bit.forward`` (``x.to(compute_dtype)``, ``MatMul4Bit``, ``.to(input dtype)``) with
    ``gemm_4bit``'s CUDA transients (``runtime.trace._Bnb4bit``); backward as
    ``MatMul4Bit.backward``: ``grad_output @ dequantize_4bit(B)``, a dequantized [out, in] copy
    in the compute dtype (plus, for double quant, the fp32 absmax it dequantizes first).
  * bitsandbytes 8-bit optimizers: their own ``init_state`` creates the states (real code on fake
    tensors; paged buffers, which torch never sees, are dropped from the count and reported as
    ``paged_bytes``); the update kernel works in place and allocates nothing.
  * ``mixed_precision="bf16"``: CUDA's bf16 autocast (``runtime.autocast.Autocast``: the
    AutocastCUDA op lists and cast cache, which do nothing for ``meta`` tensors), around the
    forward as accelerate wraps it, then accelerate's own ``convert_to_fp32`` on the output.
  * ``loss="liger"``: Liger-Kernel's fused linear cross-entropy (its Triton kernel cannot run
    here), installed as ``_apply_liger_kernel_to_instance(model, rope=False, rms_norm=False,
    swiglu=False)`` would (liger-kernel 0.8.5): the base model's ``forward`` becomes
    ``liger_lce_forward`` (liger's ``transformers/model/llama.py`` ``lce_forward``: the decoder,
    then ``LigerForCausalLMLoss`` on the final norm's hidden states instead of lm_head +
    ``ForCausalLMLoss``), whose ``LigerFusedLinearCrossEntropy`` allocates what
    ``ops/fused_linear_cross_entropy.py`` allocates, forward and backward.
  * ``liger_layers``: Liger-Kernel's RMSNorm, SwiGLU and RoPE (Triton), installed where
    ``apply_liger_kernel_to_llama(model=base)`` installs them (``liger_layers_applied``): the
    stand-ins ``LigerRMSNormStandIn``, ``LigerSiLUMulStandIn``, ``LigerRopeStandIn`` allocate and
    save what ``ops/rms_norm.py``, ``ops/swiglu.py`` and ``ops/rope.py`` do.

  torch's optimizers run their own code; AdamW runs with ``foreach=True`` (its CUDA default), or
  ``fused=True`` (on the trace, torch's fused path with meta admitted to its device list).
- ``cpu``: real tensors on the CPU at any width (narrow configs for tests): weights, gradients
  and optimizer states are real; activations follow the CPU kernels (SDPA's math path).
- ``cuda``: torch.cuda peak counters per phase, NVML.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import torch
from torch import nn

from estimator.errors import EstimatorError
from estimator.training.loss import liger_chunk_size
from estimator.training.params import TARGET_MODULES
from estimator.training.settings import TrainSettings

from .settings import SettingsError

PHASES = ("load", "forward", "backward", "optimizer")
STANDIN_TRAIN_ATTN = "memest_sdpa_train"  # no "flash" in the name: transformers would look for a kernel
STANDIN_PACKED_ATTN = "memest_sdpa_packed"  # SDPA on a packed row: transformers' sdpa_mask, mem-efficient
STANDIN_FA2_ATTN = "memest_fa2_train"  # attn_implementation="flash_attention_2" (flash-attn 2.x)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------- settings


def train_settings(**kw: Any) -> dict[str, Any]:
    """The record's settings: the estimator's ``TrainSettings`` fields (validated there) plus
    ``device``. Raises SettingsError naming the field and value."""
    from estimator.model import load_model
    from estimator.training.params import parse_targets

    device = kw.pop("device", "trace")
    if device not in ("trace", "cpu", "cuda"):
        raise SettingsError(f"device must be one of trace, cpu, cuda: {device!r}")
    model = kw.pop("model", "llama-3.2-3b")
    try:
        if "targets" in kw and kw["targets"] is not None:
            kw["targets"] = parse_targets(kw["targets"])
        kw = {k: v for k, v in kw.items() if v is not None}
        if kw.get("method") == "qlora" and "quant" not in kw:
            kw["quant"] = "nf4"  # as estimate_training
        ts = TrainSettings(model=load_model(model), **kw)
    except EstimatorError as e:
        raise SettingsError(str(e)) from None
    if ts.loss == "liger" and device == "cpu":
        raise SettingsError("loss liger runs on the trace or cuda device (its kernel is Triton): 'cpu'")
    if ts.liger_layers and device == "cpu":
        raise SettingsError("liger_layers runs on the trace or cuda device (its kernels are Triton): 'cpu'")
    d = ts.to_dict()
    d.update(model=model, targets=",".join(ts.targets), device=device, engine="transformers-train")
    d["rank"], d["dropout"], d["adapter_dtype"] = ts.rank, ts.dropout, ts.adapter_dtype
    return d


# ------------------------------------------------------------------------------------ stand-ins


class FlashAttention(torch.autograd.Function):
    """What aten's flash attention allocates and saves, forward and backward (module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, rng_state=False):  # q [b, h, T, d], k/v [b, hk, S, d]
        b, h, T, d = q.shape
        out = torch.empty(b, T, h, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, h, T, dtype=torch.float32, device=q.device)
        saved = [q, k, v, out, lse]
        if rng_state:
            # flash-attn 2.x (attn_implementation="flash_attention_2"): mha_fwd allocates
            # ``rng_state`` [2] int64 on the device even without dropout, and FlashAttnFunc saves
            # it with q, k, v, out_padded, softmax_lse (flash_attn_interface.py); the backward's
            # allocations are the same as aten's vendored copy (mha_bwd)
            saved.append(torch.empty(2, dtype=torch.int64, device=q.device))
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors[:5]
        b, h, T, d = q.shape
        hk, S = k.shape[1], k.shape[2]
        dev, dt = q.device, q.dtype
        go = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        dq = torch.empty(b, T, h, d, dtype=dt, device=dev)
        dk = torch.empty(b, S, hk, d, dtype=dt, device=dev)
        dv = torch.empty(b, S, hk, v.shape[-1], dtype=dt, device=dev)
        t128 = -(-T // 128) * 128
        d32 = -(-d // 32) * 32
        softmax_d = torch.empty(b, h, t128, dtype=torch.float32, device=dev)
        dq_accum = torch.empty(b, t128, h, d32, dtype=torch.float32, device=dev)
        expanded = []
        if hk != h:
            expanded = [torch.empty(b, S, h, d, dtype=dt, device=dev), torch.empty(b, S, h, d, dtype=dt, device=dev)]
        del dq_accum, expanded, softmax_d, go
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None


class FlashAttnVarlen(torch.autograd.Function):
    """flash-attn 2.x ``flash_attn_varlen_func`` (a packed row, ``attn_implementation=
    "flash_attention_2"``), what ``csrc/flash_attn/flash_api.cpp`` allocates. Forward
    (``mha_varlen_fwd``): out like q [N, h, d], the unpadded fp32 ``softmax_lse`` [h, N] and
    ``rng_state`` [2] int64; ``FlashAttnVarlenFunc`` saves q, k, v, out, lse, cu_seqlens_q,
    cu_seqlens_k (here one tensor) and rng_state, and keeps ``max_seqlen_q``/``_k`` on the context
    (``ctx.max_seqlen_q = max_seqlen_q``): transformers passes them as one 0-dim int32 device tensor
    (``cu_seq_lens_q.diff().max()``; ``.item()`` only when tracing), alive until the backward. Backward (``FlashAttnVarlenFunc.backward``:
    dq, dk, dv ``empty_like``; ``mha_varlen_bwd``): fp32 ``softmax_d`` [h, N + 128 S] and
    ``dq_accum`` [N + 128 S, h, d rounded up to 32], and for GQA ``dk_expanded``/``dv_expanded``
    [N, h, d], summed into dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, sequences):  # q [N, h, d], k/v [N, hk, d]
        N, h, d = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(h, N, dtype=torch.float32, device=q.device)
        rng = torch.empty(2, dtype=torch.int64, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, rng)
        ctx.max_seqlen_q = ctx.max_seqlen_k = max_seqlen
        ctx.sequences = sequences
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors[:3]
        N, h, d = q.shape
        hk = k.shape[1]
        dev = q.device
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        go = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()  # maybe_contiguous
        rows = N + 128 * ctx.sequences
        softmax_d = torch.empty(h, rows, dtype=torch.float32, device=dev)
        dq_accum = torch.empty(rows, h, -(-d // 32) * 32, dtype=torch.float32, device=dev)
        expanded = []
        if hk != h:
            expanded = [torch.empty(N, h, d, dtype=q.dtype, device=dev) for _ in range(2)]
        del softmax_d, dq_accum, expanded, go
        return dq, dk, dv, None, None, None


class EfficientAttention(torch.autograd.Function):
    """aten's memory-efficient SDPA with an additive mask (a packed row under
    ``attn_implementation="sdpa"``): ``_scaled_dot_product_efficient_attention`` (attention.cu,
    ``_efficient_attention_forward``): the output [B, M, h, Kv] (returned transposed) and the fp32
    logsumexp [B, h, M rounded up to 32]; derivatives.yaml saves query, key, value, attn_bias,
    output and log_sumexp (the philox seed and offset are CPU scalars without dropout). Backward
    (attention_backward.cu, ``_scaled_dot_product_efficient_attention_backward_cuda`` ->
    ``_efficient_attention_backward``, no shared dq/dk/dv storage): ``grad_out.contiguous()``,
    grad_q, grad_k, grad_v ``at::empty`` like the [B, M, h, K] inputs, ``delta`` fp32 [B, h, M]:
    16-bit kernels on sm80+ compute it in-kernel (``kKernelComputesDelta``, kernel_backward.h),
    fp32 ones (QLoRA) get ``(grad_out.to(kFloat) * out.to(kFloat)).sum(-1).transpose(-2,
    -1).contiguous()``, whose product [B, M, h, K] and sum [B, M, h] live to the end of that
    statement; no bias gradient (the mask needs none).
    Not allocated here: the kernel's ``workspace`` (fp32 gK/gV/gQ accumulators whose size
    depends on the key-split heuristic and the GPU's kernel choice), a backward transient."""

    @staticmethod
    def forward(ctx, q, k, v, bias):  # q, k, v [B, h, M, d] (k, v repeated), bias [B, h, M, N] (a view)
        B, h, M, _ = q.shape
        out = torch.empty(B, M, h, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(B, h, -(-M // 32) * 32, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors[:3]
        B, h, M, d = q.shape
        dev = q.device
        go = grad_out.transpose(1, 2)
        go = go if go.is_contiguous() else go.contiguous()
        dq = torch.empty(B, M, h, d, dtype=q.dtype, device=dev)
        dk = torch.empty(B, k.shape[2], h, d, dtype=k.dtype, device=dev)
        dv = torch.empty(B, v.shape[2], h, v.shape[-1], dtype=v.dtype, device=dev)
        temps = []
        if q.dtype not in (torch.float16, torch.bfloat16):  # delta computed outside the kernel
            temps = [torch.empty(B, M, h, v.shape[-1], dtype=torch.float32, device=dev)]
            temps.append(torch.empty(B, M, h, dtype=torch.float32, device=dev))
        delta = torch.empty(B, h, M, dtype=torch.float32, device=dev)
        del delta, go, temps
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None


class CudaDropout(torch.autograd.Function):
    """``native_dropout`` as CUDA runs it (``aten/src/ATen/native/cuda/Dropout.cu``): the output
    and a bool mask (1 B per element), the mask saved for backward. The fake/meta decomposition
    keeps a float mask instead, which a GPU never allocates."""

    @staticmethod
    def forward(ctx, x, p):
        out = torch.empty_like(x)
        mask = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1 / (1 - p)
        return out

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None


class CudaDropoutModule(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return CudaDropout.apply(x, self.p) if self.training and self.p > 0 else x


def _cuda_dropouts(model) -> None:
    """Trace: every LoRA dropout runs as ``CudaDropout``."""
    for m in model.modules():
        d = getattr(m, "lora_dropout", None)
        if isinstance(d, nn.ModuleDict):
            for k, v in list(d.items()):
                if isinstance(v, nn.Dropout) and v.p > 0:
                    d[k] = CudaDropoutModule(v.p)


def flash_train_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa_attention_forward with the CUDA flash kernel (no mask, GQA in the kernel)."""
    if attention_mask is not None:
        raise NotImplementedError("the training trace models unpadded causal batches only (no attention mask)")
    from . import autocast

    if autocast.active():  # SDPA is lower_precision_fp under autocast: q, k, v cast to bf16 first
        query, key, value = (t.to(autocast.LOW) for t in (query, key, value))
    if query.dtype not in (torch.float16, torch.bfloat16):
        # fp32 (QLoRA after prepare_model_for_kbit_training): flash and cuDNN take 16-bit only and
        # mem-efficient refuses GQA (sdp_utils.cpp), so CUDA runs the composite math path, the
        # same aten ops that run here; then transformers' transpose(1, 2).contiguous() copies.
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    return FlashAttention.apply(query, key, value), None


def efficient_train_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' ``sdpa_attention_forward`` with a mask (a packed row's block-causal mask from
    ``sdpa_mask``) as CUDA runs it: ``use_gqa_in_sdpa`` is False with a mask, so ``repeat_kv``
    copies k and v to every head; aten's ``scaled_dot_product_attention`` picks mem-efficient
    (flash takes no mask; priority flash, efficient, math), converts the bool mask to an additive
    one in the query's dtype (``convert_boolean_attn_mask``: ``at::where``), pads its columns to a
    multiple of 8 when needed (``preprocess_mask``/``pad_bias``) and expands it to every head."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from . import autocast

    if attention_mask is None or attention_mask.dtype != torch.bool:
        raise NotImplementedError("the packed SDPA stand-in expects transformers' bool block-causal mask")
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    q, k, v = query, key, value
    if autocast.active():
        # SDPA is lower_precision_fp: AutocastCUDA casts q and the repeated k, v to bf16 before
        # the composite op runs (fresh copies, not cached: not leaves); the fp32 repeated k, v
        # stay alive as sdpa_attention_forward's locals until it returns
        q, k, v = (t.to(autocast.LOW) for t in (query, key, value))
    neg = torch.scalar_tensor(float("-inf"), dtype=q.dtype, device=q.device)
    bias = torch.where(attention_mask, 0.0, neg)
    n = bias.shape[-1]
    if n % 8:
        bias = torch.nn.functional.pad(bias, (0, 8 - n % 8))[..., :n]
    B, h, M = q.shape[:3]
    bias = bias.expand(B, h, M, k.shape[2])
    out = EfficientAttention.apply(q, k, v, bias)
    del q, k, v, bias
    return out.transpose(1, 2).contiguous(), None


def fa2_train_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sequences=0, **kwargs):
    """transformers' ``flash_attention_forward`` (integrations/flash_attention.py) with flash-attn
    2.x stand-ins: unpacked, ``flash_attn_func`` (``FlashAttention`` with its ``rng_state``);
    packed (``sequences`` > 0), ``_prepare_from_posids``: q, k, v ``.contiguous().view(-1, h, d)``
    ``cu_seqlens`` int32 [S + 1] and the 0-dim int32 max length (``prepare_fa_kwargs_from_position_ids``,
    made in every layer; its few-byte transients are not reproduced on fake tensors),
    then ``flash_attn_varlen_func``. fp32 q, k, v (QLoRA's upcast residual stream, or fp32 master
    weights' q, k after an fp32 rotary) are first cast as ``_flash_attention_forward``'s
    ``fa_peft_integration_check`` does (``_fa_target_dtype``): ``q.to(target)``, ``k.to``,
    ``v.to`` on the transposed [b, T, h, d] views (``.to`` keeps their strides; a bf16 one is
    itself), fresh copies each call that stay alive as its locals until it returns."""
    if attention_mask is not None:
        raise NotImplementedError("the training trace models unpadded batches only (no attention mask)")
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    target = _fa_target_dtype(query, module)
    if target is not None:
        q, k, v = (x.to(target) for x in (q, k, v))
    if not sequences:
        # flash_attn_func: maybe_contiguous (the last stride is 1: no copy)
        return FlashAttention.apply(*(x.transpose(1, 2) for x in (q, k, v)), True), None
    casts = (q, k, v)  # query_states, key_states, value_states in _flash_attention_forward
    q, k, v = (x.contiguous().view(-1, x.size(-2), x.size(-1)) for x in (q, k, v))
    cu = torch.empty(sequences + 1, dtype=torch.int32, device=q.device)
    max_len = torch.empty((), dtype=torch.int32, device=q.device)  # cu.diff().max()
    out = FlashAttnVarlen.apply(q, k, v, cu, max_len, sequences)
    del casts
    return out.view(1, -1, *out.shape[-2:]), None


def _fa_target_dtype(query: torch.Tensor, module) -> torch.dtype | None:
    """transformers 5.24 ``integrations/flash_attention.py`` ``get_target_dtype``: for an fp32
    query, autocast's dtype when autocast is on, else the config's dtype for a quantized model
    (``config._is_quantized``, set by the quantizer: ``quantizers/base.py``
    ``_assign_is_quantized``), else the first Linear's weight dtype."""
    from . import autocast

    if query.dtype != torch.float32:
        return None
    if autocast.active():
        return autocast.LOW
    if hasattr(module.config, "_is_quantized"):
        return module.config.dtype
    return next(m for m in module.modules() if isinstance(m, nn.Linear)).weight.dtype


def no_mask(*args, **kwargs):
    """The mask ``sdpa_mask`` gives an unpadded batch on a GPU: None (``_ignore_causal_mask_sdpa``:
    q_length == kv_length, no padding; SDPA's ``is_causal`` does the masking). Under fake tensors
    it would build a 4-D mask instead (a fake ``cache_position`` reads as tracing when no cache
    provides the offset, as with gradient checkpointing's ``use_cache=False``)."""
    return None


class LigerFusedLinearCrossEntropy(torch.autograd.Function):
    """``LigerFusedLinearCrossEntropyFunction`` (liger-kernel 0.8.5,
    ``ops/fused_linear_cross_entropy.py``) as ``LigerForCausalLMLoss`` calls it on a GPU:
    reduction "mean", no bias, no ce_weight, ``accum_dtype=None``, the Triton cross-entropy
    (``ce_impl=None``). Its forward is ``@amp_custom_fwd`` (``torch.amp.custom_fwd`` without
    ``cast_inputs``): under the Trainer's bf16 autocast it runs inside the ambient region, so its
    ``@`` matmuls are autocast and its ``out=`` ones are not. What it allocates, in order:

    forward (``fused_linear_cross_entropy_forward``, lines 49-410): ``grad_input =
    zeros_like(_input)`` [BT, H]; ``grad_weight = zeros_like(weight)`` [V, H] when the weight
    requires grad (full fine-tuning); ``loss_1d`` fp32 [BT]; ``target_mask = target !=
    ignore_index`` bool [BT], alive to the return; ``target_mask.sum().item()`` an int64 scalar.
    ``_can_use_mm_out`` (lines 31-46; CUDA, grad disabled inside ``Function.forward``): the
    hidden states and the weight share a dtype and, under autocast, that dtype is bf16 (LoRA,
    full bf16; not QLoRA's fp32 norm output and upcast embedding, nor fp32 master weights). Then
    ``logits_storage`` [chunk_size, V] in the input dtype, written per chunk by ``torch.mm(out=)``
    and ``torch.mm(out=grad_input[chunk])``; otherwise per chunk ``_input_chunk @ weight.t()``
    (autocast: bf16 casts of the chunk and of ``weight.t()``, a view that autocast never caches,
    and a fresh bf16 [chunk, V] output) and ``grad_input[chunk] = grad_logits_chunk @ weight``
    (autocast: the weight's bf16 cast, cached while the region lasts when the weight is a leaf
    that requires grad, fp32 master weights; a fresh one otherwise, QLoRA's frozen embedding; a
    bf16 [chunk, H] output copied into ``grad_input``). The Triton kernel writes the loss into
    ``loss_1d`` and the logits' gradient over the logits in place. For the weight on sm80+
    (lines 337-383): an fp32 ``grad_weight`` with bf16 logits takes ``addmm(out_dtype=float32,
    out=grad_weight)`` with ``_input_chunk.to(bf16)`` (a [chunk, H] copy when the input is fp32);
    a bf16 one ``addmm(out=grad_weight)``: no allocation but that copy. After the loop ``del
    logits_storage``; ``torch.sum(loss_1d)`` the fp32 scalar loss; ``grad_weight.to(weight.dtype)``
    is no copy. Saved: grad_input and grad_weight (``.detach()``: the same storage).

    backward (``fused_linear_cross_entropy_backward``): ``torch.equal(grad_output,
    torch.tensor(1.0, device))``, on CUDA a 4 B fp32 scalar and ``eq(...).all()`` (two bool
    scalars); when not equal (``loss / grad_accum``) ``element_mul_kernel`` scales grad_input and
    grad_weight in place. Returns the saved tensors themselves as the gradients.

    ``probe`` (set by the trace, ``_tracked``) is called with "mark" before the chunk loop and
    "forward" after it (the trace records the most live bytes in between), and with "backward"
    at ``torch.equal``: the moments the estimate's liger candidates describe, so the record
    carries the live bytes there (``training.liger_live_bytes``)."""

    probe: Any = None

    @staticmethod
    def can_use_mm_out(x, weight) -> bool:
        """``_can_use_mm_out`` as on CUDA (not ROCm) inside ``Function.forward``."""
        from . import autocast

        if torch.is_grad_enabled() or x.dtype != weight.dtype:
            return False
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return False
        if autocast.active():
            return x.dtype == autocast.LOW
        return True

    @staticmethod
    def forward(ctx, x, weight, target):
        n, h = x.shape
        v = weight.shape[0]
        dev = x.device
        chunk = liger_chunk_size(n, h, v)
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        loss_1d = torch.zeros(n, dtype=torch.float32, device=dev)
        target_mask = target != -100
        n_non_ignore = target_mask.sum()  # .item() on a GPU; data-dependent under fake tensors
        del n_non_ignore
        use_mm_out = LigerFusedLinearCrossEntropy.can_use_mm_out(x, weight)
        logits_storage = torch.empty((chunk, v), dtype=x.dtype, device=dev) if use_mm_out else None
        probe = LigerFusedLinearCrossEntropy.probe
        if probe is not None:
            probe("mark")
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            x_chunk = x[start:end]
            if logits_storage is not None:
                logits_chunk = logits_storage[: end - start]
                torch.mm(x_chunk, weight.t(), out=logits_chunk)
            else:
                logits_chunk = x_chunk @ weight.t()
            # liger_cross_entropy_kernel: loss into loss_1d[start:end], gradient over logits_chunk
            grad_logits_chunk = logits_chunk.contiguous()
            del logits_chunk
            if use_mm_out and grad_logits_chunk.dtype == grad_input.dtype:
                torch.mm(grad_logits_chunk, weight, out=grad_input[start:end])
            else:
                grad_input[start:end] = grad_logits_chunk @ weight
            if grad_weight is not None:
                grad_logits_t = grad_logits_chunk.t()
                low = (torch.float16, torch.bfloat16)
                if grad_weight.dtype == torch.float32 and grad_logits_t.dtype in low:
                    input_chunk = x_chunk if x_chunk.dtype == grad_logits_t.dtype else x_chunk.to(grad_logits_t.dtype)
                    torch.addmm(grad_weight, grad_logits_t, input_chunk, out_dtype=torch.float32, out=grad_weight)
                    del input_chunk
                elif grad_logits_t.dtype in low and grad_weight.dtype == grad_logits_t.dtype:
                    input_chunk = x_chunk if x_chunk.dtype == grad_logits_t.dtype else x_chunk.to(grad_logits_t.dtype)
                    torch.addmm(grad_weight, grad_logits_t, input_chunk, out=grad_weight)
                    del input_chunk
                else:
                    grad_weight += torch.mm(grad_logits_chunk.t(), x_chunk).float()
                del grad_logits_t
            del grad_logits_chunk, x_chunk
        if probe is not None:
            probe("forward")
        del logits_storage, target_mask
        loss = torch.sum(loss_1d)
        ctx.save_for_backward(grad_input, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight = ctx.saved_tensors
        one = torch.ones((), dtype=torch.float32, device=grad_output.device)  # torch.tensor(1.0, device)
        eq = grad_output.eq(one)  # torch.equal on CUDA (cuda_equal): eq(...).all().item()
        equal = eq.all()
        if LigerFusedLinearCrossEntropy.probe is not None:
            LigerFusedLinearCrossEntropy.probe("backward")
        del one, eq, equal
        grad_input.mul_(grad_output)  # element_mul_kernel, in place (a no-op scale when grad_output is 1)
        if grad_weight is not None:
            grad_weight.mul_(grad_output)
        return grad_input, grad_weight, None


def liger_lce_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    cache=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    logits_to_keep=0,
    **kwargs,
):
    """liger-kernel 0.8.5 ``lce_forward`` (``transformers/model/llama.py``) on transformers 5.24's
    ``LlamaForCausalLM.forward`` signature: in training with labels the logits are never
    materialised; ``LigerForCausalLMLoss`` (``transformers/model/loss_utils.py``) pads the labels
    (``pad(labels, (0, 1), value=-100)``, ``[..., 1:].contiguous()``), flattens and calls the
    fused linear cross-entropy with lm_head's weight."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    outputs = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **kwargs,
    )
    hidden_states = outputs[0]
    slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    kept = hidden_states[:, slice_indices, :]
    if not (self.training and labels is not None):
        raise NotImplementedError("the liger stand-in models the training step with labels only")
    padded = nn.functional.pad(labels, (0, 1), value=-100)
    shift_labels = padded[..., 1:].contiguous()
    flat = kept.view(-1, self.config.hidden_size)
    target = shift_labels.view(-1).to(flat.device)
    loss = LigerFusedLinearCrossEntropy.apply(flat, self.lm_head.weight, target)
    return CausalLMOutputWithPast(
        loss=loss, logits=None, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
    )


def apply_liger_loss(model) -> None:
    """Trace: swap the base model's forward for the stand-in above, as
    ``_apply_liger_kernel_to_instance`` (via the Trainer's ``apply_liger_kernel``, which unwraps
    PEFT first) binds liger's (on cuda: ``apply_liger_cuda``)."""
    import types

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.forward = types.MethodType(liger_lce_forward, base)


def apply_liger_cuda(model, layers: bool, loss: bool) -> None:
    """cuda: liger-kernel itself, in one ``_apply_liger_kernel_to_instance`` call on the base model
    as the Trainer's ``apply_liger_kernel`` makes it: RMSNorm, SwiGLU and RoPE when ``layers``
    (``liger_layers``), the fused linear cross-entropy when ``loss`` (``loss="liger"``)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        what = "liger_layers" if layers else "loss=liger"
        raise SettingsError(f"{what} on cuda needs liger-kernel installed") from None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(
        model=base, rope=layers, rms_norm=layers, swiglu=layers, fused_linear_cross_entropy=loss
    )


# the SM count a meta trace gives ``rms_norm_backward``'s fp32 partial dW [sm_count, H] (full
# fine-tuning only): torch.cuda.get_device_properties(...).multi_processor_count of an H100 SXM
# (132; A100 108, H100 PCIe 114, L40S 142, RTX 4090 128). Inside a norm's backward only.
TRACE_SM_COUNT = 132


class LigerRMSNormStandIn(torch.autograd.Function):
    """``LigerRMSNormFunction`` (liger-kernel 0.8.5 ``ops/rms_norm.py``) as ``LigerRMSNorm`` calls
    it for Llama: offset 0.0, casting_mode "llama", in_place True, row_mode None.

    forward (``@ensure_contiguous``: every tensor argument ``.contiguous()``, no copy for the
    contiguous residual stream; ``rms_norm_forward``): ``X.view(-1, H)``; ``Y = torch.empty(
    (n_rows, n_cols), dtype=X.dtype)``; ``RSTD = torch.empty(n_rows, dtype=float32)`` (fp32 in
    the llama casting mode); the Triton kernel writes both. Saves ``(X, W, RSTD)``: the input
    itself (a view), not an fp32 copy. Returns ``Y.view(*shape)``.

    backward (``rms_norm_backward``): ``dY.contiguous()`` (ensure_contiguous), ``dY.view(-1, H)``;
    ``_dW = torch.empty((sm_count, n_cols), dtype=float32)`` only when the weight needs a
    gradient (``needs_dw = ctx.needs_input_grad[1]``: full fine-tuning); ``dX = dY`` (in_place:
    the kernel writes dX over dY, no allocation); then ``_dW.sum(dim=0).to(W.dtype)`` (an fp32
    [H] and its bf16 copy)."""

    @staticmethod
    def forward(ctx, X, W, eps):
        X = X.contiguous()
        shape = X.shape
        X = X.view(-1, shape[-1])
        n_rows, n_cols = X.shape
        Y = torch.empty((n_rows, n_cols), dtype=X.dtype, device=X.device)
        RSTD = torch.empty(n_rows, dtype=torch.float32, device=X.device)
        ctx.save_for_backward(X, W, RSTD)
        return Y.view(*shape)

    @staticmethod
    def backward(ctx, dY):
        X, W, RSTD = ctx.saved_tensors
        dY = dY.contiguous()
        shape = dY.shape
        dY = dY.view(-1, shape[-1])
        dW = None
        if ctx.needs_input_grad[1]:
            sm = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else TRACE_SM_COUNT
            _dW = torch.empty((sm, dY.shape[1]), dtype=torch.float32, device=W.device)
            dW = _dW.sum(dim=0).to(W.dtype)
            del _dW
        dX = dY  # in_place=True: the kernel writes dX over dY
        return dX.view(*shape), dW, None


class LigerSiLUMulStandIn(torch.autograd.Function):
    """``LigerSiLUMulFunction`` (liger-kernel 0.8.5 ``ops/swiglu.py``), gate and down multipliers
    1.0. forward (``@ensure_contiguous``; ``swiglu_forward``): ``a.view(-1, n)``, ``b.view(-1, n)``,
    ``c = torch.empty_like(a)``; saves ``(a, b)`` (gate's and up's outputs; no silu output).
    backward (``swiglu_backward``): ``dc.contiguous()``; the kernel writes da over ``a`` and db over
    ``b`` in place and returns them: no allocation."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        shape = a.shape
        a, b = a.view(-1, shape[-1]), b.view(-1, shape[-1])
        c = torch.empty_like(a)
        ctx.save_for_backward(a, b)
        return c.view(*shape)

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        dc = dc.contiguous()
        return a.view(*dc.shape), b.view(*dc.shape)


class LigerRopeStandIn(torch.autograd.Function):
    """``LigerRopeFunction`` (liger-kernel 0.8.5 ``ops/rope.py``, the Triton backend that
    ``dispatch("rope")`` picks without the ``cutedsl`` extra). forward (``rope_forward``): cos,
    sin [1, T, d] stay 3-D; ``q.transpose(1, 2).contiguous()`` (and k): the projections' [b, T,
    h, d] layout, so no copy; the kernel rotates them in place; saves ``(cos, sin)`` (the rotary
    embedding's, already alive); returns ``q.transpose(1, 2)``, ``k.transpose(1, 2)``. backward
    (``rope_backward``): ``dq.transpose(1, 2).contiguous()`` (and dk; a copy only when the
    gradient is not in that layout), rotated in place, returned transposed back."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2)

    @staticmethod
    def backward(ctx, dq, dk):
        dq, dk = dq.transpose(1, 2).contiguous(), dk.transpose(1, 2).contiguous()
        return dq.transpose(1, 2), dk.transpose(1, 2), None, None


def liger_rms_norm_forward(self, hidden_states):
    """``LigerRMSNorm.forward`` as ``_patch_rms_norm_module`` binds it (monkey_patch.py)."""
    return LigerRMSNormStandIn.apply(hidden_states, self.weight, self.variance_epsilon)


def liger_swiglu_forward(self, x):
    """``LigerSwiGLUMLP.forward`` (transformers/swiglu.py): ``down_proj(_swiglu_dispatch(gate_proj(x),
    up_proj(x)))``; PEFT's LoRA wrappers of the three projections stay in place."""
    return self.down_proj(LigerSiLUMulStandIn.apply(self.gate_proj(x), self.up_proj(x)))


def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """``liger_rotary_pos_emb`` (transformers/rope.py)."""
    return LigerRopeStandIn.apply(q, k, cos, sin)


@contextlib.contextmanager
def liger_layers_applied(model):
    """Liger's RMSNorm, SwiGLU and RoPE, as ``apply_liger_kernel_to_llama(rope=True,
    rms_norm=True, swiglu=True, model=base)`` installs them on an instance (the Trainer's
    ``apply_liger_kernel`` unwraps PEFT first, after ``get_peft_model``): the module-level
    ``modeling_llama.apply_rotary_pos_emb`` replaced, and ``forward`` bound on the final norm, each
    layer's two norms and each layer's MLP (``_patch_rms_norm_module``, ``_patch_swiglu_module``).
    Trace: the stand-ins above, the module global restored on exit (on cuda:
    ``apply_liger_cuda``)."""
    import types

    from transformers.models.llama import modeling_llama

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, base.base_model_prefix, base)
    norms = [inner.norm] + [
        n for layer in inner.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    for m in norms:
        m.forward = types.MethodType(liger_rms_norm_forward, m)
    for layer in inner.layers:
        layer.mlp.forward = types.MethodType(liger_swiglu_forward, layer.mlp)
    saved = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = liger_rotary_pos_emb
    try:
        yield model
    finally:
        modeling_llama.apply_rotary_pos_emb = saved


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(STANDIN_TRAIN_ATTN, flash_train_attention)
    AttentionMaskInterface.register(STANDIN_TRAIN_ATTN, no_mask)
    # a packed row: transformers' own sdpa_mask builds the block-causal bool mask [1, 1, N, N]
    # (create_causal_mask detects the packing from position_ids; allow_is_causal_skip is off)
    AttentionInterface.register(STANDIN_PACKED_ATTN, efficient_train_attention)
    AttentionMaskInterface.register(STANDIN_PACKED_ATTN, sdpa_mask)
    # flash_attention_2's mask function returns None without padding (flash_attention_mask)
    AttentionMaskInterface.register(STANDIN_FA2_ATTN, no_mask)


def _attention_name(s: dict[str, Any], trace: bool) -> str:
    """The model's attn_implementation: the setting's, or on a trace the stand-in for it (the
    flash-attn stand-in bound to the packed row's sequence count)."""
    impl = s.get("attn_implementation", "sdpa")
    packed = bool(s.get("packed"))
    if not trace:
        return impl
    if impl == "flash_attention_2":
        from transformers import AttentionInterface

        seqs = s["micro_batch"] if packed else 0
        AttentionInterface.register(STANDIN_FA2_ATTN, functools.partial(fa2_train_attention, sequences=seqs))
        return STANDIN_FA2_ATTN
    return STANDIN_PACKED_ATTN if packed else STANDIN_TRAIN_ATTN


class _MatMul4bit(torch.autograd.Function):
    """bitsandbytes 0.50 ``MatMul4Bit`` with the CUDA ``gemm_4bit`` transients (trace stand-in)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        out_f, in_f = layer.out_features, layer.in_features
        M = x.numel() // in_f
        if M <= 4:  # the fused kernel: the output only (runtime.trace._Bnb4bit)
            return torch.empty(*x.shape[:-1], out_f, dtype=x.dtype, device=x.device)
        nested = _absmax_dq(layer, x.device)
        b_dq = torch.empty(out_f, in_f, dtype=x.dtype, device=x.device)
        out = torch.nn.functional.linear(x, b_dq, layer.bias)  # gemm_4bit's bias goes into the same output
        del b_dq, nested
        return out

    @staticmethod
    def backward(ctx, grad_output):
        layer = ctx.layer
        # grad_A = grad_output @ dequantize_4bit(B).to(grad_output.dtype) (the quant state's dtype
        # is the compute dtype here, so .to() is no copy)
        nested = _absmax_dq(layer, grad_output.device)
        b_dq = torch.empty(layer.out_features, layer.in_features, dtype=grad_output.dtype, device=grad_output.device)
        del nested
        grad_a = torch.matmul(grad_output, b_dq)
        del b_dq
        return grad_a, None


def _absmax_dq(layer, device) -> list[torch.Tensor]:
    """Double quant: ``dequantize_4bit`` first dequantizes the 8-bit absmax (fp32 per 64-block),
    then adds the offset (another fp32 tensor), both alive until it returns."""
    if not layer.quant.endswith("-dq"):
        return []
    blocks = -(-layer.out_features * layer.in_features // 64)
    return [torch.empty(blocks, dtype=torch.float32, device=device) for _ in range(2)]


@functools.cache
def _bnb_standin_class():
    import bitsandbytes as bnb

    class BnbLinear4bitStandIn(bnb.nn.Linear4bit):
        """A ``bnb.nn.Linear4bit`` (so PEFT dispatches its bnb LoRA layer) holding the exact stored
        layout as fake tensors; forward as ``Linear4bit.forward`` on CUDA."""

        def __init__(self, quant: str, linear: nn.Linear, compute: torch.dtype):
            nn.Module.__init__(self)
            from .trace import bnb_layout

            self.quant, self.compute_dtype = quant, compute
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.layout = bnb_layout(quant, self.out_features, self.in_features)
            self.bias = (
                nn.Parameter(torch.empty(self.out_features, dtype=compute, device="meta"), requires_grad=False)
                if linear.bias is not None
                else None
            )
            self.stored: list[torch.Tensor] = []
            self.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8, device="meta"), requires_grad=False)
            self._mark_weight()

        def _mark_weight(self) -> None:
            """The Params4bit attributes PEFT's dispatch_bnb_4bit reads."""
            self.weight.quant_type = self.quant.split("-")[0]
            self.weight.compress_statistics = self.quant.endswith("-dq")

        def materialise(self, device: str) -> None:
            self.stored = [torch.empty(shape, dtype=dt, device=device) for _, shape, dt in self.layout]
            self.weight = nn.Parameter(self.stored[0], requires_grad=False)
            self._mark_weight()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inp_dtype = x.dtype
            x = x.to(self.compute_dtype)
            if self.bias is not None and self.bias.dtype != x.dtype:
                self.bias.data = self.bias.data.to(x.dtype)  # Linear4bit.forward, in place, for good
            return _MatMul4bit.apply(x, self).to(inp_dtype)

    return BnbLinear4bitStandIn


# ----------------------------------------------------------------------------------- the model


def build(s: dict[str, Any], device: str):
    """The model for the setting: built from the config (meta for trace; real on cpu/cuda),
    QLoRA stand-ins (trace), prepared for training, with PEFT LoRA applied. Returns
    (model, stored extra tensors)."""
    from transformers import AutoModelForCausalLM

    from .load import config_dict, hf_config, quiet

    quiet()
    trace = device == "meta"
    if trace:
        _register()
    attn = _attention_name(s, trace)
    conf = hf_config(config_dict(s["model"]), attn)
    dt = torch.float32 if s["quant"] == "fp32" else torch.bfloat16  # fp32: full fine-tuning's master weights
    if trace:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(conf, dtype=dt)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(conf, dtype=dt)
    if s["method"] == "qlora":
        # as from_pretrained's bnb quantizer marks it (quantizers/base.py _assign_is_quantized):
        # flash_attention_2 then casts fp32 q, k, v to config.dtype (get_target_dtype)
        model.config._is_quantized = True
        if not trace:
            _quantize_real(model, s["quant"], device)
        else:
            cls = _bnb_standin_class()
            for name, mod in list(model.named_modules()):
                for cname, child in list(mod.named_children()):
                    full = f"{name}.{cname}" if name else cname
                    if isinstance(child, nn.Linear) and full != "lm_head":
                        setattr(mod, cname, cls(s["quant"], child, dt))
    return model


def _quantize_real(model, quant: str, device: str) -> None:
    """Every nn.Linear but lm_head -> bitsandbytes Linear4bit, quantized on ``device``."""
    import bitsandbytes as bnb

    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, nn.Linear) and full != "lm_head":
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=quant.endswith("-dq"),
                    quant_type=quant.split("-")[0],
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data.to("cpu"),
                    requires_grad=False,
                    quant_type=quant.split("-")[0],
                    compress_statistics=quant.endswith("-dq"),
                )
                setattr(mod, cname, q.to(device))
    model.is_loaded_in_4bit = True


def prepare(model, s: dict[str, Any]):
    """Freeze/upcast (QLoRA: ``prepare_model_for_kbit_training``), gradient checkpointing, PEFT."""
    model = _prepare(model, s)
    if s.get("mixed_precision", "off") != "off":
        from .autocast import recompute_under_autocast

        for m in model.modules():
            f = getattr(m, "_gradient_checkpointing_func", None)
            if f is not None and getattr(m, "gradient_checkpointing", False):
                m._gradient_checkpointing_func = recompute_under_autocast(f)
    return model


def _prepare(model, s: dict[str, Any]):
    gc = s["grad_checkpointing"]
    gc_kwargs = {"use_reentrant": gc == "reentrant"}
    if s["method"] == "qlora":
        from peft import prepare_model_for_kbit_training

        model.is_loaded_in_4bit = True
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc != "off", gradient_checkpointing_kwargs=gc_kwargs
        )
    elif gc != "off":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        if gc == "reentrant" and s["method"] == "lora":
            model.enable_input_require_grads()  # what the Trainer does for PEFT + reentrant checkpointing
    if s["method"] == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        return model
    from peft import LoraConfig, get_peft_model

    targets = [TARGET_MODULES[t] for t in s["targets"].split(",")]
    cfg = LoraConfig(
        r=s["rank"],
        lora_alpha=2 * s["rank"],
        target_modules=targets,
        lora_dropout=s["dropout"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg, autocast_adapter_dtype=s["adapter_dtype"] == "fp32")
    model.train()
    return model


@contextlib.contextmanager
def _fused_on_meta():
    """Admit the meta device to torch's list of fused-kernel devices (``optimizer.
    _device_dtype_check_for_fused``, checked at construction and at each state init)."""
    from torch.optim import optimizer as optim_mod

    real = optim_mod._get_fused_kernels_supported_devices
    optim_mod._get_fused_kernels_supported_devices = lambda: [*real(), "meta"]
    try:
        yield
    finally:
        optim_mod._get_fused_kernels_supported_devices = real


class _MetaFusedAdamW(torch.optim.AdamW):
    """torch's fused AdamW on the trace's meta tensors: its own ``_fused_adamw`` path runs
    (``step`` on the device, ``exp_avg``/``exp_avg_sq`` like the parameter, ``_fused_adamw_`` in
    place, which has a meta kernel); only the device check is widened to admit meta."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        with _fused_on_meta():
            super().__init__(*args, **kw)

    def step(self, closure=None):  # type: ignore[override]
        with _fused_on_meta():
            return super().step(closure)


def make_optimizer(model, s: dict[str, Any], device: str):
    params = [p for p in model.parameters() if p.requires_grad]
    o = s["optimizer"]
    if o == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)
    if o == "adamw-fused":
        if device == "meta":
            return _MetaFusedAdamW(params, lr=1e-4, fused=True)
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if o == "sgd":
        return torch.optim.SGD(params, lr=1e-4, foreach=True)
    if o == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=True)
    if o == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-4, relative_step=False, scale_parameter=False)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if o == "paged-adamw-8bit" else bnb.optim.AdamW8bit
    if device != "meta":
        return cls(params, lr=1e-4)
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # its constructor builds the quantile maps from data
        return cls(params, lr=1e-4)


def _bnb_step_standin(opt, tracker) -> int:
    """Trace: bitsandbytes' own ``init_state`` for every parameter; the in-place update kernel is
    skipped. A paged buffer (``get_state_buffer``: ``is_paged`` and at least 1e5 elements) is CUDA
    managed memory from ``F.get_paged``, which torch's allocator never sees: here it is made as a
    plain tensor and taken out of the count at once, with the phase's peak and the allocator's
    event list as they were before it (so not even its own moment counts). Returns the paged bytes."""
    paged_flag = getattr(opt, "is_paged", False)
    opt.is_paged = False
    paged = 0
    real_get = opt.get_state_buffer

    def get_state_buffer(p, dtype=torch.float32):
        nonlocal paged
        if not (paged_flag and p.numel() >= 1e5):
            return real_get(p, dtype=dtype)
        before = (tracker.peak, tracker.peak_rounded, tracker.peak_detail, len(tracker.events))
        buf = real_get(p, dtype=dtype)
        buf.is_paged = True  # as F.get_paged marks it (static_bytes leaves it out of the states)
        paged += buf.untyped_storage().nbytes()
        tracker.untrack(buf)
        tracker.peak, tracker.peak_rounded, tracker.peak_detail, n_events = before
        del tracker.events[n_events:]
        return buf

    opt.get_state_buffer = get_state_buffer
    try:
        for gindex, group in enumerate(opt.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None or len(opt.state[p]) > 0:
                    continue
                opt.init_state(group, p, gindex, pindex)
    finally:
        del opt.get_state_buffer  # the instance attribute; the class's method again
        opt.is_paged = paged_flag
    return paged


# ---------------------------------------------------------------------------------- the step


def run_step(model, opt, s: dict[str, Any], device: str, phase, tracker=None) -> dict[str, Any]:
    """The loop of the module docstring. ``phase(name)`` is called at each phase boundary."""
    b, T, accum = s["micro_batch"], s["seq_len"], s["grad_accum"]
    vocab = (
        model.config.vocab_size if not hasattr(model, "get_base_model") else model.get_base_model().config.vocab_size
    )
    g = torch.Generator(device="cpu").manual_seed(0)
    info: dict[str, Any] = {"paged_bytes": 0}
    mixed = s.get("mixed_precision", "off") != "off"

    packed = bool(s.get("packed"))

    def micro() -> None:
        if packed:
            # DataCollatorWithFlattening: one row of the b sequences, position_ids restarting at 0
            # per sequence, labels = the ids with -100 at each sequence's first token; the
            # Trainer's use_cache=False (TrainingArguments.use_cache)
            cpu_ids = torch.randint(0, vocab, (1, b * T), generator=g)
            cpu_labels = cpu_ids.clone()
            cpu_labels[:, ::T] = -100
            ids = cpu_ids.to(device)
            kw = {
                "position_ids": torch.arange(T).repeat(b).unsqueeze(0).to(device),
                "labels": cpu_labels.to(device),
                "use_cache": False,
            }
            if tracker is not None:
                tracker.track(kw["position_ids"], "position_ids")
                tracker.track(kw["labels"], "labels")
        else:
            ids = torch.randint(0, vocab, (b, T), generator=g).to(device)
            kw = {"labels": ids}
        if tracker is not None:
            tracker.track(ids, "input_ids")
        phase("forward")
        if mixed:
            # the Trainer's bf16=True: accelerate 1.16 prepare_model wraps the forward in autocast
            # and convert_outputs_to_fp32 (16-bit outputs, the logits, copied to fp32)
            from accelerate.utils.operations import convert_to_fp32

            with _autocast(device):
                out = model(input_ids=ids, **kw)
            loss = convert_to_fp32(out).loss
            del out
        else:
            loss = model(input_ids=ids, **kw).loss
        if accum > 1:
            loss = loss / accum
        phase("backward")
        loss.backward()
        del loss, ids, kw

    for _ in range(min(accum, 2)):
        micro()
    phase("optimizer")
    _step(opt, s, device, tracker, info, model)
    opt.zero_grad(set_to_none=True)
    for _ in range(min(accum, 2)):  # the steady state: states present (and gradients from micro-batch 2 on)
        micro()
    # a second step: every state exists before it starts (a first step creates them one by one)
    phase("optimizer")
    _step(opt, s, device, tracker, info, model)
    opt.zero_grad(set_to_none=True)
    phase(None)
    return info


def _autocast(device: str):
    """bf16 autocast on the device: the stand-in on fake tensors (runtime.autocast), torch's own
    on cpu (its CPU op lists) and cuda."""
    if device == "meta":
        from .autocast import Autocast

        return Autocast()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def _step(opt, s: dict[str, Any], device: str, tracker, info: dict[str, Any], model) -> None:
    info["gradients_bytes"] = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
    if s["optimizer"] in ("adamw-8bit", "paged-adamw-8bit") and device == "meta":
        info["paged_bytes"] = max(info["paged_bytes"], _bnb_step_standin(opt, tracker))
    else:
        opt.step()


# ------------------------------------------------------------------------------- measurement


def _empty(s: dict[str, Any]) -> dict[str, Any]:
    from estimator.report import PHASE_FIELDS

    return {
        "settings": s,
        "status": "ok",
        "error": None,
        **{f: None for f in PHASE_FIELDS},
        "phases": {p: {f: None for f in PHASE_FIELDS} for p in PHASES},
        "training": {},
        "counters": {},
        "details": {},
        "environment": None,
    }


def static_bytes(model, opt) -> dict[str, int]:
    """Tensor bytes by what they are: base weights (parameters, quant state, buffers), adapter
    weights, gradients and optimizer states (torch-visible), each storage once."""
    from .load import stored_tensors

    seen: set[int] = set()

    def nb(t) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        st = t.untyped_storage()
        if st._cdata in seen or getattr(t, "is_paged", False):
            return 0
        seen.add(st._cdata)
        return st.nbytes()

    adapter = sum(nb(p) for n, p in model.named_parameters() if "lora_" in n)
    base = 0
    for _, _, t in stored_tensors(model):
        base += nb(t)
    for m in model.modules():
        for t in getattr(m, "stored", [])[1:]:
            base += nb(t)
    grads = sum(nb(p.grad) for p in model.parameters() if p.grad is not None)
    states = 0
    if opt is not None:
        fused = bool(opt.defaults.get("fused"))
        for st in opt.state.values():
            for k, v in st.items():
                # torch keeps AdamW's step on the CPU unless fused or capturable (adam.py _init_group)
                if isinstance(v, torch.Tensor) and (k != "step" or fused):
                    states += nb(v)
    return {
        "weights_bytes": base,
        "adapter_weights_bytes": adapter,
        "gradients_bytes": grads,
        "optimizer_states_bytes": states,
    }


def train_measure(s: dict[str, Any]) -> dict[str, Any]:
    """Measure one training step (never raises for a failed run: status oom / error)."""
    from .measure import environment, failure_status

    r = _empty(s)
    r["environment"] = environment(s["device"])
    t0 = time.perf_counter()
    try:
        {"trace": _run_trace, "cpu": _run_live, "cuda": _run_cuda}[s["device"]](s, r)
    except Exception as e:
        r["status"] = failure_status(e)
        r["error"] = f"{type(e).__name__}: {e}"[:2000]
    r["details"]["wall_s"] = round(time.perf_counter() - t0, 3)
    return r


def _device_bytes_class():
    from .track import LiveBytes, storage_key

    class DeviceBytes(LiveBytes):
        """LiveBytes counting only tensors on the measured device (a trace's CPU scalars, such as
        AdamW's CPU ``step``, are host memory), with ``untrack`` for memory torch never allocates."""

        def __init__(self, device: str, detail: bool = False):
            super().__init__(detail=detail)
            self.device = device

        def track(self, t, op: str = "external") -> None:
            if isinstance(t, torch.Tensor) and (self.device == "cpu" or t.device.type != "cpu"):
                super().track(t, op)

        def untrack(self, t: torch.Tensor) -> None:
            self._free(storage_key(t))

    return DeviceBytes


def _tracked(s: dict[str, Any], r: dict[str, Any], device: str, model) -> None:
    """trace and cpu: the step under LiveBytes, each phase's live peak (``model`` as built)."""
    DeviceBytes = _device_bytes_class()
    if device != "meta":
        model = prepare(model, s)
    opt = make_optimizer(model, s, device)
    tracker = DeviceBytes(device, detail=True)
    st = static_bytes(model, opt)
    for p in model.parameters():
        tracker.track(p, "weights")
    for buf in model.buffers():
        tracker.track(buf, "weights")
    for m in model.modules():
        for t in getattr(m, "stored", []):
            tracker.track(t, "weights")
    load = tracker.live
    ph = r["phases"]
    ph["load"].update(weights_bytes=st["weights_bytes"] + st["adapter_weights_bytes"], kv_cache_bytes=0)
    ph["load"]["peak_allocated_bytes"] = tracker.live_rounded
    cur: dict[str, Any] = {"name": None}
    raw: dict[str, int] = {}
    end_live: dict[str, list[int]] = {}
    detail: dict[str, list] = {}

    def phase(name: str | None) -> None:
        prev = cur["name"]
        if prev is not None:
            if tracker.peak_rounded >= (ph[prev]["peak_allocated_bytes"] or 0):
                ph[prev]["peak_allocated_bytes"] = tracker.peak_rounded
                detail[prev] = tracker.peak_detail
            raw[prev] = max(raw.get(prev, 0), tracker.peak)
            end_live.setdefault(prev, []).append(tracker.live)
        tracker.reset_peak()
        cur["name"] = name

    liger: dict[str, int] = {}
    if s.get("loss") == "liger":

        def probe(name: str) -> None:
            if name == "mark":  # the chunk loop starts: its most live bytes are the forward's moment
                tracker.mark()
                return
            live = tracker.high if name == "forward" else tracker.live
            liger[name] = max(liger.get(name, 0), live)

        LigerFusedLinearCrossEntropy.probe = probe
    try:
        with tracker:
            info = run_step(model, opt, s, device, phase, tracker)
    finally:
        LigerFusedLinearCrossEntropy.probe = None
    final = static_bytes(model, opt)
    # weights after the step: a 4-bit Linear's bias is cast back to bf16 by its first forward
    w = final["weights_bytes"] + final["adapter_weights_bytes"]
    for p in ("forward", "backward", "optimizer"):
        ph[p].update(weights_bytes=w, kv_cache_bytes=0, activations_bytes=None)
    r["training"] = {
        "weights_bytes": final["weights_bytes"],
        "adapter_weights_bytes": final["adapter_weights_bytes"],
        "weights_at_load_bytes": st["weights_bytes"],
        "gradients_bytes": info["gradients_bytes"],
        "optimizer_states_bytes": final["optimizer_states_bytes"],
        "paged_bytes": info["paged_bytes"],
        "load_live_bytes": load,
        "peak_live_bytes": {p: raw[p] for p in raw},
        "end_live_bytes": end_live,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if liger:
        r["training"]["liger_live_bytes"] = liger  # live bytes at liger's forward and backward moments
    r["weights_bytes"] = w
    r["kv_cache_bytes"] = 0
    best = max(raw, key=lambda n: raw[n])
    r["peak_allocated_bytes"] = max(ph[p]["peak_allocated_bytes"] for p in ("forward", "backward", "optimizer"))
    r["activations_bytes"] = None
    from .measure import _summarise

    r["details"].update(peak_live_bytes=raw[best], peak_phase=best, peak_tensors=_summarise(detail.get(best, [])))


def _materialised(model, device: str):
    if device != "meta":
        return model
    model.to_empty(device="meta")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "lm_head", None)
    if head is not None and hasattr(head, "base_layer") and base.config.tie_word_embeddings:
        # PEFT wraps a tied lm_head (LoRA on lm_head): its base layer keeps the embedding's
        # weight (transformers' tie_weights cannot set ``weight`` on the wrapper)
        head.base_layer.weight = base.get_input_embeddings().weight
    else:
        model.tie_weights()
    for m in model.modules():
        if hasattr(m, "materialise") and hasattr(m, "layout"):
            m.materialise("meta")
    return model


def _run_trace(s: dict[str, Any], r: dict[str, Any]) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    r["counters"] = {
        "peak_allocated_bytes": "peak live tensor bytes under FakeTensorMode, each rounded to 512 B",
        "peak_live_bytes": "the same, unrounded (details)",
    }
    r["details"]["attention"] = {
        (False, "sdpa"): "flash stand-in (forward and backward allocations of flash_api.cpp)",
        (True, "sdpa"): "transformers' sdpa_mask, repeat_kv, mem-efficient stand-in (attention.cu)",
        (False, "flash_attention_2"): "flash-attn 2 stand-in (flash_api.cpp mha_fwd/mha_bwd, rng_state)",
        (True, "flash_attention_2"): "flash-attn 2 varlen stand-in (mha_varlen_fwd/mha_varlen_bwd)",
    }[(bool(s.get("packed")), s.get("attn_implementation", "sdpa"))]
    r["details"]["dropout"] = "CUDA native_dropout stand-in (bool mask)" if s["dropout"] else None
    # built, prepared and wrapped by PEFT on meta, outside the fake mode (PEFT moves its adapters
    # to the base layer's device, which a fake tensor cannot be swapped to); then materialised
    model = prepare(build(s, "meta"), s)
    _cuda_dropouts(model)
    if s.get("loss") == "liger":
        r["details"]["loss"] = "liger fused linear cross-entropy stand-in (liger-kernel 0.8.5)"
        apply_liger_loss(model)
    layers = contextlib.nullcontext()
    if s.get("liger_layers"):
        r["details"]["liger_layers"] = "liger RMSNorm, SwiGLU, RoPE stand-ins (liger-kernel 0.8.5)"
        layers = liger_layers_applied(model)
    with layers, FakeTensorMode(allow_non_fake_inputs=True):
        _tracked(s, r, "meta", _materialised(model, "meta"))


def _run_live(s: dict[str, Any], r: dict[str, Any]) -> None:
    r["counters"] = {"peak_allocated_bytes": "peak live bytes of real CPU tensors, each rounded to 512 B"}
    r["details"]["attention"] = "torch sdpa on CPU (its kernels, not CUDA's)"
    _tracked(s, r, "cpu", build(s, "cpu"))


def _run_cuda(s: dict[str, Any], r: dict[str, Any]) -> None:
    from .measure import _nvml_used, nvml_baseline

    nvml_baseline()
    r["counters"] = {
        "peak_allocated_bytes": "torch.cuda.max_memory_allocated() per phase (reset at each boundary)",
        "peak_reserved_bytes": "torch.cuda.max_memory_reserved()",
        "device_used_bytes": "NVML used memory of this process at the end of the phase",
    }
    model = prepare(build(s, "cuda"), s)
    if s.get("liger_layers") or s.get("loss") == "liger":
        apply_liger_cuda(model, bool(s.get("liger_layers")), s.get("loss") == "liger")
    opt = make_optimizer(model, s, "cuda")
    torch.cuda.synchronize()
    st = static_bytes(model, opt)
    ph = r["phases"]
    w = st["weights_bytes"] + st["adapter_weights_bytes"]
    ph["load"].update(
        weights_bytes=w,
        kv_cache_bytes=0,
        peak_allocated_bytes=torch.cuda.memory_allocated(),
        peak_reserved_bytes=torch.cuda.memory_reserved(),
        device_used_bytes=_nvml_used()[0],
    )
    torch.cuda.reset_peak_memory_stats()
    cur: dict[str, Any] = {"name": None}

    def phase(name: str | None) -> None:
        prev = cur["name"]
        if prev is not None:
            torch.cuda.synchronize()
            a, res = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            p = ph[prev]
            p.update(
                weights_bytes=w,
                kv_cache_bytes=0,
                peak_allocated_bytes=max(a, p["peak_allocated_bytes"] or 0),
                peak_reserved_bytes=max(res, p["peak_reserved_bytes"] or 0),
                device_used_bytes=max(_nvml_used()[0] or 0, p["device_used_bytes"] or 0) or None,
            )
            torch.cuda.reset_peak_memory_stats()
        cur["name"] = name

    info = run_step(model, opt, s, "cuda", phase)
    final = static_bytes(model, opt)
    r["training"] = {
        "weights_bytes": final["weights_bytes"],
        "adapter_weights_bytes": final["adapter_weights_bytes"],
        "weights_at_load_bytes": st["weights_bytes"],
        "gradients_bytes": info["gradients_bytes"],
        "optimizer_states_bytes": final["optimizer_states_bytes"],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    r["weights_bytes"], r["kv_cache_bytes"] = w, 0
    for f in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
        vals = [ph[p][f] for p in ("forward", "backward", "optimizer") if ph[p][f] is not None]
        r[f] = max(vals) if vals else None

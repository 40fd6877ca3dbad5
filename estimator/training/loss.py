"""Liger-Kernel's fused linear cross-entropy (``loss="liger"``), by mechanism.

The HF Trainer's ``use_liger_kernel=True`` calls liger's ``_apply_liger_kernel_to_instance``,
which binds liger's ``lce_forward`` as the model's ``forward``: in training with labels it never
materialises the logits and calls ``LigerForCausalLMLoss`` on the final norm's hidden states and
lm_head's weight, which runs ``LigerFusedLinearCrossEntropyFunction``. Modelled from
liger-kernel 0.8.5 (``liger_kernel/transformers/model/llama.py`` ``lce_forward``,
``transformers/model/loss_utils.py`` ``LigerForCausalLMLoss``,
``ops/fused_linear_cross_entropy.py``), as it runs on an sm80+ GPU with reduction "mean" (no
``num_items_in_batch``), no bias, ``accum_dtype=None`` and the default Triton cross-entropy
(``ce_impl=None``). Only the loss is modelled: the Trainer's default ``liger_kernel_config`` also
swaps RMSNorm, SwiGLU and RoPE for liger's kernels, which this estimate does not (the equivalent
of ``liger_kernel_config={"rope": False, "rms_norm": False, "swiglu": False}``).

``fused_linear_cross_entropy_forward`` computes the gradients in the forward (no grad mode, so
without autocast ``_can_use_mm_out`` holds on CUDA whenever the hidden states and the weight
share a dtype, which they do for full and LoRA (bf16) and QLoRA (fp32 after
``prepare_model_for_kbit_training``); under autocast only when that dtype is bf16, see below):

- ``grad_input = zeros_like(_input)`` [N, H] in the hidden states' dtype;
- ``grad_weight = zeros_like(weight)`` [V, H] when lm_head's weight requires grad (full);
- ``loss_1d`` fp32 [N]; ``target_mask = target != ignore_index`` bool [N], alive to the return
  (its ``.sum().item()`` is an 8 B int64 scalar, gone before the loop);
- ``logits_storage`` [chunk_size, V] in the input dtype, ``chunk_size =
  min(next_power_of_2(cdiv(N, cdiv(V, H))), N)``, filled per chunk by ``torch.mm(out=)``; the
  Triton kernel writes the loss into ``loss_1d`` and the logits' gradient over the logits in
  place, ``torch.mm(out=grad_input[chunk])`` and ``torch.addmm(out=grad_weight)`` allocate
  nothing; ``del logits_storage`` after the loop; the loss ``torch.sum(loss_1d)`` a 4 B scalar.

Under the Trainer's bf16 autocast (``mixed_precision="bf16"``) the Function's forward is
``@amp_custom_fwd`` (``torch.amp.custom_fwd`` without ``cast_inputs``): it runs inside the
ambient autocast region. LoRA and full bf16 (bf16 hidden states and weight) keep the path above
(``out=`` calls are not autocast). QLoRA's fp32 norm output and upcast embedding, and fp32 master
weights, fail ``_can_use_mm_out`` (the input dtype is not the autocast dtype): no
``logits_storage``; per chunk ``_input_chunk @ weight.t()`` casts the chunk [c, H] and
``weight.t()`` [H, V] to bf16 (a view made with grad disabled: autocast never caches it) and
returns fresh bf16 logits [c, V]; ``grad_input[chunk] = grad_logits_chunk @ weight`` casts the
weight to bf16 again, which autocast caches until the region exits when the weight is a leaf that
requires grad (fp32 master weights) and makes afresh otherwise (QLoRA's frozen embedding), and
returns a bf16 [c, H] copied into the fp32 ``grad_input``; fp32 master weights' fp32
``grad_weight`` accumulates through ``addmm(out_dtype=float32, out=grad_weight)`` on sm80+ with
``_input_chunk.to(bf16)`` ([c, H]). The loop's most is a chunk's 2 c V + 2 V H + 2 c H, plus, for
fp32 master weights from the second chunk on, the cached cast (``liger_chunk_rows``).

It saves ``grad_input`` and ``grad_weight`` (``.detach()``, the same storage) for its backward,
which scales them in place (``element_mul_kernel``, when the loss was divided by
``grad_accum``) after ``torch.equal(grad_output, torch.tensor(1.0, device))`` (a 4 B scalar, and
on CUDA ``eq(...).all()``, two 1 B bool scalars), and returns them as the gradients.
``LigerForCausalLMLoss`` pads the labels like ``ForCausalLMLoss`` (``pad(labels, (0, 1))``
[b, T + 1] int64, then ``[..., 1:].contiguous()``: a view when b == 1, else a [b, T] copy); the
target is not saved, so both go when the loss returns.
"""

from __future__ import annotations

from ..model import ModelSpec
from ..units import cdiv

LIGER_RELEASE = "liger-kernel 0.8.5"
FP32 = 4
INT64 = 8


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for n >= 1."""
    return 1 << (n - 1).bit_length()


def liger_chunk_size(tokens: int, hidden: int, vocab: int) -> int:
    """Rows of logits per chunk (``fused_linear_cross_entropy_forward``, ``chunk_mem_const`` 1):
    ``inc_factor = cdiv(V, H)``, ``min(next_power_of_2(cdiv(N, inc_factor)), N)``."""
    return min(next_power_of_2(cdiv(tokens, cdiv(vocab, hidden))), tokens)


def liger_uses_mm_out(a: int, mixed: bool) -> bool:
    """``_can_use_mm_out`` on CUDA inside the Function's forward (grad disabled): the hidden
    states and lm_head's weight share a dtype in every modelled setting (bf16, or fp32 for QLoRA
    and fp32 master weights); under autocast that dtype must also be bf16 (``a`` == 2)."""
    return not mixed or a == 2


def liger_saved_rows(spec: ModelSpec, method: str, tokens: int, a: int) -> list[tuple[str, int, int]]:
    """What the liger loss leaves for backward (module docstring): ``grad_input`` [N, H] in the
    activation dtype ``a``, ``grad_weight`` [V, H] like the weight when lm_head trains (full: the
    weight's dtype is the activations', bf16, or fp32 master weights), and the loss scalar the
    loop holds. (No logits, no labels: the target is not saved.)"""
    rows = [("liger grad_input (saved)", a * tokens * spec.hidden_size, 1)]
    if method == "full":
        rows.append(("liger grad_weight (saved, lm_head)", a * spec.vocab_size * spec.hidden_size, 1))
    rows.append(("loss", FP32, 1))
    return rows


def liger_chunk_rows(
    spec: ModelSpec, tokens: int, a: int, mixed: bool, weight_cached: bool
) -> list[tuple[str, int, int]]:
    """The chunk loop's own tensors at its most. With ``_can_use_mm_out``: ``logits_storage``
    [c, V] in the input dtype, nothing else (every matmul writes ``out=``). Without (under
    autocast with an fp32 input, module docstring): in the first chunk, at each of its three
    calls the same bytes, bf16 logits [c, V] + a bf16 [V, H] weight cast + a bf16 [c, H] (the
    chunk's cast, the ``@ weight`` output, the ``.to(bf16)`` for ``addmm``); with
    ``weight_cached`` (fp32 master weights) the second chunk's ``@ weight.t()`` adds its fresh
    [H, V] cast, its chunk's cast and logits to the cached [V, H] cast (c2 = min(c, N - c) rows)."""
    N, H, V = tokens, spec.hidden_size, spec.vocab_size
    c = liger_chunk_size(N, H, V)
    if liger_uses_mm_out(a, mixed):
        return [(f"logits_storage [{c}, V]", a * c * V, 1)]
    first = [
        (f"bf16 logits [{c}, V]", 2 * c * V, 1),
        ("bf16 weight cast [V, H]", 2 * V * H, 1),
        (f"bf16 [{c}, H] (chunk cast / @ weight output)", 2 * c * H, 1),
    ]
    c2 = min(c, N - c)
    if not weight_cached or c2 <= 0:
        return first
    second = [
        ("cached bf16 weight cast [V, H] (grad_input's matmul)", 2 * V * H, 1),
        ("bf16 weight.t() cast [H, V]", 2 * V * H, 1),
        (f"bf16 chunk cast [{c2}, H]", 2 * c2 * H, 1),
        (f"bf16 logits [{c2}, V]", 2 * c2 * V, 1),
    ]
    return max(first, second, key=lambda rows: sum(n * k for _, n, k in rows))


def liger_forward_rows(
    spec: ModelSpec,
    seq_len: int,
    micro_batch: int,
    a: int,
    mixed: bool = False,
    weight_cached: bool = False,
) -> list[tuple[str, int, int]]:
    """The chunk loop's tensors on top of the saved ones (the loss scalar does not exist yet):
    the final norm's output (the kernel's input), the padded labels (and their [b, T] copy when
    b > 1), ``loss_1d``, ``target_mask`` and the chunk's own (``liger_chunk_rows``; ``mixed``:
    under bf16 autocast, ``weight_cached``: lm_head's weight is an fp32 leaf that requires grad)."""
    b, T = micro_batch, seq_len
    N = b * T
    rows = [
        ("final norm output (liger input)", a * N * spec.hidden_size, 1),
        ("padded labels", INT64 * b * (T + 1), 1),
    ]
    if b > 1:
        rows.append(("shift_labels copy", INT64 * N, 1))
    rows += [("loss_1d fp32", FP32 * N, 1), ("target_mask bool", N, 1)]
    rows += liger_chunk_rows(spec, N, a, mixed, weight_cached)
    rows.append(("loss scalar (not yet)", FP32, -1))
    return rows


def liger_backward_rows(grad_accum: int) -> list[tuple[str, int, int]]:
    """At liger's backward (``torch.equal``): the backward seed (``backward()``'s ``ones_like``,
    held by its caller to the end), with grad_accum > 1 also ``loss / grad_accum``'s gradient
    for the loss, ``torch.tensor(1.0)`` and the two bool scalars of ``eq(...).all()``."""
    rows = [("backward seed", FP32, 1)]
    if grad_accum > 1:
        rows.append(("DivBackward output", FP32, 1))
    return rows + [("torch.tensor(1.0)", FP32, 1), ("eq, all (bool)", 1, 2)]


def final_norm_backward_rows(
    spec: ModelSpec, tokens: int, a: int, grad_accum: int, full: bool = False
) -> list[tuple[str, int, int]]:
    """LoRA and QLoRA (a frozen norm weight), the final RMSNorm's backward right after liger's:
    the moment of ``pow``'s backward, on top of the saved tensors. ``LlamaRMSNorm`` computes
    ``weight * (x32 * rsqrt(x32.pow(2).mean(-1) + eps)).to(dtype)``; by then ``mul``'s backward
    has consumed liger's ``grad_input`` (freed) and ``rsqrt``'s backward has released the saved
    rsqrt, and five fp32 [N, H] tensors are alive: x32's gradient through ``mul`` (held in its
    input buffer), ``mean``'s backward (``div``), and ``pow_backward``'s ``x.pow(1)``, ``2 *``
    that, and ``grad *`` that (torch 2.13 ``FunctionsManual.cpp`` ``pow_backward``; observed in
    the trace). The backward seed too (with grad_accum > 1 the divided loss's gradient was
    liger's ``grad_output``, released with its node). Full fine-tuning (bf16, ``full``): the
    weight trains, so ``mul``'s backward also reduced ``grad * normalized`` to the weight's [H]
    gradient, now its ``.grad`` (first micro-batch; later ones add it in place), and released
    the normalized input it saved for that (a N H); the rest is the same (observed in the 3B
    trace at 8K tokens, where this moment is the step's peak)."""
    N, H = tokens, spec.hidden_size
    rows = [
        ("liger grad_input (consumed)", a * N * H, -1),
        ("final norm rsqrt (released)", FP32 * N, -1),
        ("final norm backward fp32 [N, H]", FP32 * N * H, 5),
        ("backward seed", FP32, 1),
    ]
    if full:
        rows.append(("final norm normalized input (released by mul's backward)", a * N * H, -1))
        if grad_accum == 1:
            rows.append(("final norm weight gradient", a * H, 1))
    return rows


__all__ = [
    "final_norm_backward_rows",
    "LIGER_RELEASE",
    "liger_backward_rows",
    "liger_chunk_rows",
    "liger_chunk_size",
    "liger_forward_rows",
    "liger_saved_rows",
    "liger_uses_mm_out",
    "next_power_of_2",
]

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
``_can_use_mm_out`` holds on CUDA whenever the hidden states and the weight share a dtype, which
they do for full and LoRA (bf16) and QLoRA (fp32 after ``prepare_model_for_kbit_training``)):

- ``grad_input = zeros_like(_input)`` [N, H] in the hidden states' dtype;
- ``grad_weight = zeros_like(weight)`` [V, H] when lm_head's weight requires grad (full);
- ``loss_1d`` fp32 [N]; ``target_mask = target != ignore_index`` bool [N], alive to the return
  (its ``.sum().item()`` is an 8 B int64 scalar, gone before the loop);
- ``logits_storage`` [chunk_size, V] in the input dtype, ``chunk_size =
  min(next_power_of_2(cdiv(N, cdiv(V, H))), N)``, filled per chunk by ``torch.mm(out=)``; the
  Triton kernel writes the loss into ``loss_1d`` and the logits' gradient over the logits in
  place, ``torch.mm(out=grad_input[chunk])`` and ``torch.addmm(out=grad_weight)`` allocate
  nothing; ``del logits_storage`` after the loop; the loss ``torch.sum(loss_1d)`` a 4 B scalar.

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


def liger_saved_rows(spec: ModelSpec, method: str, tokens: int, a: int) -> list[tuple[str, int, int]]:
    """What the liger loss leaves for backward (module docstring): ``grad_input`` [N, H] in the
    activation dtype ``a``, ``grad_weight`` [V, H] bf16 when lm_head trains (full), and the loss
    scalar the loop holds. (No logits, no labels: the target is not saved.)"""
    rows = [("liger grad_input (saved)", a * tokens * spec.hidden_size, 1)]
    if method == "full":
        rows.append(("liger grad_weight (saved, lm_head)", 2 * spec.vocab_size * spec.hidden_size, 1))
    rows.append(("loss", FP32, 1))
    return rows


def liger_forward_rows(spec: ModelSpec, seq_len: int, micro_batch: int, a: int) -> list[tuple[str, int, int]]:
    """The chunk loop's tensors on top of the saved ones (the loss scalar does not exist yet):
    the final norm's output (the kernel's input), the padded labels (and their [b, T] copy when
    b > 1), ``loss_1d``, ``target_mask`` and ``logits_storage``."""
    b, T = micro_batch, seq_len
    N = b * T
    rows = [
        ("final norm output (liger input)", a * N * spec.hidden_size, 1),
        ("padded labels", INT64 * b * (T + 1), 1),
    ]
    if b > 1:
        rows.append(("shift_labels copy", INT64 * N, 1))
    chunk = liger_chunk_size(N, spec.hidden_size, spec.vocab_size)
    rows += [
        ("loss_1d fp32", FP32 * N, 1),
        ("target_mask bool", N, 1),
        (f"logits_storage [{chunk}, V]", a * chunk * spec.vocab_size, 1),
        ("loss scalar (not yet)", FP32, -1),
    ]
    return rows


def liger_backward_rows(grad_accum: int) -> list[tuple[str, int, int]]:
    """At liger's backward (``torch.equal``): the backward seed (``backward()``'s ``ones_like``,
    held by its caller to the end), with grad_accum > 1 also ``loss / grad_accum``'s gradient
    for the loss, ``torch.tensor(1.0)`` and the two bool scalars of ``eq(...).all()``."""
    rows = [("backward seed", FP32, 1)]
    if grad_accum > 1:
        rows.append(("DivBackward output", FP32, 1))
    return rows + [("torch.tensor(1.0)", FP32, 1), ("eq, all (bool)", 1, 2)]


def final_norm_backward_rows(spec: ModelSpec, tokens: int, a: int, grad_accum: int) -> list[tuple[str, int, int]]:
    """LoRA and QLoRA (a frozen norm weight), the final RMSNorm's backward right after liger's:
    the moment of ``pow``'s backward, on top of the saved tensors. ``LlamaRMSNorm`` computes
    ``weight * (x32 * rsqrt(x32.pow(2).mean(-1) + eps)).to(dtype)``; by then ``mul``'s backward
    has consumed liger's ``grad_input`` (freed) and ``rsqrt``'s backward has released the saved
    rsqrt, and five fp32 [N, H] tensors are alive: x32's gradient through ``mul`` (held in its
    input buffer), ``mean``'s backward (``div``), and ``pow_backward``'s ``x.pow(1)``, ``2 *``
    that, and ``grad *`` that (torch 2.13 ``FunctionsManual.cpp`` ``pow_backward``; observed in
    the trace). The backward seed too (with grad_accum > 1 the divided loss's gradient was
    liger's ``grad_output``, released with its node)."""
    N, H = tokens, spec.hidden_size
    rows = [
        ("liger grad_input (consumed)", a * N * H, -1),
        ("final norm rsqrt (released)", FP32 * N, -1),
        ("final norm backward fp32 [N, H]", FP32 * N * H, 5),
        ("backward seed", FP32, 1),
    ]
    del grad_accum  # the divided loss's gradient went with liger's node: the same rows
    return rows


__all__ = [
    "final_norm_backward_rows",
    "LIGER_RELEASE",
    "liger_backward_rows",
    "liger_chunk_size",
    "liger_forward_rows",
    "liger_saved_rows",
    "next_power_of_2",
]

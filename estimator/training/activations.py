"""Activations saved for backward and the transient peaks of a training step, by mechanism.

What autograd keeps from the forward of ``LlamaForCausalLM`` (transformers 5.24) for the loss
``ForCausalLMLoss`` (``loss/loss_utils.py``), with SDPA on CUDA's flash kernel, written as the
list of tensors each op saves (torch ``derivatives.yaml``: an op saves an input only when the
gradient of another input needs it). N = micro_batch x seq_len tokens, a = 2 (bf16
activations), ab = the adapter dtype's bytes, r = rank.

Per decoder layer (when its input requires grad; a LoRA model's first layer input, the frozen
embedding's output, does not, so its ``input_layernorm`` saves nothing):

- each RMSNorm (``LlamaRMSNorm``): ``hidden.to(float32)`` [N, H] (saved by ``pow`` and ``mul``)
  and ``rsqrt(variance)`` [N, 1] fp32; with a trainable norm weight (full) also
  ``hidden.to(bf16)`` [N, H], which ``weight * x`` saves for the weight's gradient;
- a trainable Linear (full) saves its input for the weight's gradient (q, k, v share the norm's
  output; gate and up too; o_proj's input is the attention output, already saved);
- a LoRA Linear (peft ``lora.Linear.forward``): ``x.to(lora_A.weight.dtype)``: with fp32
  adapters a fresh fp32 copy of the input per adapter (4 N in), saved by ``lora_A`` for its
  weight's gradient; with bf16 adapters ``x`` itself (shared). With dropout, ``lora_A`` saves the
  dropout's output instead and CUDA's ``native_dropout`` its bool mask (N in; only when the
  input requires grad). ``lora_B`` saves ``lora_A``'s
  output (ab N r). The base output plus the fp32 LoRA term promotes to fp32 and is cast back
  (``result.to(torch_result_dtype)``): nothing saved;
- attention (the flash kernel saves q, k, v, out and the fp32 logsumexp [b, h, T]): q after
  rotary (a N q_dim), k and v (a N kv_dim each: the ``DynamicCache`` copies, or with gradient
  checkpointing the rotary output and the projection), out (a N q_dim), lse;
- the MLP: ``silu`` saves gate's output, ``act * up`` saves both (3 a N I); a trainable down
  projection saves the product (a N I).

Once: rotary ``cos`` and ``sin`` [1, T, head_dim] in the activation dtype (saved by the
rotary ``mul``), the final norm (as a layer norm, plus its output, saved by a trainable
lm_head), the loss: ``logits.float()`` -> ``log_softmax`` saves its fp32 output [N, V]; the
labels ``pad(labels, (0, 1))`` [b, T + 1] int64 kept by ``labels[..., 1:].contiguous()`` (a view
when b == 1, else a [b, T] copy), saved as nll's target with its fp32 total_weight, the loss
scalar; the input ids [b, T] int64.

A packed row (``packed``: the micro-batch as one row [1, N], position_ids restarting per
sequence): the attention kernel changes (``attention_kernel``, ``attention_rows``), cos and sin
are [1, N, head_dim], the loss sees one sequence of N tokens, and the collator's position_ids and
labels [1, N] int64 are inputs alive all micro-batch; with checkpointing SDPA's bool block-causal
mask [1, 1, N, N] is an argument of every layer (and position_ids is the input, not a new one).

With ``loss="liger"`` the loss's rows (log_softmax's output, the labels, nll's scalars and a
trainable lm_head's saved norm output) give way to Liger's saved gradients (``loss.py``).

Gradient checkpointing (``gradient_checkpointing_enable``, reentrant or not, every layer): each
layer keeps only its input hidden states (a N H); cos, sin and ``cache_position`` [T] int64 are
saved once as checkpoint inputs.

Transient peaks (each checked against the trace, runtime/train.py):

- forward, in the loss: the bf16 logits (a N V), their fp32 copy and ``log_softmax``'s output
  (4 N V each) and the final norm's output (a N H), on top of what is saved;
- backward, in ``log_softmax``'s backward: ``nll_loss_backward``'s fp32 gradient and
  ``_log_softmax_backward_data``'s output (4 N V each) next to the saved log-probabilities; the
  labels are released by then; the backward seed (a 4 B scalar, another with grad_accum > 1);
- full fine-tuning, at the end of backward: every gradient, and for a tied embedding the
  engine's input buffer adding lm_head's and the embedding's [V, H] gradients out of place
  (both and their sum alive: observed on real CPU tensors and in the trace);
- the optimizer step: its states, the gradients and its own temporaries (``static``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from ..model import ModelSpec
from ..units import round_up
from .loss import liger_saved_rows
from .params import LAYER_TARGETS
from .static import adapter_elem_bytes

FP32 = 4
INT64 = 8


@dataclass(frozen=True, slots=True)
class Saved:
    """Tensors saved for backward: (what, bytes each, count) rows; ``nbytes`` is their sum."""

    rows: tuple[tuple[str, int, int], ...]

    @property
    def nbytes(self) -> int:
        return sum(n * c for _, n, c in self.rows)

    def sizes(self) -> list[tuple[int, int]]:
        """(bytes, count) of every tensor, for the allocator's rounding."""
        return [(n, c) for _, n, c in self.rows if c and n]


@functools.lru_cache(maxsize=1024)
def saved_tensors(
    spec: ModelSpec,
    method: str,
    targets: tuple[str, ...],
    rank: int,
    adapter_bytes: int,
    dropout: bool,
    grad_checkpointing: str,
    seq_len: int,
    micro_batch: int,
    mixed: bool = False,
    quant: str = "bf16",
    packed: bool = False,
    attn_implementation: str = "sdpa",
    loss: str = "transformers",
    liger_layers: bool = False,
) -> Saved:
    """Everything autograd holds at the end of the forward (module docstring; ``mixed``: under
    bf16 autocast, ``_layer``; a packed row: one row of N tokens, ``packed_rows``;
    ``loss="liger"``: the fused linear cross-entropy's saved gradients instead of the logits'
    rows, ``loss.py``; ``liger_layers``: Liger's RMSNorm and SwiGLU, ``liger_norm_rows``)."""
    b, T = micro_batch, seq_len
    N = b * T
    kernel = attention_kernel(method, packed, attn_implementation, mixed)
    if packed:
        b, T = 1, N  # one row; the sequences are told apart by position_ids
    H, I, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    qd, kvd, d, h = spec.q_dim, spec.kv_dim, spec.head_dim, spec.num_attention_heads
    L = spec.num_hidden_layers
    a = act_bytes(method, quant)
    full = method == "full"
    rows: list[tuple[str, int, int]] = []

    def norm(count: int) -> None:
        if liger_layers:
            rows.extend(liger_norm_rows(N, H, a, count))
            return
        rows.append(("rmsnorm fp32 input", FP32 * N * H, count))
        rows.append(("rmsnorm rsqrt", FP32 * N, count))
        if full:  # ``weight * hidden.to(input_dtype)``: the normalized input in the weights' dtype
            rows.append(("rmsnorm normalized input (weight grad)", a * N * H, count))

    if grad_checkpointing != "off":
        rows.append(("checkpointed layer inputs", a * N * H, L))
        if not packed:  # position_ids [1, T] (arange), kept by every layer's checkpoint
            rows.append(("cache_position", INT64 * T, 1))
        elif kernel == "efficient":  # the block-causal bool mask, an argument of every checkpointed layer
            rows.append(("packed block-causal mask (bool)", N * N, 1))
        if kernel == "fa2-varlen" and grad_checkpointing == "non-reentrant":
            # non-reentrant checkpointing drops saved tensors, not the forward's graph: each
            # layer's FlashAttnVarlenFunc node keeps its ctx.max_seqlen_q (a 0-dim int32 tensor)
            rows.append(("max_seqlen (0-dim int32, on the autograd context)", 4, L))
        rows += _embed_leaf_rows(method, targets, N, H, a)
    else:
        # a LoRA model's first layer input (the frozen embedding's output) does not require grad,
        # unless the embedding has an adapter
        first_input_grad = full or "embed" in targets
        for layer in (0, 1):
            count = 1 if layer == 0 else L - 1
            if count == 0:
                continue
            in_grad = first_input_grad or (layer > 0 and decoder_requires_grad(method, targets, grad_checkpointing))
            rows += _layer(
                spec,
                method,
                targets,
                rank,
                adapter_bytes,
                dropout,
                N,
                b,
                in_grad,
                count,
                norm,
                a,
                kernel,
                micro_batch,
                mixed,
                liger_layers,
            )
        if full and mixed and a == 4:  # every Linear's cached bf16 weight cast, saved for its input's grad
            rows += [(f"{m} weight cast (saved)", 2 * i * o, L) for m, i, o in layer_linears(spec, LAYER_TARGETS)]
    if not full and "embed" in targets:
        rows += embed_lora_rows(spec, method, rank, adapter_bytes, N, mixed)
    # once: rotary cos/sin [1, T, head_dim] in the activation dtype (position_ids is [1, T]; packed
    # [1, N]: positions restart per sequence, so each token has its own row)
    # (with an adapter on lm_head alone, nothing before lm_head requires grad, unless checkpointing
    # made the embedding's output a leaf that does: no decoder tensor is saved)
    head_in_grad = decoder_requires_grad(method, targets, grad_checkpointing)
    if head_in_grad:
        rows.append(("rotary cos, sin", a * T * d, 2))
    if packed:  # the collator's inputs, held by the loop for the whole micro-batch
        rows.append(("position_ids, labels (packed inputs)", INT64 * N, 2))
    if head_in_grad:
        norm(1)  # the final norm
    if loss == "liger":  # (estimate: no lm_head adapter) lm_head's Linear never runs
        rows += liger_saved_rows(spec, method, N, a)
        rows.append(("input_ids", INT64 * N, 1))
        return Saved(tuple(rows))
    if mixed and method == "qlora" and head_in_grad:
        # lm_head (the tied embedding, fp32 and frozen after prepare_model_for_kbit_training) under
        # autocast: its bf16 weight cast (not cached: it does not require grad) is saved for the
        # input's gradient
        rows.append(("lm_head weight cast to bf16", 2 * V * H, 1))
    if full and mixed and a == 4:
        # fp32 master weights: lm_head casts the final norm's output and (cached) its weight to
        # bf16, and saves both
        rows.append(("final norm output cast to bf16 (lm_head weight grad)", 2 * N * H, 1))
        rows.append(("lm_head weight cast (saved)", 2 * V * H, 1))
    elif full:
        rows.append(("final norm output (lm_head weight grad)", a * N * H, 1))
    elif "lm_head" in targets:
        ab = adapter_elem_bytes(method, "lm_head", adapter_bytes)
        rows += lm_head_lora_rows(spec, method, rank, ab, N, dropout, mixed, head_in_grad)
    rows.append(("log_softmax output fp32", FP32 * N * V, 1))
    rows.append(("labels (padded)" if b == 1 else "shift_labels", INT64 * (T + 1 if b == 1 else N), 1))
    rows.append(("loss, nll total_weight", FP32, 2))
    rows.append(("input_ids", INT64 * N, 1))
    del h, qd, kvd, I
    return Saved(tuple(rows))


def _layer(
    spec: ModelSpec,
    method: str,
    targets: tuple[str, ...],
    rank: int,
    ab: int,
    dropout: bool,
    N: int,
    b: int,
    in_grad: bool,
    count: int,
    norm: Callable[[int], None],
    a: int,
    kernel: str = "",
    sequences: int = 1,
    mixed: bool = False,
    liger_layers: bool = False,
) -> list[tuple[str, int, int]]:
    """The saved tensors of ``count`` decoder layers whose input does (or does not) require grad
    (``kernel``: ``attention_kernel``; empty: flash, or SDPA's math path on fp32).

    ``mixed`` (bf16 autocast, ``torch.autocast`` around the forward): every Linear's input and
    SDPA's q, k, v are cast to bf16 (autocast_mode.cpp ``lower_precision_fp``). A LoRA input is
    then a fresh bf16 copy per adapter (peft's ``lora.Linear`` first casts it to the adapter
    dtype, ``bnb.Linear4bit``'s LoRA layer does not under autocast; the linear casts either back
    to bf16), shared with the module's input only when that is bf16 and the adapters are too;
    ``lora_A``'s output is bf16; with dropout its output (in the adapter or input dtype) is cast
    and the bf16 copy saved. Attention always sees bf16 q, k and v (SDPA casts them; unpacked,
    it takes the flash kernel), and saves its bf16 copies of them when they are fp32 (QLoRA).

    ``flash_attention_2`` (``fa2``, ``fa2-varlen``) is 16-bit with or without autocast:
    transformers' ``fa_peft_integration_check`` casts fp32 q, k, v to bf16 first (``attention_bytes``),
    so QLoRA's attention saves bf16 copies and returns a bf16 output, o_proj's input."""
    H, I = spec.hidden_size, spec.intermediate_size
    qd, kvd, h, d = spec.q_dim, spec.kv_dim, spec.num_attention_heads, spec.head_dim
    T = N // b
    full = method == "full"
    rows: list[tuple[str, int, int]] = []
    tg = set(targets) if not full else set()
    dims = {t: (i, o) for t, i, o in layer_linears(spec, LAYER_TARGETS)}
    attn_a = attention_bytes(kernel or ("flash" if a == 2 or mixed else "math"), a, mixed)

    def lora(name: str, inp: int, inp_grad: bool) -> bool:
        """Rows of a LoRA adapter on a module with ``inp`` input features (whose input requires
        grad or not); True when it saves the module's input tensor itself (bf16 adapters, no
        dropout: shared). o_proj's input is the attention's output (``attention_bytes``: bf16
        under autocast and from flash-attn), the others' the residual stream's dtype (``a``)."""
        in_bytes = attn_a if name == "o" else a
        if mixed:
            rows.append((f"{name} lora_A output (bf16)", 2 * N * rank, count))
            if ab == 4:  # the cached bf16 casts of the fp32 weights, saved (adapter_cast_bytes)
                rows.append((f"{name} lora_B weight cast (saved)", 2 * rank * dims[name][1], count))
                if inp_grad:
                    rows.append((f"{name} lora_A weight cast (saved)", 2 * rank * inp, count))
            if dropout:
                rows.append((f"{name} dropout output, bf16", 2 * N * inp, count))
                if inp_grad:
                    rows.append((f"{name} dropout mask", N * inp, count))
                return False
            if in_bytes == 2 and (method == "qlora" or ab == 2):
                return True
            rows.append((f"{name} input cast to bf16 (autocast)", 2 * N * inp, count))
            return False
        rows.append((f"{name} lora_A output", ab * N * rank, count))
        if dropout:
            rows.append((f"{name} dropout output", ab * N * inp, count))
            if inp_grad:  # CUDA native_dropout's bool mask, saved when the input needs a gradient
                rows.append((f"{name} dropout mask", N * inp, count))
            return False
        if ab != in_bytes:
            rows.append((f"{name} input cast to the adapter dtype", ab * N * inp, count))
            return False
        return True

    # attention half
    if in_grad:
        norm(count)
    # fp32 master weights under autocast: each Linear casts its fp32 input to bf16 and saves
    # the copy (q, k, v each their own; gate and up too); its outputs are bf16
    casts_x = full and mixed and a == 4
    c = 2 if casts_x else a  # the MLP's activations' bytes
    shares_x = full and not casts_x
    if casts_x:
        rows.append(("q, k, v inputs cast to bf16", 2 * N * H, 3 * count))
    for m in ("q", "k", "v"):
        if m in tg:
            shares_x = lora(m, H, in_grad) or shares_x
    if shares_x:
        rows.append(("attention input (norm output)", a * N * H, count))
    rows += _qk_norm_rows(spec, tg, in_grad or full, N, c if full else a, full, count)
    attn_grad = in_grad or full or bool(tg & {"q", "k", "v"})
    kernel = kernel or ("flash" if a == 2 or mixed else "math")
    flash = kernel != "math"  # the output is saved by the kernel and shared with o_proj
    if attn_grad and kernel != "flash" and flash:
        rows += attention_rows(spec, kernel, N, sequences, attn_a, count)
    elif attn_grad and flash:
        rows += [
            ("q after rotary", 2 * N * qd, count),
            ("k, v", 2 * N * kvd, 2 * count),
            ("attention output", 2 * N * qd, count),
            ("attention logsumexp", FP32 * b * h * T, count),
        ]
    elif attn_grad:  # SDPA's math path (fp32): scaled q, scaled k^T and v expanded to h heads, probs
        # q @ k^T saves each operand for the other's gradient: the scaled q only when k requires
        # grad, k^T only when q does (a first layer whose input needs no grad, with no k or no q
        # adapter); probs @ v saves v when the probabilities require grad and the probabilities
        # (softmax's output, which softmax saves too) for v's
        q_grad, k_grad = in_grad or "q" in tg, in_grad or "k" in tg
        if k_grad:
            rows.append(("q scaled", a * N * qd, count))
        if q_grad:
            rows.append(("k^T scaled", a * b * h * T * d, count))
        if q_grad or k_grad:  # the probabilities require grad
            rows.append(("v expanded to every head", a * b * h * T * d, count))
        rows.append(("attention probabilities", a * b * h * T * T, count))
    # o_proj's input: flash's saved output (a view); else (the math path, or attention that needs
    # no grad) the transpose(1, 2).contiguous() copy, bf16 under autocast (SDPA's output)
    if "o" in tg and lora("o", qd, attn_grad) and not (attn_grad and flash):
        rows.append(("o_proj input", (2 if mixed else a) * N * qd, count))
    # MLP half: its input requires grad whenever anything before it trains
    mlp_in_grad = attn_grad or "o" in tg
    if mlp_in_grad:
        norm(count)
    shares_x2 = full and not casts_x
    if casts_x:
        rows.append(("gate, up inputs cast to bf16", 2 * N * H, 2 * count))
    for m in ("gate", "up"):
        if m in tg:
            shares_x2 = lora(m, H, mlp_in_grad) or shares_x2
    if shares_x2:
        rows.append(("mlp input (norm output)", a * N * H, count))
    if (mlp_in_grad or tg & {"gate", "up"}) and liger_layers:
        # LigerSiLUMulFunction saves gate's and up's outputs, not silu's (liger_norm_rows)
        rows.append(("gate, up outputs (liger swiglu)", c * N * I, 2 * count))
    elif mlp_in_grad or tg & {"gate", "up"}:
        rows.append(("gate, act, up outputs", c * N * I, 3 * count))
    if full:
        rows.append(("down_proj input", c * N * I, count))
    elif "down" in tg and lora("down", I, mlp_in_grad or bool(tg & {"gate", "up"})):
        rows.append(("down_proj input", a * N * I, count))
    return rows


def liger_norm_rows(N: int, H: int, a: int, count: int) -> list[tuple[str, int, int]]:
    """``liger_layers`` (liger-kernel 0.8.5, what ``apply_liger_kernel_to_llama`` installs; the
    trace's stand-ins in runtime/train.py follow the source line by line):

    - ``LigerRMSNorm`` (offset 0, casting_mode "llama", in_place True): ``LigerRMSNormFunction``
      saves ``(X, W, RSTD)``: its input itself (``X.view(-1, H)``, a view of the residual stream
      in the activation dtype, which nothing else keeps) and ``RSTD`` fp32 [N]
      (``rms_norm_forward``); W is the parameter. No fp32 copy of the input, and for full
      fine-tuning no normalized copy for the weight's gradient (the kernel recomputes it).
      Backward writes dX over dY in place (``in_place=True``), and for a trainable weight an fp32
      [sm_count, H] partial and its sum (inside the norm's backward only);
    - ``LigerSwiGLUMLP``: ``LigerSiLUMulFunction`` saves gate's and up's outputs ``(a, b)`` and
      returns ``c = empty_like(a)``; no silu output. Its backward writes da, db over a, b;
    - ``liger_rotary_pos_emb``: ``LigerRopeFunction`` rotates q and k in place (their
      ``transpose(1, 2).contiguous()`` is the projections' own layout: no copy) and saves cos and
      sin, which the rotary embedding holds anyway: the attention rows do not change."""
    return [("liger rmsnorm input (saved X)", a * N * H, count), ("liger rmsnorm rstd fp32", FP32 * N, count)]


def liger_down_proj_backward_rows(
    spec: ModelSpec, rank: int, tokens: int, first_grads: bool
) -> list[tuple[str, int, int]]:
    """LoRA (bf16 base, fp32 adapters, every layer Linear a target) with ``loss="liger"`` and
    ``liger_layers``: the step's backward peak, in the last decoder layer, at down_proj's
    ``lora_A`` input gradient (``mm`` [N, I] fp32), on top of the saved tensors (traced; the
    logits' [N, V] tensors and the final norm's fp32 backward no longer hide it). Since liger's
    backward: its scalars are gone (the backward seed stays), the final ``LigerRMSNorm`` ran in
    place (dX over liger's ``grad_input``, which stays as the layer output's gradient) and
    released its saved input and rstd; down_proj's backward so far: the base output's gradient
    (``add``'s backward casts it to bf16, a N H), the fp32 LoRA-term gradients came and went,
    ``lora_B``'s input gradient [N, r] fp32 replaced ``lora_A``'s saved output (same bytes),
    ``lora_A``'s weight gradient [r, I] fp32 (its AccumulateGrad has not run) and the peak's
    [N, I] fp32. ``first_grads`` (no ``.grad`` yet: grad_accum 1, or the estimate's resident
    gradients otherwise): ``lora_B``'s weight gradient [H, r] became its ``.grad``. The layer's
    later moments hold less: up_proj's LoRA backward about 2 N H less (down's fp32 input copy,
    4 N I, is released before it allocates 8 N I), gate's less again (traced)."""
    N, H, I = tokens, spec.hidden_size, spec.intermediate_size
    a, ab = 2, FP32
    rows = [
        ("final norm saved input (released)", a * N * H, -1),
        ("final norm rstd (released)", FP32 * N, -1),
        ("backward seed", FP32, 1),
        ("down_proj base output's gradient (bf16)", a * N * H, 1),
        ("down_proj lora_A input gradient [N, I] fp32", ab * N * I, 1),
        ("down_proj lora_A weight gradient", ab * rank * I, 1),
    ]
    if first_grads:
        rows.append(("down_proj lora_B weight gradient (.grad)", ab * H * rank, 1))
    return rows


def liger_down_proj_forward_rows(spec: ModelSpec, seq_len: int, micro_batch: int) -> list[tuple[str, int, int]]:
    """The same setting's forward moment in the last decoder layer: down_proj's LoRA term
    (``result + lora_B(lora_A(x)) * scaling``, at the ``mul`` and again at the ``add``), on top
    of the saved tensors less those made after it (the final norm's input and rstd, liger's
    ``grad_input`` and the loss scalar): SwiGLU's output ``c`` (down_proj's input, a N I), the
    base output (a N H), ``lora_B``'s fp32 output and its scaled copy (4 N H each; at the add the
    sum replaces ``lora_B``'s output); held by the callers, not saved: the MLP's input (the
    post-attention norm's output, the decoder layer's ``hidden_states``), the frozen embedding's
    output (``LlamaModel.forward``'s ``inputs_embeds``, alive through the layer loop: the first
    norm saves nothing for LoRA) and ``cache_position`` [T] int64 (traced). (up_proj's moment
    holds 10 N I against this one's 8 N I + 10 N H plus the saved up output and down's fp32
    input copy: lower when I < 5 H.)"""
    N, H, I = seq_len * micro_batch, spec.hidden_size, spec.intermediate_size
    a = 2
    return [
        ("MLP input (post-attention norm output)", a * N * H, 1),
        ("embedding output (inputs_embeds)", a * N * H, 1),
        ("cache_position", INT64 * seq_len, 1),
        ("final norm saved input (not yet)", a * N * H, -1),
        ("final norm rstd (not yet)", FP32 * N, -1),
        ("liger grad_input (not yet)", a * N * H, -1),
        ("loss scalar (not yet)", FP32, -1),
        ("swiglu output c (down_proj input)", a * N * I, 1),
        ("down_proj base output", a * N * H, 1),
        ("down_proj lora_B output fp32, its scaled copy", FP32 * N * H, 2),
    ]


def math_attention_backward_rows(
    spec: ModelSpec,
    targets: tuple[str, ...],
    rank: int,
    adapter_bytes: int,
    dropout: bool,
    grad_checkpointing: str,
    seq_len: int,
    micro_batch: int,
    liger_layers: bool = False,
) -> list[tuple[str, int, int]]:
    """QLoRA (fp32, SDPA's math path): the live tensors at the last layer's softmax backward,
    besides weights, states and gradients. (The loss's tensors are gone by then; with
    checkpointing the layer has just been recomputed.)

    - outside the layer: the checkpointed layer inputs, ``cache_position``, cos and sin (with
      checkpointing), or every other layer's saved tensors (without); the input ids, the loss and
      the backward seed;
    - the layer's attention half, still saved: ``input_layernorm``'s rsqrt (and its fp32 input,
      which with checkpointing is the checkpointed input itself), q/k/v's LoRA inputs and
      ``lora_A`` outputs, the scaled q and k^T, the probabilities (v expanded was released by
      ``attn @ v``'s backward);
    - the backward's own: the residual stream's gradient, ``grad_out @ v^T`` and
      ``_softmax_backward_data``'s output (4 b h T^2 each) and v's gradient [b, h, T, d]."""
    b, T = micro_batch, seq_len
    N = b * T
    H, d, h, L = spec.hidden_size, spec.head_dim, spec.num_attention_heads, spec.num_hidden_layers
    a = 4
    rows: list[tuple[str, int, int]] = []
    if grad_checkpointing != "off":
        rows += _embed_leaf_rows("qlora", targets, N, H, a)
        rows += [
            ("checkpointed layer inputs", a * N * H, L),
            ("cache_position", INT64 * T, 1),
            ("rotary cos, sin", a * T * d, 2),
            ("rmsnorm rsqrt", FP32 * N, 1),
        ]
    else:

        def norm(count: int) -> None:
            rows.append(("rmsnorm fp32 input", FP32 * N * H, count))
            rows.append(("rmsnorm rsqrt", FP32 * N, count))

        # (liger_layers: LigerRMSNorm saves the fp32 residual itself and RSTD, the same bytes as
        # LlamaRMSNorm's no-op ``.to(float32)`` and rsqrt; the MLP saves two outputs, not three)
        ll = liger_layers
        rows += _layer(
            spec, "qlora", targets, rank, adapter_bytes, dropout, N, b, "embed" in targets, 1, norm, a, liger_layers=ll
        )
        if L > 2:
            rows += _layer(
                spec, "qlora", targets, rank, adapter_bytes, dropout, N, b, True, L - 2, norm, a, liger_layers=ll
            )
        rows.append(("rotary cos, sin", a * T * d, 2))
        norm(1)  # the last layer's input_layernorm
    rows += [("input_ids", INT64 * N, 1), ("loss, backward seed", FP32, 2)]
    if "embed" in targets:
        rows += embed_lora_rows(spec, "qlora", rank, adapter_bytes, N, False)
    shared = False
    for m in ("q", "k", "v"):
        if m not in targets:
            continue
        rows.append((f"{m} lora_A output", adapter_bytes * N * rank, 1))
        if dropout:
            rows += [(f"{m} dropout output", adapter_bytes * N * H, 1), (f"{m} dropout mask", N * H, 1)]
        elif adapter_bytes != a:
            rows.append((f"{m} input cast to the adapter dtype", adapter_bytes * N * H, 1))
        else:
            shared = True
    if shared:
        rows.append(("attention input (norm output)", a * N * H, 1))
    rows += _qk_norm_rows(spec, targets, True, N, a, False, 1)
    rows += [
        ("q scaled", a * N * spec.q_dim, 1),
        ("k^T scaled", a * b * h * T * d, 1),
        ("attention probabilities", FP32 * b * h * T * T, 1),
        ("residual stream gradient", a * N * H, 1),
        ("grad_out @ v^T, softmax backward output", FP32 * b * h * T * T, 2),
        ("v expanded's gradient", a * b * h * T * d, 1),
    ]
    return rows


def act_bytes(method: str, quant: str = "bf16") -> int:
    """Bytes per element of the residual stream: bf16, or fp32 for QLoRA, whose embedding
    ``prepare_model_for_kbit_training`` casts to fp32, and for fp32 master weights."""
    return 4 if method == "qlora" or quant == "fp32" else 2


def attention_kernel(method: str, packed: bool, attn_implementation: str, mixed: bool = False) -> str:
    """The attention kernel CUDA runs: ``flash`` (SDPA, unpacked 16-bit), ``math`` (SDPA, unpacked
    fp32: QLoRA), ``efficient`` (SDPA with the packed row's block-causal mask: flash takes no mask,
    so torch's priority order flash, efficient, math picks mem-efficient, which takes a bias in
    any float dtype), ``fa2`` and ``fa2-varlen`` (flash-attn 2's ``flash_attn_func`` and, packed,
    ``flash_attn_varlen_func``)."""
    if attn_implementation == "flash_attention_2":
        return "fa2-varlen" if packed else "fa2"
    if packed:
        return "efficient"
    # under autocast SDPA casts q, k, v to bf16: flash
    return "math" if act_bytes(method) == 4 and not mixed else "flash"


def attention_bytes(kernel: str, a: int, mixed: bool) -> int:
    """Element bytes of the q, k, v an attention kernel saves and of its output: bf16 under
    autocast (SDPA is ``lower_precision_fp``: autocast_mode.cpp casts q, k, v, and a packed row's
    repeated k, v, to bf16 before the op) and always with flash-attn 2 (transformers 5.24
    ``integrations/flash_attention.py`` ``get_target_dtype``: autocast's dtype, else, for a
    quantized model, ``config.dtype``, bf16 here; ``fa_peft_integration_check`` then casts an fp32
    q, k, v with ``.to``: fresh copies each call); else the residual stream's (``a``: QLoRA's fp32
    math or mem-efficient path)."""
    return 2 if mixed or kernel.startswith("fa2") else a


def attention_rows(
    spec: ModelSpec, kernel: str, N: int, sequences: int, a: int, count: int
) -> list[tuple[str, int, int]]:
    """What one attention call saves for backward, besides the flash rows of ``_layer``:

    - ``fa2`` (flash-attn 2.x ``FlashAttnFunc.forward``: ``save_for_backward(q, k, v, out_padded,
      softmax_lse, rng_state)``): flash's q, k, v, out and fp32 lse [b, h, T], and ``rng_state``
      [2] int64, which ``mha_fwd`` (csrc/flash_attn/flash_api.cpp) allocates on the device even
      without dropout;
    - ``fa2-varlen`` (``FlashAttnVarlenFunc``: q, k, v, out_padded, softmax_lse, cu_seqlens_q,
      cu_seqlens_k, rng_state): q [N, h, d], k, v [N, hk, d] (GQA in the kernel), out, the
      unpadded fp32 lse [h, N] (``mha_varlen_fwd``), ``cu_seqlens`` int32 [S + 1] (transformers'
      ``prepare_fa_kwargs_from_position_ids``, one tensor for q and k, made in every layer),
      ``rng_state``, and the max length, a 0-dim int32 device tensor (``cu_seq_lens_q.diff().max()``,
      turned into an int only when tracing) that ``FlashAttnVarlenFunc`` keeps as
      ``ctx.max_seqlen_q`` (and ``_k``: the same tensor);
    - ``efficient`` (aten ``_scaled_dot_product_efficient_attention``, derivatives.yaml saves
      query, key, value, attn_bias, output, log_sumexp): transformers' ``sdpa_attention_forward``
      passes a mask, so ``use_gqa_in_sdpa`` is False and ``repeat_kv`` copies k and v to every
      head [1, h, N, d]; aten's ``convert_boolean_attn_mask`` turns the bool mask into an additive
      one in the query's dtype (``at::where``) [1, 1, N, N] per call, padded to a multiple of 8
      columns when N is not (``preprocess_mask``/``pad_bias``, mem_eff_alignment 8) and expanded
      to every head (a view); the output [1, N, h, d] (o_proj's input, a view) and the fp32
      logsumexp [1, h, N rounded up to 32] (``_efficient_attention_forward``). The philox seed and
      offset are CPU scalars without dropout."""
    qd, kvd, h = spec.q_dim, spec.kv_dim, spec.num_attention_heads
    if kernel == "efficient":
        return [
            ("q after rotary", a * N * qd, count),
            ("k, v repeated to every head (repeat_kv)", a * N * qd, 2 * count),
            ("attention output", a * N * qd, count),
            ("attention logsumexp (rows rounded to 32)", FP32 * h * round_up(N, 32), count),
            ("additive mask (convert_boolean_attn_mask)", a * N * round_up(N, 8), count),
        ]
    rows = [
        ("q after rotary", a * N * qd, count),
        ("k, v", a * N * kvd, 2 * count),
        ("attention output", a * N * qd, count),
        ("attention logsumexp", FP32 * h * N, count),
        ("flash-attn rng_state", INT64 * 2, count),
    ]
    if kernel == "fa2-varlen":
        rows.append(("cu_seqlens (int32)", 4 * (sequences + 1), count))
        rows.append(("max_seqlen (0-dim int32, on the autograd context)", 4, count))
    return rows


def decoder_requires_grad(method: str, targets: tuple[str, ...], grad_checkpointing: str) -> bool:
    """Whether the final norm's output (lm_head's input) requires grad: something before it trains
    (full; an embedding or a decoder layer adapter), or checkpointing, with which transformers
    5.24 calls ``enable_input_require_grads()`` (the embedding's output becomes a leaf that
    requires grad, ``_embed_leaf_rows``). Else, an adapter on lm_head alone, the decoder runs
    without a graph and saves nothing."""
    if method == "full" or grad_checkpointing != "off":
        return True
    return any(t in targets for t in (*LAYER_TARGETS, "embed"))


def lm_head_lora_rows(
    spec: ModelSpec,
    method: str,
    rank: int,
    ab: int,
    N: int,
    dropout: bool = False,
    mixed: bool = False,
    in_grad: bool = True,
) -> list[tuple[str, int, int]]:
    """LoRA on lm_head (peft 0.21 ``lora.Linear.forward`` around it: ``x =
    self._cast_input_dtype(x, lora_A.weight.dtype)``, then ``lora_B(lora_A(dropout(x))) *
    scaling``), what it saves. x is the final norm's output (a: bf16, fp32 for QLoRA), ``x_ab`` its
    cast to the adapter dtype (x itself when the dtypes agree, else a fresh copy).

    - Without autocast ``lora_A`` saves its input, ``x_ab`` (the norm's output itself when the
      dtypes agree, which is then saved rather than a transient: ``lm_head_shares_input``); with
      dropout the dropout's output (ab N H) and CUDA ``native_dropout``'s bool mask (N H) instead.
      ``lora_B`` saves ``lora_A``'s output (ab N r).
    - Under bf16 autocast (``_layer``'s rule for a layer's adapter) ``lora_A``'s F.linear casts its
      input to bf16 and saves that: the norm's output itself for bf16 adapters on a bf16 base (no
      dropout), else a bf16 [N, H] (a fresh copy, or the dropout's bf16 output); with dropout the
      bool mask too. ``lora_A``'s output is bf16 (2 N r). fp32 adapters: the cached bf16 casts of
      ``lora_B``'s weight (2 V r, saved for ``lora_A``'s output's gradient) and ``lora_A``'s
      (2 r H, saved when the norm's output requires grad: ``in_grad``, ``decoder_requires_grad``;
      else only cached).

    The mask is saved only when the input requires grad (``native_dropout``'s derivative)."""
    H, V = spec.hidden_size, spec.vocab_size
    if not mixed:
        rows = [("lm_head lora_A output", ab * N * rank, 1)]
        if dropout:
            rows.append(("lm_head dropout output", ab * N * H, 1))
            return rows + ([("lm_head dropout mask", N * H, 1)] if in_grad else [])
        if lm_head_shares_input(method, ab):
            rows.append(("final norm output (lm_head lora_A input)", act_bytes(method) * N * H, 1))
        else:
            rows.append(("lm_head input cast to the adapter dtype", ab * N * H, 1))
        return rows
    rows = [("lm_head lora_A output (bf16)", 2 * N * rank, 1)]
    if ab == 4:
        rows.append(("lm_head lora_B weight cast (saved)", 2 * V * rank, 1))
        if in_grad:
            rows.append(("lm_head lora_A weight cast (saved)", 2 * rank * H, 1))
    if dropout:
        rows.append(("lm_head dropout output, bf16", 2 * N * H, 1))
        if in_grad:
            rows.append(("lm_head dropout mask", N * H, 1))
    elif lm_head_shares_input(method, ab, mixed=True):
        rows.append(("final norm output (lm_head lora_A input)", 2 * N * H, 1))
    else:
        rows.append(("lm_head input cast to bf16", 2 * N * H, 1))
    return rows


def lm_head_shares_input(method: str, ab: int, dropout: bool = False, mixed: bool = False) -> bool:
    """Whether lm_head's ``lora_A`` saves the final norm's output itself (the same dtype as the
    adapter, bf16 under autocast, and no dropout)."""
    if dropout:
        return False
    return ab == act_bytes(method) and (ab == 2 or not mixed)


def lm_head_lora_forward_rows(
    method: str, ab: int, N: int, V: int, H: int, dropout: bool = False, mixed: bool = False
) -> list[tuple[str, int, int]]:
    """Inside lm_head's LoRA forward, at ``result + lora_B(...) * scaling``: the base logits (in
    lm_head's dtype: bf16, or fp32 for QLoRA's upcast head), the scaled LoRA term (adapter dtype)
    and their sum (the wider of the two); at the multiply the unscaled term stands for the sum,
    the same bytes. QLoRA's head (4 B) makes this the forward's peak: 12 N V bytes against the
    loss's 8 N V. Under bf16 autocast all three are bf16 (both linears run in bf16; ``* scaling``
    and the add keep it). Besides: ``x_ab``, the input's fresh cast to the adapter dtype, which
    ``forward``'s local ``x`` holds until it returns, when ``lora_A`` does not save it (dropout
    saves its output; autocast's linear saves its bf16 cast of an fp32 one); the dropout's own
    output is gone by then (a temporary of ``lora_B(lora_A(dropout(x)))`` when it is not saved)."""
    base = 2 if mixed else act_bytes(method)
    term = 2 if mixed else ab
    rows = [
        ("lm_head base logits", base * N * V, 1),
        ("lm_head LoRA term, scaled", term * N * V, 1),
        ("their sum", max(base, term) * N * V, 1),
    ]
    fresh = ab != act_bytes(method)
    if fresh and (dropout or (mixed and ab == 4)):
        rows.append(("lm_head input cast to the adapter dtype (forward's local)", ab * N * H, 1))
    return rows


def embed_lora_rows(
    spec: ModelSpec, method: str, rank: int, adapter_bytes: int, N: int, mixed: bool
) -> list[tuple[str, int, int]]:
    """peft 0.21 ``lora.Embedding._embedding_forward``: ``after_A = F.embedding(ids,
    lora_embedding_A.T)`` [N, r], then ``after_A @ lora_embedding_B.T``. The matmul saves
    ``after_A`` for B's gradient and B.T (a view of the parameter: no bytes) for ``after_A``'s.
    Under bf16 autocast with an fp32 adapter (``static.adapter_elem_bytes``) F.embedding is in no
    autocast list (fp32 ``after_A``, a temporary) and the matmul casts both operands to bf16: the
    bf16 ``after_A`` (2 N r) and B.T's bf16 cast (2 r H; B.T is a view, not a leaf, so
    ``can_try_cache`` does not cache it: a fresh cast per call) are what it saves."""
    eb = adapter_elem_bytes(method, "model.embed_tokens", adapter_bytes)
    if mixed and eb == 4:
        return [
            ("embedding lora after_A cast to bf16", 2 * N * rank, 1),
            ("embedding lora_embedding_B.T cast to bf16", 2 * rank * spec.hidden_size, 1),
        ]
    return [("embedding lora after_A", eb * N * rank, 1)]


def down_proj_lora_forward_rows(
    spec: ModelSpec, seq_len: int, micro_batch: int, packed: bool = False, attn_implementation: str = "sdpa"
) -> list[tuple[str, int, int]]:
    """LoRA (bf16 base, fp32 adapters, no dropout, all-linear) under bf16 autocast with the Liger
    loss, no checkpointing: the forward's most, in the last layer's down_proj at PEFT's ``result
    + lora_B(lora_A(x)) * scaling`` (``lora.Linear.forward``: ``x = _cast_input_dtype(x, fp32)``
    is alive to the return). Relative to the end of the forward's saved tensors: the final norm's
    and liger's are not made yet; alive besides: down_proj's fp32 input cast (4 N I) and its bf16
    input, the product ``act(gate) * up`` (autocast saved a bf16 copy instead), the base output,
    the scaled LoRA term and their sum (bf16 N H each), the residual after attention and the MLP
    input (the post-attention norm's output), the layer's input (held by the decoder's loop) and
    the embedding's output (``inputs_embeds``, held by ``LlamaModel.forward``), and the
    ``position_ids`` it makes, an arange [T] int64, when none is given (a packed row brings its
    own, an input; with SDPA its bool block-causal mask [1, 1, N, N] from ``create_causal_mask``
    is alive through the layers). Observed in the trace (3B at 8K tokens: 151 MB above the loss's
    moments) and derived."""
    b, T = micro_batch, seq_len
    N = b * T
    H, I = spec.hidden_size, spec.intermediate_size
    rows = [
        ("final norm fp32 input, rsqrt (not yet)", FP32 * N * H + FP32 * N, -1),
        ("liger grad_input, loss (not yet)", 2 * N * H + FP32, -1),
        ("down_proj input cast to fp32 (peft)", FP32 * N * I, 1),
        ("down_proj input, act(gate) * up", 2 * N * I, 1),
        ("down_proj base output, scaled LoRA term, their sum", 2 * N * H, 3),
        ("residual after attention, MLP input", 2 * N * H, 2),
        ("the layer's input, the embedding's output", 2 * N * H, 2),
    ]
    if not packed:
        rows.append(("position_ids (arange)", INT64 * T, 1))
    elif attn_implementation == "sdpa":
        rows.append(("packed block-causal mask (bool)", N * N, 1))
    return rows


def recompute_up_proj_rows(
    spec: ModelSpec,
    rank: int,
    grad_checkpointing: str,
    seq_len: int,
    micro_batch: int,
    layers_kept: int,
    liger_layers: bool = False,
) -> list[tuple[str, int, int]]:
    """LoRA (bf16 base, fp32 adapters, no dropout, all-linear) with non-reentrant checkpointing:
    the live tensors, besides weights, states and gradients, when backward recomputes a decoder
    layer (``layers_kept`` - 1 is its index: the checkpointed inputs of the later layers are gone)
    and the recompute reaches up_proj's LoRA term, its largest moment (torch.utils.checkpoint
    recomputes on the first unpack of a saved tensor, here lora_B's input in down_proj's backward,
    and stops once down_proj's saved tensors exist; gate's moment holds less, down's smaller
    temporaries when I > 1.5 H). Observed in the trace and derived:

    - outside the layer: ``layers_kept`` checkpointed inputs, ``cache_position``, cos and sin, the
      input ids, the loss and the backward seed (the final norm's tensors and liger's
      ``grad_input`` are gone);
    - the gradient of the layer's output (a N H), and down_proj's backward so far: the base
      output's gradient (``result.to(bf16)``'s backward, then the add: a N H bf16) and the LoRA
      term's (``* scaling``'s backward: fp32 N H);
    - the recomputed layer, saved for backward so far: both norms (fp32 input, rsqrt), q, k, v, o,
      gate and up's fp32 input casts and ``lora_A`` outputs, flash's q, k, v, out and logsumexp,
      gate's output and ``silu``'s; alive but not saved: the residual after attention and the MLP
      input (a N H each); up_proj's base output (a N I), ``lora_B``'s fp32 output and its scaled
      copy (4 N I each)."""
    del grad_checkpointing  # non-reentrant only (estimate._estimate)
    b, T = micro_batch, seq_len
    N = b * T
    H, I = spec.hidden_size, spec.intermediate_size
    a, ab = 2, FP32
    rows: list[tuple[str, int, int]] = [
        ("checkpointed layer inputs", a * N * H, layers_kept),
        ("cache_position", INT64 * T, 1),
        ("rotary cos, sin", a * T * spec.head_dim, 2),
        ("input_ids", INT64 * N, 1),
        ("loss, backward seed", FP32, 2),
        ("the layer output's gradient", a * N * H, 1),
        ("down_proj base output's gradient", a * N * H, 1),
        ("down_proj LoRA term's gradient", ab * N * H, 1),
    ]

    def norm(count: int) -> None:
        rows.append(("rmsnorm fp32 input", FP32 * N * H, count))
        rows.append(("rmsnorm rsqrt", FP32 * N, count))

    if liger_layers:
        # LigerRMSNorm saves its input itself: the input norm's is the checkpointed input (already
        # counted), the post-attention norm's the residual after attention; silu's output is not
        # made (LigerSiLUMulFunction runs after up_proj)
        layer = _layer(spec, "lora", LAYER_TARGETS, rank, ab, False, N, b, True, 1, lambda c: None, a)
        rows += [r for r in layer if not r[0].startswith(("down", "gate, up outputs", "gate, act, up"))]
        rows += liger_norm_rows(N, H, a, 1)
        rows += [("input norm rstd", FP32 * N, 1), ("gate output", a * N * I, 1), ("MLP input", a * N * H, 1)]
    else:
        layer = _layer(spec, "lora", LAYER_TARGETS, rank, ab, False, N, b, True, 1, norm, a)
        rows += [r for r in layer if not r[0].startswith(("down", "gate, act, up"))]
        rows += [("gate output, silu output", a * N * I, 2), ("residual after attention, MLP input", a * N * H, 2)]
    rows += [
        ("up_proj base output", a * N * I, 1),
        ("up_proj lora_B output and its scaled copy", ab * N * I, 2),
    ]
    return rows


def _embed_leaf_rows(method: str, targets: tuple[str, ...], N: int, H: int, a: int) -> list[tuple[str, int, int]]:
    """With checkpointing, transformers 5.24 calls ``enable_input_require_grads()``
    (``_activation_checkpointing_enable``), so the embedding's output is a leaf that requires
    grad and its AccumulateGrad node keeps it; with a LoRA embedding adapter that output is not
    the first layer's input (which is checkpointed anyway), so it is one more [N, H] tensor."""
    if method == "full" or "embed" not in targets:
        return []
    return [("embedding base output (grad-requiring leaf)", a * N * H, 1)]


def _qk_norm_rows(
    spec: ModelSpec, tg: set[str] | tuple[str, ...], in_grad: bool, N: int, a: int, full: bool, count: int
) -> list[tuple[str, int, int]]:
    """Qwen3's RMSNorm over each head of q and k (``q_norm``/``k_norm``, modeling_qwen3.py), when
    the projection's output requires grad: its fp32 input and rsqrt per head (and, trainable, the
    bf16 input for the weight's gradient)."""
    rows: list[tuple[str, int, int]] = []
    if not spec.qk_norm:
        return rows
    for m, dim, heads in (("q", spec.q_dim, spec.num_attention_heads), ("k", spec.kv_dim, spec.num_key_value_heads)):
        if in_grad or m in tg:
            rows += [(f"{m}_norm fp32 input", FP32 * N * dim, count), (f"{m}_norm rsqrt", FP32 * N * heads, count)]
            if full:
                rows.append((f"{m}_norm bf16 input (weight grad)", a * N * dim, count))
    return rows


def loss_forward_bytes(
    spec: ModelSpec,
    method: str,
    grad_checkpointing: str,
    seq_len: int,
    micro_batch: int,
    mixed: bool = False,
    quant: str = "bf16",
    use_cache: bool = True,
    norm_out_saved: bool = False,
    decoder_grad: bool = True,
) -> int:
    """The loss's forward transients on top of what is saved: the logits (bf16, then their fp32
    copy; QLoRA's lm_head is fp32 and ``.float()`` is no copy), the final norm's output
    (``log_softmax``'s output is saved; so is the norm's output when lm_head trains); with more
    than one sequence also the padded labels [b, T + 1], which ``ForCausalLMLoss``'s ``labels``
    keeps until it returns (the saved target is a copy); the forward's cache
    (``forward_cache_bytes``). Under autocast the logits are bf16 (lm_head is a lower-precision
    op) for every method. (accelerate's ``convert_outputs_to_fp32`` copies the bf16 logits to
    fp32 after the forward, when the autocast cache and the loss's own copies are gone: never
    above this moment.) A packed row is passed as (N, 1)."""
    N = seq_len * micro_batch
    a = act_bytes(method, quant)
    pad = INT64 * micro_batch * (seq_len + 1) if micro_batch > 1 else 0
    vn = FP32 * N * spec.vocab_size if a == 4 and not mixed else (2 + FP32) * N * spec.vocab_size
    # the final norm's output: saved when lm_head trains, unless it is fp32 and cast for it
    norm_out = 0 if (method == "full" and a == 2) or norm_out_saved else a * N * spec.hidden_size
    cache = forward_cache_bytes(spec, method, grad_checkpointing, N, quant, use_cache, decoder_grad)
    return vn + norm_out + pad + cache


def forward_cache_bytes(
    spec: ModelSpec,
    method: str,
    grad_checkpointing: str,
    tokens: int,
    quant: str = "bf16",
    use_cache: bool = True,
    decoder_grad: bool = True,
) -> int:
    """The K and V of the ``DynamicCache`` the forward fills without checkpointing (``use_cache``),
    held by the model's output until it is dropped, beyond what attention saves: flash saves
    bf16 K and V themselves, so only fp32 ones count (QLoRA: the math path does not save them,
    and under autocast flash saves bf16 casts of them; fp32 master weights: k after rotary is
    fp32, v_proj's output bf16, saved by flash as it is). A packed row runs with
    ``use_cache=False``: none. (Liger's ``lce_forward`` keeps the decoder's output, and so this
    cache, while its loss runs.) When the decoder has no graph (``decoder_grad`` False: an adapter
    on lm_head alone, ``decoder_requires_grad``) attention saves nothing, and the bf16 K and V
    count too."""
    a = act_bytes(method, quant)
    if grad_checkpointing != "off" or not use_cache:
        return 0
    if a != 4:
        return 0 if decoder_grad else 2 * spec.num_hidden_layers * a * tokens * spec.kv_dim
    kv = 1 if method == "full" else 2
    return kv * spec.num_hidden_layers * a * tokens * spec.kv_dim


def loss_backward_rows(spec: ModelSpec, seq_len: int, micro_batch: int, grad_accum: int) -> list[tuple[str, int, int]]:
    """Tensors added (and removed, negative counts) at ``log_softmax``'s backward."""
    b, T = micro_batch, seq_len
    N = b * T
    rows = [
        ("nll_loss_backward grad fp32", FP32 * N * spec.vocab_size, 1),
        ("log_softmax_backward output fp32", FP32 * N * spec.vocab_size, 1),
        ("labels (released)", INT64 * (T + 1 if b == 1 else N), -1),
        ("loss scalar (released)", FP32, -1),
        ("backward seed", FP32, 1),
    ]
    del grad_accum  # ``loss / grad_accum``: the same scalars at this moment (the trace's count)
    return rows


def embedding_end_rows(
    spec: ModelSpec, accum_has_grad: bool, tokens: int, itemsize: int = 2
) -> list[tuple[str, int, int]]:
    """Full fine-tuning, the end of backward, besides every gradient: with a tied embedding, the
    engine's input buffer adds lm_head's and the embedding's [V, H] bf16 gradients out of place
    (both and their sum alive; observed on real CPU tensors and in the trace), and with an
    existing ``.grad`` (grad_accum > 1) AccumulateGrad then adds the sum in place; untied,
    ``embedding_dense_backward`` runs with its input, the embedding output's gradient [N, H], and
    its [V, H] output is the ``.grad`` itself (or, accumulating, added to it)."""
    vh = itemsize * spec.vocab_size * spec.hidden_size
    if spec.tie_word_embeddings:
        return [("embedding grad parts (lm_head, embedding) and their sum", vh, 3 if accum_has_grad else 2)]
    rows = [("embedding output's gradient", itemsize * tokens * spec.hidden_size, 1)]
    if accum_has_grad:
        rows.append(("embedding_dense_backward output", vh, 1))
    return rows


def adapter_cast_sizes(spec: ModelSpec, targets: tuple[str, ...], rank: int) -> list[tuple[int, int]]:
    """fp32 adapters under bf16 autocast: each ``lora_A``/``lora_B`` weight, a leaf that requires
    grad, is cast to bf16 once per autocast region and cached (autocast_mode.cpp
    ``cached_cast``/``can_try_cache``) until the region exits: at the loss's forward every cast
    is alive, (bytes, count) per tensor size here. The linears save some of them (``_layer``:
    every ``lora_B``, whose input is ``lora_A``'s output, and each ``lora_A`` whose module input
    requires grad); those outlive the region."""
    L = spec.num_hidden_layers
    out: list[tuple[int, int]] = []
    for _, i, o in layer_linears(spec, targets):
        out += [(2 * rank * i, L), (2 * rank * o, L)]
    return out


def layer_linears(spec: ModelSpec, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(target, in features, out features) of each of a decoder layer's Linears among ``targets``."""
    H, I = spec.hidden_size, spec.intermediate_size
    dims = {
        "q": (H, spec.q_dim),
        "k": (H, spec.kv_dim),
        "v": (H, spec.kv_dim),
        "o": (spec.q_dim, H),
        "gate": (H, I),
        "up": (H, I),
        "down": (I, H),
    }
    return [(t, *dims[t]) for t in LAYER_TARGETS if t in targets]


__all__ = ["LAYER_TARGETS", "Saved", "loss_backward_rows", "loss_forward_bytes", "saved_tensors", "embedding_end_rows"]

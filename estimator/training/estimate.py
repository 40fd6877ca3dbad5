"""``estimate_training()``: GPU memory of one fine-tuning step, as the one report type.

The step (``settings``): ``grad_accum`` micro-batches of forward + loss + backward, then the
optimizer step. The peak is the most live memory at any moment of the steady state (the states
exist from the first step on; with ``grad_accum > 1`` the gradients exist during every
micro-batch after the first), over these candidates, each the exact set of live tensors:

- ``forward (loss)``: weights, adapters, states, saved activations, the loss's transients;
- ``backward (log_softmax)``: the same with the loss's backward tensors (``activations``);
- ``backward (end)``, full fine-tuning: every gradient and, tied, the [V, H] gradient sum;
- ``optimizer step``: weights, adapters, gradients, states and the step's temporaries.

With ``loss="liger"`` (``loss``: Liger's fused linear cross-entropy) the loss's candidates are
``forward (loss)`` at its chunk loop (under autocast with the autocast cache, and for fp32
inputs its autocast matmuls: ``loss.liger_chunk_rows``), ``backward (liger)`` at its backward
and, but for fp32 master weights, ``backward (final norm)``: the final RMSNorm's backward right
after it, which the logits' [N, V] tensors no longer hide; for LoRA all-linear (fp32 adapters,
no dropout, no autocast) with non-reentrant checkpointing also ``backward (recompute up_proj)``,
a layer's recompute inside backward (``activations.recompute_up_proj_rows``); for LoRA
all-linear (fp32 adapters, no dropout, no checkpointing) under autocast ``forward (down_proj
LoRA)``, the last layer's down_proj LoRA forward (``activations.down_proj_lora_forward_rows``).
These are liger-only: the default loss's candidates and numbers are unchanged.

Moments inside the decoder layers' backward are not candidates: there every layer's saved
tensors are the most that can be alive, and the loss's 8 N V bytes of fp32 gradients exceed any
layer's backward temporaries for a vocabulary as large as Llama 3's (checked by the trace on the
proof grid, validation/training/). A model whose vocabulary is small against its width may peak
in a layer's backward instead; the estimate would then be low.

Counters: the live-tensor peak (``peak_live_bytes``, ``peak_live_rounded_bytes``: each tensor
rounded to 512 B, what the trace records) is exact by mechanism; ``peak_allocated_bytes`` charges
each tensor as the caching allocator does (``allocator.block_bytes``) plus the cuBLAS workspace;
``peak_reserved_bytes`` the segments those tensors need (``allocator.reserved_for``), with the
fragmentation range of ``overhead`` (measured on inference traces: not yet checked for training);
``device_used_bytes`` adds the CUDA context and bitsandbytes' paged optimizer states (managed
memory, resident on the GPU while it fits).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..allocator import block_bytes, reserved_for, round_size
from ..gpus import Gpu, custom_gpu, get_gpu
from ..model import ModelSpec, load_model, tensors
from ..overhead import cublas_workspace_bytes, cuda_context_bytes, cuda_context_range_bytes, fragmentation_high_bytes
from ..report import COUNTERS, MemoryReport, totals_fields
from ..units import check_int
from .activations import (
    act_bytes,
    adapter_cast_sizes,
    attention_kernel,
    decoder_requires_grad,
    down_proj_lora_forward_rows,
    embedding_end_rows,
    forward_cache_bytes,
    layer_linears,
    liger_down_proj_backward_rows,
    liger_down_proj_forward_rows,
    lm_head_lora_forward_rows,
    lm_head_shares_input,
    loss_backward_rows,
    loss_forward_bytes,
    math_attention_backward_rows,
    recompute_up_proj_rows,
    saved_tensors,
)
from .loss import final_norm_backward_rows, liger_backward_rows, liger_forward_rows
from .params import LAYER_TARGETS, TrainableParams, parse_targets, trainable_params
from .settings import TrainSettings, check_modelled
from .static import (
    DTYPE_BYTES,
    StaticBytes,
    adapter_elem_bytes,
    dtype_of,
    optimizer_states,
    static_bytes,
    trainable_tensors,
    weight_layout,
)

TRAINING_COUNTERS = {
    **COUNTERS,
    "peak_live_bytes": "peak of live tensor bytes over the step (the trace's unrounded peak)",
    "peak_live_rounded_bytes": "the same with each tensor rounded up to 512 B (the trace's peak_allocated)",
}
BREAKDOWN_KEYS = (
    "weights",
    "adapter_weights",
    "gradients",
    "optimizer_states",
    "activations_saved",
    "transient_peak",
    "overhead",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingEstimate(MemoryReport):
    """A fine-tuning step's memory: the one report type, every byte field an int.

    ``weights_bytes`` is the base model plus the adapters; ``activations_bytes`` what the peak
    holds beyond weights, gradients and optimizer states (saved activations + transients);
    ``overhead_bytes`` the rest of device used (allocator, cuBLAS workspace, CUDA context)."""

    settings: TrainSettings
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    peak_reserved_low_bytes: int
    peak_reserved_high_bytes: int
    device_used_low_bytes: int
    device_used_high_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    paged_bytes: int
    peak_live_bytes: int
    peak_live_rounded_bytes: int
    peak_phase: str
    trainable: TrainableParams
    breakdown: dict[str, int] = field(default_factory=dict, compare=False)
    candidates: dict[str, int] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "engine": self.engine,
            "trainable_params": self.trainable.trainable,
            "all_params": self.trainable.all,
            "trainable_line": self.trainable.line(),
            **totals_fields(self),
            "gradients_bytes": self.gradients_bytes,
            "optimizer_states_bytes": self.optimizer_states_bytes,
            "paged_bytes": self.paged_bytes,
            "peak_live_bytes": self.peak_live_bytes,
            "peak_live_rounded_bytes": self.peak_live_rounded_bytes,
            "peak_phase": self.peak_phase,
            "breakdown": dict(self.breakdown),
            "candidates": dict(self.candidates),
            "counters": dict(TRAINING_COUNTERS),
        }


def make_train_settings(
    model: Any = "llama-3.2-3b", *, gpu: Any = None, targets: Any = "all-linear", **kw: Any
) -> TrainSettings:
    """Settings from loose inputs: a model reference, a GPU key, targets as text or a sequence."""
    return TrainSettings(
        model=load_model(model),
        gpu=get_gpu(gpu) if gpu is not None else None,
        targets=parse_targets(targets) if not isinstance(targets, tuple) else targets,
        **kw,
    )


# The fields of a training record's settings (``python -m runtime train-measure``) that are
# ``make_train_settings`` keywords, besides the model.
RECORD_FIELDS = (
    "method",
    "rank",
    "targets",
    "dropout",
    "quant",
    "adapter_dtype",
    "optimizer",
    "seq_len",
    "micro_batch",
    "grad_accum",
    "grad_checkpointing",
    "mixed_precision",
    "packed",
    "attn_implementation",
    "loss",
    "liger_layers",
)


def record_settings(s: Mapping[str, Any], gpu: Any = None) -> TrainSettings:
    """The ``TrainSettings`` a runtime training record's settings state (the runtime, its
    validation report and the tests estimate a record through this one mapping)."""
    # records made before mixed precision, packed batches and the loss setting lack those
    # fields: the defaults
    defaults = {
        "mixed_precision": "off",
        "packed": False,
        "attn_implementation": "sdpa",
        "loss": "transformers",
        "liger_layers": False,
    }
    return make_train_settings(s["model"], gpu=gpu, **{k: s.get(k, defaults.get(k)) for k in RECORD_FIELDS})


def estimate_training(
    model: Any = "llama-3.2-3b",
    method: str = "lora",
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    **kw: Any,
) -> TrainingEstimate:
    """Estimate one fine-tuning step (see the module docstring and docs/training.md).

    Keywords: rank, targets ("all-linear" or "q,k,v,o"...), dropout, quant (qlora: nf4, nf4-dq,
    fp4, fp4-dq), adapter_dtype, optimizer, seq_len, micro_batch, grad_accum,
    grad_checkpointing ("off", "non-reentrant", "reentrant"), packed (one padding-free row),
    attn_implementation ("sdpa", "flash_attention_2"), mixed_precision ("off", "bf16"), loss
    ("transformers", "liger"). ``model`` may be a TrainSettings."""
    if isinstance(model, TrainSettings):
        s = model
    else:
        if method == "qlora" and "quant" not in kw:
            kw["quant"] = "nf4"
        s = make_train_settings(model, gpu=gpu, method=method, **kw)
    return estimate_train_settings(s, gpu_memory_bytes)


def estimate_train_settings(s: TrainSettings, gpu_memory_bytes: int | None = None) -> TrainingEstimate:
    if gpu_memory_bytes is not None:
        check_int(gpu_memory_bytes, "gpu_memory_bytes", 1, 1 << 50)
        if s.gpu is None:
            from dataclasses import replace

            s = replace(s, gpu=custom_gpu(gpu_memory_bytes))
    mem = gpu_memory_bytes if gpu_memory_bytes is not None else (s.gpu.memory_bytes if s.gpu else None)
    return _estimate(s, mem)


@dataclass(frozen=True, slots=True)
class _Group:
    """Tensors counted together: raw, 512-rounded and allocator-charged bytes, and the count of
    each size (for the segments)."""

    raw: int
    rounded: int
    charged: int
    sizes: tuple[tuple[int, int], ...]


def _group(rows: list[tuple[int, int]]) -> _Group:
    raw = rnd = blk = 0
    counts: dict[int, int] = {}
    for n, c in rows:
        raw += n * c
        rnd += round_size(n) * c
        blk += block_bytes(n) * c
        counts[n] = counts.get(n, 0) + c
    return _Group(raw, rnd, blk, tuple(counts.items()))


@functools.lru_cache(maxsize=256)
def _static_groups(
    spec: ModelSpec, method: str, quant: str, rank: int, targets: tuple[str, ...], adapter_dtype: str, optimizer: str
) -> tuple[StaticBytes, _Group, _Group, _Group, _Group]:
    """The static parts and the groups of weights (base + adapters), gradients, states and the
    optimizer step's temporaries."""
    st = static_bytes(spec, method, quant, rank, targets, adapter_dtype, optimizer)
    tr = trainable_tensors(spec, method, rank, targets, dtype_of(method, quant, adapter_dtype))
    t_sizes = [(t.nbytes, 1) for t in tr]
    w = [(n, 1) for n in weight_layout(spec, method, quant)] + (t_sizes if method != "full" else [])
    opt = optimizer_states(optimizer, tr)
    states = [(n, 1) for n in opt.tensors]
    return st, _group(w), _group(t_sizes), _group(states), _group([(n, 1) for n in opt.step_tensors])


@functools.lru_cache(maxsize=256)
def _grads_before_attention(
    spec: ModelSpec, method: str, rank: int, targets: tuple[str, ...], adapter_dtype: str
) -> tuple[tuple[int, int], ...]:
    """Gradients that exist when the last layer's attention runs its backward (first micro-batch
    of a step): lm_head's adapter and the last layer's o, gate, up and down adapters."""
    last = f"model.layers.{spec.num_hidden_layers - 1}."
    after = tuple(last + m for m in ("self_attn.o_proj.", "mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj."))
    tr = trainable_tensors(spec, method, rank, targets, adapter_dtype)
    return tuple((t.nbytes, 1) for t in tr if t.name.startswith(after) or t.name.startswith("lm_head."))


@functools.lru_cache(maxsize=256)
def _grads_after_layer(spec: ModelSpec, rank: int, targets: tuple[str, ...], layer: int) -> tuple[tuple[int, int], ...]:
    """LoRA gradients made before backward reaches decoder layer ``layer`` (first micro-batch):
    the adapters of every later layer (fp32 adapters)."""
    tr = trainable_tensors(spec, "lora", rank, targets, "fp32")
    later = [t for t in tr if t.name.startswith("model.layers.") and int(t.name.split(".")[2]) > layer]
    return tuple((t.nbytes, 1) for t in later)


def _estimate(s: TrainSettings, gpu_memory_bytes: int | None) -> TrainingEstimate:
    check_modelled(s)
    mixed = s.mixed_precision != "off"
    kernel = attention_kernel(s.method, s.packed, s.attn_implementation, mixed)
    st, weights, grads, states, step_g = _static_groups(
        s.model, s.method, s.quant, s.rank, s.targets, s.adapter_dtype, s.optimizer
    )
    saved = saved_tensors(
        s.model,
        s.method,
        s.targets,
        s.rank,
        DTYPE_BYTES[s.adapter_dtype],
        s.dropout > 0,
        s.grad_checkpointing,
        s.seq_len,
        s.micro_batch,
        mixed=mixed,
        quant=s.quant,
        packed=s.packed,
        attn_implementation=s.attn_implementation,
        loss=s.loss,
        liger_layers=s.liger_layers,
    )
    saved_g = _group(saved.sizes())
    resident = [weights, states] + ([grads] if s.grad_accum > 1 else [])
    # a packed row is one sequence of N tokens to the loss, without a cache (use_cache=False)
    T, b = (s.tokens, 1) if s.packed else (s.seq_len, s.micro_batch)
    head_lora = s.method != "full" and "lm_head" in s.targets
    head_ab = adapter_elem_bytes(s.method, "lm_head", DTYPE_BYTES[s.adapter_dtype])
    shares = head_lora and lm_head_shares_input(s.method, head_ab, s.dropout > 0, mixed)
    decoder_grad = decoder_requires_grad(s.method, s.targets, s.grad_checkpointing)
    kv_cache = forward_cache_bytes(
        s.model, s.method, s.grad_checkpointing, s.tokens, s.quant, not s.packed, decoder_grad
    )
    cache_rows: list[tuple[int, int]] = []
    if mixed and s.method != "full":
        # the autocast cache's adapter weight casts the linears did not save (alive until the
        # forward's autocast region exits, after the loss): fp32 adapters only (QLoRA's lm_head
        # adapter is fp32 whatever adapter_dtype says)
        cache: dict[int, int] = {}
        if s.adapter_dtype == "fp32":
            for n, c in adapter_cast_sizes(s.model, s.targets, s.rank):
                cache[n] = cache.get(n, 0) + c
            for what, n, c in saved.rows:
                if what.endswith("weight cast (saved)") and not what.startswith("lm_head"):
                    cache[n] -= c
        if head_lora and head_ab == 4 and not decoder_grad:
            # lm_head's adapter alone: lora_A's cached weight cast is not saved (its input needs no grad)
            cache[2 * s.rank * s.model.hidden_size] = cache.get(2 * s.rank * s.model.hidden_size, 0) + 1
        cache_rows = [(n, c) for n, c in cache.items() if c]
    if mixed and s.quant == "fp32" and s.grad_checkpointing != "off":
        # fp32 master weights, checkpointed layers: every Linear's bf16 weight cast is cached
        # during the forward and none is saved (the layers keep only their inputs)
        L = s.model.num_hidden_layers
        cache_rows += [(2 * i * o, L) for _, i, o in layer_linears(s.model, LAYER_TARGETS)]
    if mixed and s.quant == "fp32":
        # and every bias's cast (a Linear does not save its bias): cached, never saved
        cache_rows += [(2 * t.numel, 1) for t in tensors(s.model) if t.kind == "bias"]
    if s.loss == "liger":
        # fp32 master weights: lm_head's weight is an fp32 leaf that requires grad (cached cast)
        # (a packed row: labels [1, N], padded to [1, N + 1], shifted as a view)
        liger_fwd = liger_forward_rows(s.model, T, b, act_bytes(s.method, s.quant), mixed, s.quant == "fp32")
        fwd = _group([(n, c) for _, n, c in liger_fwd] + [(kv_cache, 1)] + cache_rows)
        bwd = _group([(n, c) for _, n, c in liger_backward_rows(s.grad_accum)])
        bwd_name = "backward (liger)"
    else:
        loss_fwd = loss_forward_bytes(
            s.model,
            s.method,
            s.grad_checkpointing,
            T,
            b,
            mixed,
            s.quant,
            not s.packed,
            norm_out_saved=shares,
            decoder_grad=decoder_grad,
        )
        fwd = _group([(loss_fwd, 1)] + cache_rows)
        bwd = _group([(n, c) for _, n, c in loss_backward_rows(s.model, T, b, s.grad_accum)])
        bwd_name = "backward (log_softmax)"
    cands: dict[str, list[_Group]] = {
        "forward (loss)": resident + [saved_g, fwd],
        bwd_name: resident + [saved_g, bwd],
    }
    if head_lora:
        # inside lm_head's LoRA forward: the loss's rows do not exist yet
        loss_rows = ("log_softmax output fp32", "labels (padded)", "shift_labels", "loss, nll total_weight")
        before = [(n, c) for what, n, c in saved.rows if not what.startswith(loss_rows)]
        N, V, H = s.tokens, s.model.vocab_size, s.model.hidden_size
        head = lm_head_lora_forward_rows(s.method, head_ab, N, V, H, s.dropout > 0, mixed)
        norm_out = [] if shares else [(act_bytes(s.method) * N * H, 1)]
        cands["forward (lm_head LoRA)"] = resident + [
            _group(before + [(n, c) for _, n, c in head] + norm_out + [(kv_cache, 1)] + cache_rows)
        ]
    if s.loss == "liger" and s.method != "full" and s.liger_layers:
        # LigerRMSNorm's backward runs in place (no final norm candidate): the last decoder
        # layer's down_proj LoRA, backward and forward (settings: lora, all-linear, fp32
        # adapters); with checkpointing the recompute below is the step's peak (the forward's
        # moments, without the layers' saved tensors, stay below it)
        if s.grad_checkpointing == "off":
            rows = liger_down_proj_backward_rows(s.model, s.rank, s.tokens, s.grad_accum == 1)
            cands["backward (down_proj LoRA)"] = resident + [saved_g, _group([(n, c) for _, n, c in rows])]
            rows = liger_down_proj_forward_rows(s.model, s.seq_len, s.micro_batch)
            cands["forward (down_proj LoRA)"] = resident + [saved_g, _group([(n, c) for _, n, c in rows])]
    elif s.loss == "liger" and s.quant != "fp32" and not s.liger_layers:
        # the logits no longer dominate: the final norm's backward comes next (full fine-tuning
        # with its trainable norm weight too: above the end of backward at long sequences; fp32
        # master weights' fp32 norm is not modelled: there the loss's forward is the higher)
        full = s.method == "full"
        rows = final_norm_backward_rows(s.model, s.tokens, act_bytes(s.method), s.grad_accum, full)
        cands["backward (final norm)"] = resident + [saved_g, _group([(n, c) for _, n, c in rows])]
    if (
        s.loss == "liger"
        and s.method == "lora"
        and mixed
        and s.adapter_dtype == "fp32"
        and s.grad_checkpointing == "off"
        and s.targets == LAYER_TARGETS
        and s.dropout == 0
    ):
        # under autocast PEFT's fp32 input casts put the forward's most in the last layer's
        # down_proj LoRA forward, above the loss's chunk loop
        rows = down_proj_lora_forward_rows(s.model, s.seq_len, s.micro_batch, s.packed, s.attn_implementation)
        cands["forward (down_proj LoRA)"] = resident + [saved_g, _group([(n, c) for _, n, c in rows] + cache_rows)]
    if (
        s.loss == "liger"
        and s.method == "lora"
        and not mixed
        and s.grad_checkpointing == "non-reentrant"
        and s.targets == LAYER_TARGETS
        and s.adapter_dtype == "fp32"
        and s.dropout == 0
    ):
        # backward recomputes a checkpointed layer: the last one (every checkpointed input kept)
        # or the first (every later layer's adapter gradients made, in the first micro-batch)
        L = s.model.num_hidden_layers
        best: list[_Group] = []
        for layer in (L - 1, 0):
            rows = recompute_up_proj_rows(
                s.model, s.rank, s.grad_checkpointing, s.seq_len, s.micro_batch, layer + 1, s.liger_layers
            )
            done = [] if s.grad_accum > 1 else list(_grads_after_layer(s.model, s.rank, s.targets, layer))
            groups = resident + [_group([(n, c) for _, n, c in rows] + done)]
            if not best or sum(x.rounded for x in groups) > sum(x.rounded for x in best):
                best = groups
        cands["backward (recompute up_proj)"] = best
    if s.method == "full":
        end = [(8 * s.tokens, 1), (4, 2)]
        if s.packed:  # position_ids and labels, the loop's inputs
            end.append((8 * s.tokens, 2))
        if s.grad_checkpointing == "reentrant":
            # reentrant checkpointing keeps each layer's run_function (a partial holding cos, sin
            # and cache_position; packed: the caller's position_ids and, with SDPA, the mask) on
            # its graph node until the graph is freed
            end.append((act_bytes("full", s.quant) * T * s.model.head_dim, 2))
            if not s.packed:
                end.append((8 * T, 1))
            elif s.attn_implementation == "sdpa":
                end.append((T * T, 1))
        elif kernel == "fa2-varlen":
            # the forward's FlashAttnVarlenFunc nodes (without checkpointing, or non-reentrant's
            # kept graph) hold ctx.max_seqlen_q, a 0-dim int32 tensor, until the graph is freed
            # after backward (activations.attention_rows)
            end.append((4, s.model.num_hidden_layers))
        itemsize = DTYPE_BYTES[s.quant]
        end += [(n, c) for _, n, c in embedding_end_rows(s.model, s.grad_accum > 1, s.tokens, itemsize)]
        cands["backward (end)"] = [weights, states, grads, _group(end)]
        if mixed and s.quant == "fp32" and s.loss != "liger":
            # fp32 master weights: lm_head's weight gradient is computed for its bf16 cast
            # [V, H] and copied to fp32 (ToCopyBackward) while the gradient of its input [N, H]
            # waits for the final norm; the loss's tensors and lm_head's saved casts are gone
            gone = ("log_softmax output fp32", "labels (padded)", "shift_labels", "final norm output cast to bf16")
            left = [(n, c) for what, n, c in saved.rows if not what.startswith(gone + ("lm_head weight cast",))]
            vh = s.model.vocab_size * s.model.hidden_size
            left += [(2 * s.tokens * s.model.hidden_size, 1), (2 * vh, 1), (4 * vh, 1)]
            cands["backward (lm_head weight grad)"] = resident + [_group(left)]
    if s.method == "qlora" and s.model.num_hidden_layers >= 2 and kernel == "math" and decoder_grad:
        # (an adapter on lm_head alone: the decoder has no graph, no attention backward)
        rows = math_attention_backward_rows(
            s.model,
            s.targets,
            s.rank,
            DTYPE_BYTES[s.adapter_dtype],
            s.dropout > 0,
            s.grad_checkpointing,
            s.seq_len,
            s.micro_batch,
            s.liger_layers,
        )
        done = (
            []
            if s.grad_accum > 1
            else list(_grads_before_attention(s.model, s.method, s.rank, s.targets, s.adapter_dtype))
        )
        cands["backward (last layer attention)"] = resident + [_group([(n, c) for _, n, c in rows] + done)]
    cands["optimizer step"] = [weights, grads, states, step_g]
    sums = {k: (sum(g.raw for g in v), sum(g.rounded for g in v), sum(g.charged for g in v)) for k, v in cands.items()}
    phase = max(sums, key=lambda k: (sums[k][1], sums[k][0]))
    blk = sums[phase][2]
    raw = max(v[0] for v in sums.values())
    rounded = max(v[1] for v in sums.values())
    gpu: Gpu | None = s.gpu
    arch, cls = (gpu.arch, gpu.cls) if gpu else ("generic", "generic")
    ws = cublas_workspace_bytes(arch)
    allocated = blk + block_bytes(ws)
    merged: dict[int, int] = {}
    for g in cands[phase]:
        for n, c in g.sizes:
            merged[n] = merged.get(n, 0) + c
    live = [(n, c) for n, c in merged.items() if c > 0 and n > 0]
    segs = reserved_for([n for n, _ in live], [c for _, c in live]) + reserved_for((ws,))
    reserved = max(allocated, segs)
    ctx = cuda_context_bytes(cls)
    ctx_low, ctx_high = cuda_context_range_bytes(cls)
    w_total = st.weights_bytes + st.adapter_weights_bytes
    reserved_high = reserved + fragmentation_high_bytes("sdpa", reserved, w_total)
    device = reserved + ctx + st.paged_bytes
    static_at_peak = w_total + st.optimizer_states_bytes
    grads_at_peak = st.gradients_bytes if (phase in ("optimizer step", "backward (end)") or s.grad_accum > 1) else 0
    # the tied gradient sum and the step's temporaries are transients; so is everything not static
    activations = max(0, sums[phase][0] - static_at_peak - grads_at_peak)
    at_loss = phase.startswith(("forward", "backward (log", "backward (liger", "backward (final"))
    transient = max(0, activations - saved.nbytes) if at_loss else activations
    saved_at_peak = saved.nbytes if at_loss else 0
    overhead = device - w_total - grads_at_peak - st.optimizer_states_bytes - activations
    breakdown = {
        "weights": st.weights_bytes,
        "adapter_weights": st.adapter_weights_bytes,
        "gradients": grads_at_peak,
        "optimizer_states": st.optimizer_states_bytes + st.paged_bytes,
        "activations_saved": saved_at_peak,
        "transient_peak": transient,
        "overhead": overhead - st.paged_bytes,
    }
    return TrainingEstimate(
        settings=s,
        engine="transformers-train",
        weights_bytes=w_total,
        kv_cache_bytes=0,
        activations_bytes=activations,
        overhead_bytes=overhead,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_used_bytes=device,
        peak_reserved_low_bytes=reserved,
        peak_reserved_high_bytes=reserved_high,
        device_used_low_bytes=reserved + ctx_low + st.paged_bytes,
        device_used_high_bytes=reserved_high + ctx_high + st.paged_bytes,
        gpu_memory_bytes=gpu_memory_bytes,
        gradients_bytes=grads_at_peak,
        optimizer_states_bytes=st.optimizer_states_bytes,
        paged_bytes=st.paged_bytes,
        peak_live_bytes=raw,
        peak_live_rounded_bytes=rounded,
        peak_phase=phase,
        trainable=trainable_params(s.model, s.method, s.rank, s.targets),
        breakdown=breakdown,
        candidates={k: v[0] for k, v in sums.items()},
    )

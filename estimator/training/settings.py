"""One fine-tuning setting, validated once (the estimator and the runtime share it).

The training step modelled is the plain PyTorch loop of PEFT's and transformers' examples, one
optimizer step over ``grad_accum`` micro-batches:

    for micro-batch: loss = model(input_ids=ids, labels=ids).loss / grad_accum; loss.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)

with the model output dropped before ``backward`` (as the Trainer's ``compute_loss`` does), SDPA
attention, every sequence ``seq_len`` tokens (no padding). ``mixed_precision``: ``"off"`` runs
the weights' and adapters' own dtypes, as PEFT leaves them; ``"bf16"`` is the Trainer's
``bf16=True``: accelerate 1.16 ``Accelerator.prepare_model`` wraps the forward in
``torch.autocast("cuda", dtype=torch.bfloat16)`` and ``convert_outputs_to_fp32`` (the backward
runs outside autocast). Full fine-tuning with ``quant="fp32"`` is fp32 master weights (the model
loaded in fp32) under that autocast.

``packed``: padding-free batches (transformers' ``DataCollatorWithFlattening``, TRL's
``padding_free``/``packing``): the ``micro_batch`` sequences are one row [1, N] of
N = micro_batch x seq_len tokens, ``position_ids`` restarting at 0 per sequence, ``labels`` -100 at
each sequence's first token, no attention mask, and ``use_cache=False`` (the Trainer's default,
``TrainingArguments.use_cache``). ``attn_implementation``: the model's ``sdpa`` or
``flash_attention_2`` (flash-attn 2, varlen on a packed row).

Two kinds of refusal, in two places: ``TrainSettings`` refuses what is not a step (a bad value,
a packed row of one sequence...), for the estimator and the runtime alike; ``check_modelled``
refuses a valid step the estimate does not model yet, for the estimate only, so the runtime
can still measure (trace, or run on a GPU) the combinations that are to be modelled next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSpecError
from ..estimate import PRE_SM80_ARCHS
from ..gpus import Gpu
from ..model import ModelSpec
from ..units import check_int
from .activations import decoder_requires_grad
from .params import LAYER_TARGETS, MAX_RANK, check_method, targets_label
from .static import ADAPTER_DTYPES, FULL_PRECISIONS, QLORA_QUANTS, check_optimizer

GRAD_CHECKPOINTING = ("off", "non-reentrant", "reentrant")
MIXED_PRECISION = ("off", "bf16")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2")
# the loss: transformers' ``ForCausalLMLoss`` over the full logits, or Liger-Kernel's fused linear
# cross-entropy (``LigerForCausalLMLoss``, what the Trainer's ``use_liger_kernel`` swaps in)
LOSSES = ("transformers", "liger")
MAX_SEQ_LEN = 1 << 24
MAX_MICRO_BATCH = 1 << 16
MAX_GRAD_ACCUM = 1 << 16


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in options:
        raise InvalidSpecError(f"{name} must be one of {', '.join(options)}: {v!r}")
    return v


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    """A fine-tuning step. ``quant`` is the base's storage: the bnb 4-bit scheme for qlora, the
    training precision for full and lora (bf16)."""

    model: ModelSpec
    method: str = "lora"
    rank: int = 16
    targets: tuple[str, ...] = LAYER_TARGETS
    dropout: float = 0.0
    quant: str = "bf16"
    adapter_dtype: str = "fp32"
    optimizer: str = "adamw"
    seq_len: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    grad_checkpointing: str = "off"
    mixed_precision: str = "off"
    packed: bool = False
    attn_implementation: str = "sdpa"
    loss: str = "transformers"
    liger_layers: bool = False
    gpu: Gpu | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        check_optimizer(self.optimizer)
        check_int(self.rank, "rank", 1, MAX_RANK)
        check_int(self.seq_len, "seq_len", 2, MAX_SEQ_LEN)
        window = self.model.max_position_embeddings
        if self.seq_len > window:
            raise InvalidSpecError(
                f"seq_len must be at most the model's window (max_position_embeddings {window:,}): {self.seq_len!r}"
            )
        check_int(self.micro_batch, "micro_batch", 1, MAX_MICRO_BATCH)
        check_int(self.grad_accum, "grad_accum", 1, MAX_GRAD_ACCUM)
        _choice("grad_checkpointing", self.grad_checkpointing, GRAD_CHECKPOINTING)
        _choice("loss", self.loss, LOSSES)
        _choice("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        if not isinstance(self.packed, bool):
            raise InvalidSpecError(f"packed must be true or false: {self.packed!r}")
        _choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.packed and self.micro_batch < 2:
            raise InvalidSpecError(
                f"micro_batch: a packed row needs at least 2 sequences (one is an unpacked row): {self.micro_batch!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise InvalidSpecError(f"dropout must be a number in [0, 1): {self.dropout!r}")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.method == "qlora":
            _choice("quant", self.quant, QLORA_QUANTS)
        else:
            _choice("quant", self.quant, FULL_PRECISIONS if self.method == "full" else FULL_PRECISIONS[:1])
        if not isinstance(self.liger_layers, bool):
            raise InvalidSpecError(f"liger_layers must be true or false: {self.liger_layers!r}")
        if self.liger_layers and self.model.model_type != "llama":
            # the runtime's stand-ins (and the estimate) follow apply_liger_kernel_to_llama's patches
            raise InvalidSpecError(
                "liger_layers: Liger's RMSNorm, SwiGLU and RoPE kernels are modelled for llama "
                f"(apply_liger_kernel_to_llama), not model_type {self.model.model_type}: True"
            )
        if self.method != "full" and not self.targets:
            raise InvalidSpecError(f"targets must name at least one module: {self.targets!r}")

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch."""
        return self.seq_len * self.micro_batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "method": self.method,
            "rank": self.rank if self.method != "full" else None,
            "targets": targets_label(self.targets) if self.method != "full" else None,
            "dropout": self.dropout if self.method != "full" else None,
            "quant": self.quant,
            "adapter_dtype": self.adapter_dtype if self.method != "full" else None,
            "optimizer": self.optimizer,
            "seq_len": self.seq_len,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "grad_checkpointing": self.grad_checkpointing,
            "mixed_precision": self.mixed_precision,
            "packed": self.packed,
            "attn_implementation": self.attn_implementation,
            "loss": self.loss,
            "liger_layers": self.liger_layers,
            "engine": "transformers-train",
            "gpu": self.gpu.key if self.gpu else None,
        }


def check_modelled(s: TrainSettings) -> None:
    """Refuse by name a valid step that the estimate does not model (docs/training.md, Limits).

    ``TrainSettings`` says what a step is, and the runtime measures any valid step (trace, cpu,
    cuda): that is how a combination gets traced before it is modelled. This says what the
    estimate covers; ``estimate_train_settings`` calls it first, so the CLI, the solvers and the
    app refuse the same combinations with the same one line naming the field."""
    if s.gpu is not None and s.gpu.arch in PRE_SM80_ARCHS:
        # before sm80 there is no flash kernel (SDPA falls back to math with GQA) and no bf16 GEMM
        raise InvalidSpecError(
            f"gpu: the training estimate models sm80+ GPUs (flash attention, bf16); {s.gpu.key} is {s.gpu.arch}"
        )
    if (
        s.loss != "transformers"
        and s.mixed_precision != "off"
        and s.method != "full"
        and s.adapter_dtype == "fp32"
        and (s.grad_checkpointing != "off" or (s.method == "lora" and (s.targets != LAYER_TARGETS or s.dropout > 0)))
    ):
        # with the logits gone, a decoder layer's own moment under autocast is the step's peak:
        # the checkpointed recompute in backward (3B trace at 8K: 1.23 GB for LoRA, 996 MB for
        # QLoRA above the estimate), or, for LoRA, the forward's fp32 input casts, a candidate
        # for all-linear targets without dropout only (estimate: down_proj's LoRA forward)
        raise InvalidSpecError(
            f"loss: {s.loss} under mixed_precision bf16 with fp32 adapters is modelled without "
            "gradient checkpointing, and for lora with all-linear targets and no dropout (a decoder "
            f"layer's moment under autocast, above the loss's, is not modelled otherwise): {s.loss!r}"
        )
    if s.quant == "fp32" and s.mixed_precision == "off":
        # fp32 activations would take SDPA's math path, modelled for QLoRA's layers only
        raise InvalidSpecError(
            "quant: fp32 weights are modelled as master weights under mixed_precision bf16 "
            "(pure fp32 training is not modelled): 'fp32'"
        )
    if s.method != "full" and "lm_head" in s.targets and s.loss == "liger":
        # liger-kernel 0.8.5's lce_forward (lce_maybe_trainable_lm_head) passes ``lm_head.weight``,
        # PEFT's base weight, to its fused loss and never calls lm_head: the adapter would not
        # train, and the step is not traced
        raise InvalidSpecError(
            "targets: LoRA on lm_head is not modelled with the Liger loss (its fused loss reads "
            "lm_head.weight and never runs the adapter): 'lm_head'"
        )
    if s.method != "full" and "lm_head" in s.targets and 2 * s.rank >= s.tokens:
        # lm_head's LoRA backward holds lora_B's fp32 [V, r] gradient next to the logits' fp32
        # and bf16 [N, V] gradients (about 4 V r + 6 N V bytes against the loss backward's 12 N V):
        # above the loss's moment from about r = 1.5 N (found by validation/training/fuzz.py:
        # r=64 at 32 tokens, 8.2 MB above the estimate), and not a candidate; refused with a margin
        raise InvalidSpecError(
            "rank: LoRA on lm_head is modelled for a rank under half the micro-batch's tokens "
            f"({s.tokens:,}; above it lm_head's LoRA backward can be the peak): {s.rank!r}"
        )
    head_alone = s.method != "full" and not decoder_requires_grad(s.method, s.targets, s.grad_checkpointing)
    if head_alone and (s.packed or (s.method == "qlora" and s.mixed_precision == "off")):
        # an adapter on lm_head alone: the decoder runs without a graph and has no backward, so a
        # moment inside its forward can be the step's peak: SDPA's fp32 math softmax (QLoRA
        # without autocast), or a packed row's mask and mem-efficient attention (traced at
        # narrow width and 8K tokens above the loss's moment; not candidates)
        raise InvalidSpecError(
            "targets: an adapter on lm_head alone is modelled on unpacked rows, and for QLoRA "
            "under mixed_precision bf16 or with checkpointing (else a decoder forward moment, not "
            "modelled, can be the peak): 'lm_head'"
        )
    if s.liger_layers:
        _check_liger_layers_modelled(s)
    if (
        s.loss == "liger"
        and s.method == "lora"
        and s.grad_checkpointing != "off"
        and not (
            s.grad_checkpointing == "non-reentrant"
            and s.targets == LAYER_TARGETS
            and s.adapter_dtype == "fp32"
            and s.dropout == 0
            and s.mixed_precision == "off"
        )
    ):
        # with the logits gone the peak is a checkpointed layer's recompute in backward; it is a
        # candidate for non-reentrant checkpointing of all-linear fp32 adapters without dropout or
        # autocast only (activations.recompute_up_proj_rows); elsewhere the estimate was a lower
        # bound (validation/training/fuzz.md: 0.4 to 1.9 MB low at narrow width), so refused
        raise InvalidSpecError(
            "grad_checkpointing: the Liger loss on lora with checkpointing is modelled for "
            "non-reentrant checkpointing of all-linear fp32 adapters without dropout or autocast "
            f"(else a layer's recompute, not modelled, is the peak): {s.grad_checkpointing!r}"
        )


def _check_liger_layers_modelled(s: TrainSettings) -> None:
    # liger_layers: Liger's RMSNorm, SwiGLU and RoPE kernels (the Trainer's default
    # liger_kernel_config), modelled for Llama (QLoRA, bf16 autocast, LoRA dropout, packed rows
    # and flash_attention_2 with the default loss only); each other combination until traced
    why = None
    if s.method == "qlora" and s.loss == "liger":
        # with the final norm's backward in place a decoder layer's backward moment (not a
        # candidate) is the peak of the narrow trace: not modelled
        why = "qlora and loss liger together"
    elif s.mixed_precision != "off" and (s.quant == "fp32" or s.loss == "liger"):
        # traced under autocast for bf16 weights and 4-bit bases with the default loss
        why = f"mixed_precision {s.mixed_precision} with fp32 master weights or loss liger"
    elif s.loss == "liger" and (s.packed or s.attn_implementation != "sdpa"):
        # the Liger loss's layer moments are traced on unpacked SDPA rows only
        why = f"loss liger and a packed row or attn_implementation {s.attn_implementation}"
    elif s.dropout and s.loss == "liger":
        why = "LoRA dropout and loss liger together"
    elif s.loss == "liger" and s.method == "lora" and s.grad_checkpointing == "reentrant":
        # a decoder layer's moment is then the peak: traced without checkpointing and non-reentrant
        why = "loss liger on lora with reentrant checkpointing"
    elif s.loss == "liger" and s.method == "lora" and (s.targets != LAYER_TARGETS or s.adapter_dtype != "fp32"):
        why = "loss liger on lora other than all-linear fp32 adapters"
    if why is not None:
        raise InvalidSpecError(
            f"liger_layers: Liger's RMSNorm, SwiGLU and RoPE kernels are not modelled with {why}: True"
        )

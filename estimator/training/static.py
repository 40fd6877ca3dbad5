"""Static memory of a training step: weights, adapter weights, gradients, optimizer states.

Everything here is exact tensor bytes, derived from the source of the installed libraries
(torch 2.13, transformers 5.24, peft 0.21, bitsandbytes 0.50):

Weights
    ``full``: the model in its training dtype (``quant.weight_tensors``: bf16, or fp32 master
    weights). ``lora``: the bf16 base (``weight_tensors(spec, "bf16")``) plus the adapters.
    ``qlora``: the bitsandbytes 4-bit layout of ``weight_tensors(spec, quant)``, then
    ``peft.prepare_model_for_kbit_training`` (peft 0.21 ``utils/other.py``), which casts every
    fp16/bf16 parameter that is not a ``Params4bit`` to fp32: the embedding (tied lm_head once),
    an untied lm_head and the norms double. A 4-bit Linear's bias is cast to fp32 too, but its first
    forward casts it back to the compute dtype (``Linear4bit.forward``), so it stays bf16. Buffers
    (fp32 ``inv_freq``) are untouched.

Adapter weights
    ``lora_A``/``lora_B`` are created by ``nn.Linear`` in the default fp32; ``get_peft_model``'s
    ``autocast_adapter_dtype=True`` (peft 0.21 ``BaseTuner._cast_adapter_dtype``) casts fp16/bf16
    adapters to fp32. So adapters are fp32 unless ``adapter_dtype="bf16"``
    (``autocast_adapter_dtype=False`` on a bf16 base: ``_move_adapter_to_device_of_base_layer``
    gives them the base weight's dtype).

Gradients
    One per trainable parameter, in its dtype (``AccumulateGrad`` steals or allocates a tensor
    like the parameter): all parameters for full, the adapters for LoRA.

Optimizer states (``OPTIMIZERS``), per trainable tensor of ``n`` elements and ``b`` bytes each:
    - ``adamw``: torch ``AdamW`` (foreach, the CUDA default: ``_default_to_fused_or_foreach``):
      ``exp_avg`` and ``exp_avg_sq`` ``zeros_like(p)`` (2 n b); ``step`` is a CPU tensor when
      neither fused nor capturable (``adam.py`` ``_init_group``): 0 device bytes. The step's
      ``_foreach_sqrt(exp_avg_sqs)`` (``_multi_tensor_adam``) is a transient copy of every
      ``exp_avg_sq`` of a (device, dtype) group at once, the previous group's still alive.
    - ``adamw-fused``: the same states plus ``step`` as an fp32 scalar on the device
      (``_get_scalar_dtype(is_fused=True)``: 4 B per tensor); the fused kernel allocates nothing.
    - ``sgd``: no state; ``_foreach_add_(params, grads, alpha=-lr)`` in place.
    - ``sgd-momentum``: ``momentum_buffer = grad.detach().clone()`` at the first step (n b).
    - ``adafactor``: transformers' ``Adafactor`` (what the Trainer's ``optim="adafactor"``
      builds; ``optimization.py``), defaults (``beta1=None``: no ``exp_avg``): a tensor of 2+
      dimensions keeps fp32 ``exp_avg_sq_row`` [rows] and ``exp_avg_sq_col`` [cols], a 1-D one
      a full fp32 ``exp_avg_sq`` (``torch.zeros(...).to(grad)`` after ``grad.float()``); and
      ``state["RMS"] = self._rms(p)``, a 0-dim fp32 tensor (4 B) per tensor.
    - ``adamw-8bit``: bitsandbytes ``AdamW8bit`` (``optim/optimizer.py`` ``Optimizer2State.
      init_state``): a tensor with ``n >= min_8bit_size`` (4096) keeps uint8 ``state1`` and
      ``state2`` (2 n B) and fp32 ``absmax1``/``absmax2`` per 256-element block; a smaller one
      fp32 ``state1``/``state2`` (8 n B). The signed and unsigned dynamic maps (fp32 [256] each,
      ``F.create_dynamic_map``) are moved to the device once and shared. The update kernel
      (``optimizer_update_8bit_blockwise``) works in place.
    - ``paged-adamw-8bit``: the same states, but ``get_state_buffer`` puts each ``state1``/
      ``state2`` of ``n >= 1e5`` elements in CUDA managed memory (``F.get_paged``:
      ``cudaMallocManaged``, wrapped by ``torch.frombuffer``): torch's allocator never sees it
      (not in peak allocated or reserved); NVML counts it while its pages are resident on the GPU,
      and the driver can evict it to host memory under pressure. Reported as ``paged_bytes``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import InvalidSpecError
from ..model import ModelSpec, tensors
from ..quant import weight_bytes, weight_tensors
from ..units import cdiv
from .params import adapters, check_method

OPTIMIZERS = ("adamw", "adamw-fused", "sgd", "sgd-momentum", "adafactor", "adamw-8bit", "paged-adamw-8bit")
QLORA_QUANTS = ("nf4", "nf4-dq", "fp4", "fp4-dq")
FULL_PRECISIONS = ("bf16", "fp32")  # full fine-tuning: the weights' (and gradients', states') dtype;
# fp32 (master weights) needs mixed_precision="bf16" (settings)
ADAPTER_DTYPES = ("fp32", "bf16")
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes Optimizer2State min_8bit_size default (optim/adamw.py)
BNB_STATE_BLOCK = 256  # blockwise state quantization blocksize (Optimizer2State.init_state)
BNB_QMAP_BYTES = 2 * 256 * 4  # the "dynamic" and "udynamic" fp32 [256] maps, once per optimizer
BNB_PAGED_MIN_NUMEL = 100_000  # get_state_buffer: paged only when p.numel() >= 1e5
# What prepare_model_for_kbit_training leaves in fp32: every bf16 parameter that is not a
# Params4bit, except a Linear4bit's bias, which its first forward casts back to the compute dtype
# (bitsandbytes 0.50 nn/modules.py Linear4bit.forward: ``bias.data = bias.data.to(x.dtype)``).
UPCAST_KINDS = ("embedding", "lm_head", "norm")


@dataclass(frozen=True, slots=True)
class Trainable:
    """One trainable parameter tensor: its shape and element size."""

    name: str
    shape: tuple[int, ...]
    itemsize: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def check_optimizer(optimizer: str) -> str:
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise InvalidSpecError(f"optimizer must be one of {', '.join(OPTIMIZERS)}: {optimizer!r}")
    return optimizer


@functools.lru_cache(maxsize=256)
def trainable_tensors(
    spec: ModelSpec, method: str, rank: int, targets: tuple[str, ...], adapter_dtype: str = "fp32"
) -> tuple[Trainable, ...]:
    """The tensors the optimizer updates, in ``model.parameters()`` order (a tied embedding once).
    ``adapter_dtype`` is the adapters' dtype, or for full fine-tuning the weights' (``dtype_of``)."""
    check_method(method)
    b = DTYPE_BYTES[adapter_dtype]
    if method == "full":
        return tuple(Trainable(t.name, t.shape, b) for t in tensors(spec) if t.kind != "buffer")
    out: list[Trainable] = []
    for a in adapters(spec, rank, targets):
        # QLoRA: the embedding and lm_head are fp32 (prepare_model_for_kbit_training) and PEFT
        # moves an adapter to its base weight's float dtype (_move_adapter_to_device_of_base_layer;
        # a 4-bit Linear's uint8 weight is not a float: its adapters keep ``adapter_dtype``)
        eb = 4 if method == "qlora" and (a.kind == "embedding" or a.module == "lm_head") else b
        if a.kind == "embedding":  # lora_embedding_A / _B are nn.Parameters of these shapes
            out += [Trainable(a.module + ".lora_embedding_A", a.a_shape, eb)]
            out += [Trainable(a.module + ".lora_embedding_B", a.b_shape, eb)]
        else:
            out += [Trainable(a.module + ".lora_A.weight", a.a_shape, eb)]
            out += [Trainable(a.module + ".lora_B.weight", a.b_shape, eb)]
    return tuple(out)


def dtype_of(method: str, quant: str, adapter_dtype: str) -> str:
    """The trainable tensors' dtype: the weights' for full fine-tuning (``quant``: bf16, or fp32
    master weights), else the adapters'."""
    return quant if method == "full" else adapter_dtype


def base_weight_bytes(spec: ModelSpec, method: str, quant: str, kbit_prepare: bool = True) -> int:
    """Bytes of the base model as loaded and prepared for training (no adapters)."""
    if method == "qlora":
        w = weight_bytes(spec, quant).total_bytes
        if kbit_prepare:  # prepare_model_for_kbit_training: bf16 non-4-bit parameters -> fp32
            w += sum(2 * t.numel for t in tensors(spec) if t.kind in UPCAST_KINDS)
        return w
    return weight_bytes(spec, quant).total_bytes


def weight_layout(spec: ModelSpec, method: str, quant: str, kbit_prepare: bool = True) -> tuple[int, ...]:
    """Every base-model tensor's bytes in load order (for the allocator's packing)."""
    if method != "qlora":
        return tuple(s.nbytes for s in weight_tensors(spec, quant))
    up = {t.name for t in tensors(spec) if t.kind in UPCAST_KINDS} if kbit_prepare else set()
    return tuple(2 * s.nbytes if s.name in up else s.nbytes for s in weight_tensors(spec, quant))


@dataclass(frozen=True, slots=True)
class OptimizerStates:
    """Bytes an optimizer holds after its first step, and its step's transient peak."""

    device_bytes: int  # states torch's allocator holds
    paged_bytes: int  # bitsandbytes paged states in CUDA managed memory (NVML only)
    step_transient_bytes: int  # the most the step allocates on top of states, grads, weights
    tensors: tuple[int, ...]  # every device state tensor's bytes, in creation order
    step_tensors: tuple[int, ...] = ()  # the step's temporaries at that moment, tensor by tensor


def _adafactor_transient(trainable: tuple[Trainable, ...]) -> int:
    """The most transformers ``Adafactor.step`` holds beyond states, gradients and weights: its
    loop's locals live on into the next tensor's iteration until reassigned. For a tensor of n
    elements, G = ``grad.float()`` and P = ``p.float()`` (4 n B each, copies only when the tensor
    is 16-bit), U the previous tensor's ``update`` (and G', P' the previous copies):

    - ``grad = grad.float()``: G + G' + U' + P';  ``p_data_fp32 = p.float()``: G + P + U' + P';
    - ``update = (grad**2) + eps``: G + P + U' + the power and the sum (8 n);
    - ``update = _approx_sq_grad(row, col)`` (factored; ``exp_avg_sq.rsqrt()`` otherwise): G + P +
      the old update and the new (8 n) + the row and column factors (4 (rows + cols));
    - ``p_data_fp32.add_(-update)``: G + P + update + its negation (8 n)."""
    worst = 0
    prev_g = prev_p = prev_u = 0
    for t in trainable:
        n4 = 4 * t.numel
        g = p = n4 if t.itemsize == 2 else 0
        factors = 4 * (t.numel // t.shape[-1] + t.numel // t.shape[-2]) if len(t.shape) >= 2 else 0
        worst = max(
            worst,
            g + prev_g + prev_u + prev_p,
            g + p + prev_u + prev_p,
            g + p + prev_u + 2 * n4,
            g + p + 2 * n4 + factors,
        )
        prev_g, prev_p, prev_u = g, p, n4
    return worst


@functools.lru_cache(maxsize=256)
def optimizer_states(optimizer: str, trainable: tuple[Trainable, ...]) -> OptimizerStates:
    """States and step transient of ``optimizer`` over ``trainable`` (see the module docstring)."""
    check_optimizer(optimizer)
    dev: list[int] = []
    paged = 0
    transient = 0
    step: tuple[int, ...] = ()
    if optimizer in ("adamw", "adamw-fused"):
        groups: dict[int, list[int]] = {}
        for t in trainable:
            dev += [t.nbytes, t.nbytes]
            groups.setdefault(t.itemsize, []).append(t.nbytes)
        if optimizer == "adamw-fused":
            dev += [4] * len(trainable)
        elif groups:
            # _multi_tensor_adam loops over the (device, dtype) groups in first-seen order; each
            # group's ``exp_avg_sq_sqrt = torch._foreach_sqrt(...)`` (one tensor per exp_avg_sq)
            # is a local that lives until the next group reassigns it: the previous group's
            # copies are alive while the next group's are made
            order = list(groups.values())
            pairs = [order[0]] + [order[i - 1] + order[i] for i in range(1, len(order))]
            step = tuple(max(pairs, key=sum))
            transient = sum(step)
    elif optimizer == "sgd-momentum":
        dev = [t.nbytes for t in trainable]
    elif optimizer == "adafactor":
        for t in trainable:
            if len(t.shape) >= 2:
                rows = t.numel // t.shape[-1]
                cols = t.numel // t.shape[-2]
                dev += [4 * rows, 4 * cols]
            else:
                dev.append(4 * t.numel)
            dev.append(4)  # state["RMS"] = self._rms(p): a 0-dim fp32 tensor on the device
        transient = _adafactor_transient(trainable)
        step = (transient,) if transient else ()  # counted as one block (its tensors are 4 n B each)
    elif optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        qmaps = False
        for t in trainable:
            n = t.numel
            if n < BNB_MIN_8BIT_SIZE:
                states = [4 * n, 4 * n]
            else:
                if not qmaps:
                    dev += [256 * 4, 256 * 4]
                    qmaps = True
                states = [n, n]
            if optimizer == "paged-adamw-8bit" and n >= BNB_PAGED_MIN_NUMEL:
                paged += sum(states)
            else:
                dev += states
            if n >= BNB_MIN_8BIT_SIZE:
                blocks = cdiv(n, BNB_STATE_BLOCK)
                dev += [4 * blocks, 4 * blocks]
    return OptimizerStates(sum(dev), paged, transient, tuple(dev), step)


@dataclass(frozen=True, slots=True)
class StaticBytes:
    """The static parts of a training step (int bytes)."""

    weights_bytes: int  # the base model as loaded and prepared (no adapters)
    adapter_weights_bytes: int
    gradients_bytes: int  # one per trainable parameter, in its dtype
    optimizer_states_bytes: int  # on the device, seen by torch's allocator
    paged_bytes: int  # bitsandbytes paged states (CUDA managed memory: NVML only)
    step_transient_bytes: int  # the optimizer step's own temporaries


def static_bytes(
    spec: ModelSpec,
    method: str,
    quant: str,
    rank: int,
    targets: tuple[str, ...],
    adapter_dtype: str,
    optimizer: str,
) -> StaticBytes:
    """Weights, adapters, gradients and optimizer states of one setting."""
    tr = trainable_tensors(spec, method, rank, targets, dtype_of(method, quant, adapter_dtype))
    grads = sum(t.nbytes for t in tr)
    opt = optimizer_states(optimizer, tr)
    return StaticBytes(
        weights_bytes=base_weight_bytes(spec, method, quant),
        adapter_weights_bytes=0 if method == "full" else grads,
        gradients_bytes=grads,
        optimizer_states_bytes=opt.device_bytes,
        paged_bytes=opt.paged_bytes,
        step_transient_bytes=opt.step_transient_bytes,
    )

"""CUDA's bf16 autocast on fake tensors (the training trace's stand-in for the AutocastCUDA key).

A trace runs on fake tensors whose device is ``meta``; torch's autocast applies to CUDA tensors
only (and a CPU build cannot place a fake tensor on ``cuda`` for a matmul), so
``torch.autocast("cuda")`` would change nothing there. ``Autocast`` does what the AutocastCUDA
kernels do, one level up (a ``TorchFunctionMode``, above autograd as the autocast key is), with
the op lists of torch 2.13's ``aten/src/ATen/autocast_mode.cpp`` (``TORCH_LIBRARY_IMPL(aten,
AutocastCUDA, m)``) for the ops a decoder-only model calls:

- ``lower_precision_fp`` (linear, matmul, mm, bmm, addmm, baddbmm, einsum, SDPA, ...): every
  floating tensor argument that is not bf16 is cast to bf16 (``cached_cast``). A cast of a leaf
  that requires grad, from fp32, is cached (``can_try_cache``: a trainable fp32 weight) until
  the outermost autocast region exits (``clear_autocast_cache``);
- ``fp32`` (pow, rsqrt, exp, log, nll_loss, ...): 16-bit arguments cast to fp32, not cached;
- ``fp32_set_opt_dtype`` (softmax, log_softmax, sum, prod, cumsum, cumprod): called with
  ``dtype=float32`` when no dtype is given and the input is a float tensor.

Ops in no list run as called (type promotion: a bf16 tensor times an fp32 one is fp32), and so
do ``out=`` calls: the lists name the functional overloads only, and AutocastCUDA falls through
for every other (``TORCH_LIBRARY_IMPL(_, AutocastCUDA, m)``: ``makeFallthrough``), so
``torch.mm(a, b, out=c)`` and ``torch.addmm(..., out_dtype=..., out=c)`` cast nothing (liger's
fused linear cross-entropy relies on it).
``torch.is_autocast_enabled()`` reads True inside (PEFT's bnb LoRA layers branch on it).

Checkpointed layers: torch's checkpoint re-enters autocast for the recompute when the forward
ran under it (``_get_autocast_kwargs``), but it asks for the device type of the inputs
(``meta``), for which autocast is not available. ``recompute_under_autocast`` wraps a layer's
checkpoint function so the recompute, in backward, runs in a new region (its own cache), as on
CUDA.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

LOWER = frozenset(
    "linear matmul __matmul__ __rmatmul__ mm mv addmm addmv addr addbmm baddbmm bmm einsum chain_matmul "
    "scaled_dot_product_attention".split()
)
FP32 = frozenset(
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow __pow__ __rpow__ "
    "softplus layer_norm group_norm nll_loss mse_loss l1_loss smooth_l1_loss huber_loss kl_div logsumexp "
    "binary_cross_entropy_with_logits cosine_similarity".split()
)
FP32_SET_OPT_DTYPE = frozenset("softmax log_softmax sum prod cumsum cumprod".split())
LOW = torch.bfloat16


class _State:
    depth = 0
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def active() -> bool:
    return _State.depth > 0


def _cast(t: Any, to: torch.dtype) -> Any:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype in (to, torch.float64):
        return t
    # can_try_cache: a leaf that requires grad and is not a view
    if to == LOW and t.dtype == torch.float32 and t.is_leaf and t.requires_grad and not t._is_view():
        hit = _State.cache.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        c = t.to(to)
        _State.cache[id(t)] = (t, c)
        return c
    return t.to(to)


def _cast_all(x: Any, to: torch.dtype) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_all(v, to) for v in x)
    return _cast(x, to)


class Autocast(TorchFunctionMode):
    """``with Autocast(): ...`` as ``torch.autocast("cuda", dtype=torch.bfloat16)`` (module docstring)."""

    def __enter__(self):
        _State.depth += 1
        self._patch = torch.is_autocast_enabled
        torch.is_autocast_enabled = lambda *a: True  # type: ignore[assignment]
        return super().__enter__()

    def __exit__(self, *exc):
        torch.is_autocast_enabled = self._patch  # type: ignore[assignment]
        _State.depth -= 1
        if _State.depth == 0:
            _State.cache.clear()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if kwargs.get("out") is not None:  # an out= overload: AutocastCUDA falls through
            return func(*args, **kwargs)
        if name in LOWER:
            args, kwargs = _cast_all(args, LOW), {k: _cast_all(v, LOW) for k, v in kwargs.items()}
        elif name in FP32:
            args = tuple(_cast(a, torch.float32) for a in args)
        elif name in FP32_SET_OPT_DTYPE and kwargs.get("dtype") is None:
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.is_floating_point() and first.dtype != torch.float64:
                kwargs = {**kwargs, "dtype": torch.float32}
        return func(*args, **kwargs)


def recompute_under_autocast(checkpoint_func):
    """A layer's ``_gradient_checkpointing_func`` whose function runs in an autocast region when it
    is called outside one (the recompute in backward) and the forward ran inside one."""

    @functools.wraps(checkpoint_func)
    def wrapped(fn, *args, **kwargs):
        if not active():
            return checkpoint_func(fn, *args, **kwargs)

        def run(*a, **k):
            if active():
                return fn(*a, **k)
            with Autocast():
                return fn(*a, **k)

        return checkpoint_func(run, *args, **kwargs)

    return wrapped

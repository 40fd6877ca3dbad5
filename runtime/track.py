"""Live tensor-storage accounting: the peak of what the CUDA allocator would hand out.

``LiveBytes`` is a ``TorchDispatchMode`` that sees every tensor an aten op returns. Each new
storage is added to a live counter and a ``weakref.finalize`` on the storage subtracts it when
the last reference dies, so ``peak_bytes`` is the high-water mark of live tensor bytes. The same
code counts real CPU tensors (``--device cpu``) and fake tensors (``--device trace``), which
allocate nothing. This is the mechanism of ``torch.distributed._tools.mem_tracker.MemTracker``
(``_WeakRefInfo``), reduced to what we need; on this project's CPU machine the two agree byte for
byte (../shared/reference/environment.md §4c).

Two sums are kept: raw storage bytes, and bytes rounded up to 512 per storage, which is the CUDA
caching allocator's ``round_size`` (``kMinBlockSize = 512`` in ``c10/cuda/CUDACachingAllocator.cpp``).
Neither includes allocator block slack, segments or the cuBLAS workspace: for those, ``events``
keeps every allocation and free in order, with phase boundaries, for ``runtime.allocsim``.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from estimator.allocator import round_size as _round  # round_size: up to 512 B (kMinBlockSize)

ALLOC, FREE, PHASE = "alloc", "free", "phase"  # event kinds (runtime/allocsim.py reads them)


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (its StorageImpl address); works for real, meta and fake tensors."""
    return t.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """Counts live tensor storage bytes (raw and 512-rounded) and their peaks.

    ``track(t)`` registers tensors created outside the mode (parameters, buffers, inputs).
    ``reset_peak()`` starts a new phase; ``mark()`` starts ``high``, the most live bytes since.
    With ``detail=True`` the live set at the latest peak is kept (``peak_detail``: list of
    (nbytes, dtype, shape, op)) for breakdown reports.
    ``events`` lists, in order, ``("alloc", key, nbytes)``, ``("free", key)`` and ``("phase",)``
    at each ``reset_peak()`` (the event kinds of ``runtime.allocsim``).
    """

    def __init__(self, detail: bool = False):
        super().__init__()
        self.live = 0
        self.live_rounded = 0
        self.peak = 0
        self.peak_rounded = 0
        self.high = 0  # the most live bytes since ``mark()``
        self.detail = detail
        self.peak_detail: list[tuple[int, str, tuple[int, ...], str]] = []
        self._info: dict[int, tuple[int, str, tuple[int, ...], str]] = {}
        self.events: list[tuple] = []

    def track(self, t: torch.Tensor, op: str = "external") -> None:
        if not isinstance(t, torch.Tensor):
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self._info:
            return
        n = st.nbytes()
        self._info[key] = (n, str(t.dtype).replace("torch.", ""), tuple(t.shape), op)
        self.live += n
        self.live_rounded += _round(n)
        self.events.append((ALLOC, key, n))
        weakref.finalize(st, self._free, key)
        self._update_peak()

    def _free(self, key: int) -> None:
        info = self._info.pop(key, None)
        if info is not None:
            self.live -= info[0]
            self.live_rounded -= _round(info[0])
            self.events.append((FREE, key))

    def _update_peak(self) -> None:
        if self.live_rounded > self.peak_rounded:
            self.peak_rounded = self.live_rounded
            if self.detail:
                self.peak_detail = sorted(self._info.values(), reverse=True)
        self.peak = max(self.peak, self.live)
        self.high = max(self.high, self.live)

    def mark(self) -> None:
        """Start a sub-phase high-water mark (``high``) without touching the phase's peaks."""
        self.high = self.live

    def reset_peak(self) -> None:
        self.events.append((PHASE,))
        self.peak = self.live
        self.peak_rounded = self.live_rounded
        if self.detail:
            self.peak_detail = sorted(self._info.values(), reverse=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, name)
        return out

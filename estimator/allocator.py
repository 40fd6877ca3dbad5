"""The PyTorch CUDA caching allocator's rounding, as a pure function of request sizes.

Derived from ``c10/cuda/CUDACachingAllocator.cpp`` (torch 2.x, unchanged through 2.13):

- ``kMinBlockSize = 512``: every request is rounded up to a multiple of 512 B (``round_size``).
- ``kSmallSize = 1 MiB``: requests up to 1 MiB come from the small pool, carved out of
  2 MiB segments (``kSmallBuffer``); a block is split when 512 B or more would remain.
- Requests in (1 MiB, 10 MiB) get a 20 MiB segment (``kLargeBuffer``, ``kMinLargeAlloc``);
  requests of 10 MiB or more get a segment rounded up to 2 MiB (``kRoundLarge``).
- A large-pool block is split only when more than 1 MiB would remain (``should_split``);
  otherwise the caller is charged the whole block. ``memory_allocated`` counts
  ``block->size``, so this slack shows in ``max_memory_allocated``.

Example: the 788,004,864 B bf16 embedding of Llama 3.2 3B gets a 788,529,152 B segment
(rounded up to 2 MiB); the 524,288 B remainder is below 1 MiB, so the block is not split and
``memory_allocated`` grows by 788,529,152 B.

These rules live here only: ``block_bytes``, ``segment_bytes``, ``reserved_for`` and ``floor_bytes``
per request or set of requests, ``tally`` for tensors live together (the estimator's innermost
loop), ``CachingAllocator`` block for block (the trace's simulation).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .units import MiB, round_up

MIN_BLOCK_BYTES = 512
SMALL_SIZE_BYTES = 1 * MiB
SMALL_SEGMENT_BYTES = 2 * MiB
LARGE_SEGMENT_BYTES = 20 * MiB
MIN_LARGE_ALLOC_BYTES = 10 * MiB
ROUND_LARGE_BYTES = 2 * MiB
# The most rounding adds to one tensor: block_bytes(n) - n and floor_bytes(n) - n are below
# this for any n (a large request's round-up to 2 MiB).
MAX_ROUNDING_BYTES = ROUND_LARGE_BYTES
# The most the shared pools' round-up to whole segments adds to reserved: the small pool's last
# 2 MiB segment and the medium pool's last 20 MiB segment (``pool_segments``).
POOL_ROUNDING_BYTES = SMALL_SEGMENT_BYTES + LARGE_SEGMENT_BYTES
# The pools a request is served from (``pool_of``).
SMALL, MEDIUM, LARGE = 0, 1, 2
# (allocated, small-pool, medium-pool, large-segment) bytes of tensors live together (``tally``).
Pools = tuple[int, int, int, int]
NO_POOLS: Pools = (0, 0, 0, 0)


def round_size(n: int) -> int:
    """The request after ``round_size``: a multiple of 512 B (0 stays 0)."""
    return (n + 511) & ~511 if n > 0 else 0


def pool_of(n: int) -> int:
    """The pool a request of ``n`` bytes is served from: SMALL (up to 1 MiB, shared 2 MiB
    segments), MEDIUM (under 10 MiB, shared 20 MiB segments) or LARGE (a segment of its own)."""
    r = round_size(n)
    return SMALL if r <= SMALL_SIZE_BYTES else (MEDIUM if r < MIN_LARGE_ALLOC_BYTES else LARGE)


def segment_bytes(n: int) -> int:
    """Size of the fresh segment ``cudaMalloc``'d for a request that finds no free block."""
    r = round_size(n)
    if r <= SMALL_SIZE_BYTES:
        return SMALL_SEGMENT_BYTES
    if r < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return round_up(r, ROUND_LARGE_BYTES)


def block_bytes(n: int) -> int:
    """Bytes charged to ``memory_allocated`` for a request served by a fresh segment."""
    if n <= 0:
        return 0
    r = round_size(n)
    if r <= SMALL_SIZE_BYTES:
        return r
    seg = segment_bytes(n)
    return seg if seg - r <= SMALL_SIZE_BYTES else r


def floor_bytes(n: int) -> int:
    """Bytes a tensor takes in the segment floor (reserved bytes before the shared small and
    medium pools round up to whole segments): 512-rounded, and for the large pool (>= 10 MiB)
    its own segment rounded up to 2 MiB; never less than ``block_bytes(n)``."""
    r = round_size(n)
    return r if r < MIN_LARGE_ALLOC_BYTES else round_up(r, ROUND_LARGE_BYTES)


def pool_segments(small: int, medium: int, large: int) -> int:
    """Segment bytes of pools holding ``small`` / ``medium`` bytes in the shared 2 / 20 MiB
    segments (rounded up to whole ones) and ``large`` bytes of large-pool segments."""
    # round_up, inlined: this runs once per candidate evaluation
    return (
        large
        + -(-small // SMALL_SEGMENT_BYTES) * SMALL_SEGMENT_BYTES
        + -(-medium // LARGE_SEGMENT_BYTES) * LARGE_SEGMENT_BYTES
    )


def tally(sizes: Iterable[int], counts: Iterable[int], fresh: Iterable[int], start: Pools = NO_POOLS) -> Pools:
    """(allocated, small-pool, medium-pool, large-segment) bytes of tensors live together, added
    to ``start``: ``counts[i]`` tensors of ``sizes[i]`` bytes, ``fresh[i]`` of them served by a
    fresh segment (``block_bytes``: a large block whose remainder is too small to split is charged
    whole), the rest carved from a larger cached block (``round_size``). The small and medium pools
    are summed before their round-up to whole segments (``pool_segments``).

    The rules of ``block_bytes``, ``round_size`` and ``reserved_for`` in one pass, inlined: this is
    the innermost loop of sweeps and solvers.
    """
    blk, small, medium, large = start
    for v, n, fr in zip(sizes, counts, fresh):
        if v <= 0:
            continue
        r = (v + 511) & ~511
        if r <= SMALL_SIZE_BYTES:
            r *= n
            blk += r
            small += r
        elif r < MIN_LARGE_ALLOC_BYTES:
            r *= n
            blk += r
            medium += r
        else:
            seg = -(-r // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
            blk += n * r + (fr * (seg - r) if seg - r <= SMALL_SIZE_BYTES else 0)  # only fresh blocks stay unsplit
            large += n * seg
    return blk, small, medium, large


def reserved_for(sizes: Sequence[int], counts: Sequence[int] | None = None) -> int:
    """Segment bytes for a set of tensors allocated together and never freed.

    Large requests (>= 10 MiB) each get their own segment. Medium requests share 20 MiB
    segments and small ones share 2 MiB segments, packed in order (first fit), which is what
    the allocator does when nothing is freed in between.
    """
    _, small, medium, large = tally(sizes, counts if counts is not None else [1] * len(sizes), [0] * len(sizes))
    return pool_segments(small, medium, large)


@dataclass(eq=False)
class Block:
    """One block of a segment: [addr, addr + size)."""

    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: Block | None = field(default=None, repr=False)
    next: Block | None = field(default=None, repr=False)


class CachingAllocator:
    """PyTorch's CUDA caching allocator, block for block (torch 2.13 ``CUDACachingAllocator.cpp``,
    native backend, default config: no ``max_split_size_mb``, no expandable segments, no garbage
    collection threshold, one stream). Sizes are int bytes.

    - ``malloc(n)``: n = 0 allocates nothing (``allocate`` returns a null pointer); otherwise
      ``round_size`` (512 B); <= 1 MiB from the small pool, else the large pool.
    - ``get_free_block``: free blocks are ordered by (size, address) (``BlockComparatorSize``) and
      ``lower_bound`` takes the smallest that fits, the lowest address among equals (best fit).
      Only when none fits is a segment ``cudaMalloc``'d (``alloc_block``) of ``segment_bytes``.
    - ``should_split``: a small block splits when >= 512 B would remain, a large one when more
      than 1 MiB would (``remaining > kSmallSize``); the request takes the low part
      (``alloc_found_block``); an unsplit block is charged whole.
    - ``free_block``: the block merges with free neighbours of its segment (``try_merge_blocks``)
      and returns to its pool. Segments are never released (no ``empty_cache``).
    - allocated = sum of allocated block sizes, reserved = sum of segment sizes (the stats behind
      ``memory_allocated`` / ``memory_reserved``); ``reset_peak`` as ``reset_peak_memory_stats``.

    Segment addresses increase in ``cudaMalloc`` order (real addresses only break ties between
    free blocks of equal size)."""

    def __init__(self) -> None:
        self.pools: dict[bool, list[tuple[int, int, Block]]] = {True: [], False: []}  # small? -> free blocks
        self.next_addr = 0
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.segments = 0

    # -- the pools
    def _insert(self, b: Block) -> None:
        bisect.insort(self.pools[b.small], (b.size, b.addr, b))

    def _remove(self, b: Block) -> None:
        pool = self.pools[b.small]
        i = bisect.bisect_left(pool, (b.size, b.addr))
        assert pool[i][2] is b
        del pool[i]

    def _best_fit(self, size: int, small: bool) -> Block | None:
        pool = self.pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        return pool.pop(i)[2]

    def _new_segment(self, n: int, small: bool) -> Block:
        seg = segment_bytes(n)
        b = Block(self.next_addr, seg, small)
        self.next_addr += seg
        self.reserved_bytes += seg
        self.segments += 1
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return b

    @staticmethod
    def _should_split(b: Block, size: int) -> bool:
        remaining = b.size - size
        return remaining >= MIN_BLOCK_BYTES if b.small else remaining > SMALL_SIZE_BYTES

    def _split(self, b: Block, size: int) -> None:
        """``b`` keeps its first ``size`` bytes; the rest becomes a free block after it."""
        rest = Block(b.addr + size, b.size - size, b.small, prev=b, next=b.next)
        if b.next is not None:
            b.next.prev = rest
        b.next = rest
        b.size = size
        self._insert(rest)

    # -- the API
    def malloc(self, n: int) -> Block | None:
        """A block for a request of ``n`` bytes (None for n = 0)."""
        if n <= 0:
            return None
        size = round_size(n)
        small = size <= SMALL_SIZE_BYTES
        b = self._best_fit(size, small) or self._new_segment(n, small)
        if self._should_split(b, size):
            self._split(b, size)
        b.allocated = True
        self.allocated_bytes += b.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return b

    def free(self, b: Block | None) -> None:
        if b is None:
            return
        assert b.allocated, "double free"
        b.allocated = False
        self.allocated_bytes -= b.size
        for nb in (b.prev, b.next):
            if nb is not None and not nb.allocated:
                self._remove(nb)
                self._merge(b, nb)
        self._insert(b)

    @staticmethod
    def _merge(b: Block, nb: Block) -> None:
        """Absorb the free neighbour ``nb`` into ``b`` (the lower address survives)."""
        if nb is b.prev:
            b.addr, b.prev = nb.addr, nb.prev
            if nb.prev is not None:
                nb.prev.next = b
        else:
            b.next = nb.next
            if nb.next is not None:
                nb.next.prev = b
        b.size += nb.size

    def reset_peak(self) -> None:
        self.peak_allocated_bytes = self.allocated_bytes
        self.peak_reserved_bytes = self.reserved_bytes

    def free_bytes(self) -> int:
        """Bytes of cached (free) blocks in all segments."""
        return sum(s for pool in self.pools.values() for s, _, _ in pool)


def pack(sizes: list[int] | tuple[int, ...]) -> tuple[int, int]:
    """(allocated, reserved) bytes after allocating ``sizes`` in order and freeing none, as the
    caching allocator does: best fit into the remainders of earlier segments, each block charged
    whole when its remainder is too small to split. Example: 56 bf16 K/V projection weights of
    Llama 3.2 3B (6 MiB each, medium pool) fit three to a 20 MiB segment (18 MiB; a fourth does
    not fit the 2 MiB left), so 19 segments (380 MiB), not 56 x 6 MiB rounded up to 20 MiB."""
    sim = CachingAllocator()
    for n in sizes:
        sim.malloc(n)
    return sim.allocated_bytes, sim.reserved_bytes

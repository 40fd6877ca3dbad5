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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .units import MiB, round_up

MIN_BLOCK_BYTES = 512
SMALL_SIZE_BYTES = 1 * MiB
SMALL_SEGMENT_BYTES = 2 * MiB
LARGE_SEGMENT_BYTES = 20 * MiB
MIN_LARGE_ALLOC_BYTES = 10 * MiB
ROUND_LARGE_BYTES = 2 * MiB


def round_size(n: int) -> int:
    """The request after ``round_size``: a multiple of 512 B (0 stays 0)."""
    return (n + 511) & ~511 if n > 0 else 0


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
    r = (n + 511) & ~511
    if r <= SMALL_SIZE_BYTES:
        return r
    seg = LARGE_SEGMENT_BYTES if r < MIN_LARGE_ALLOC_BYTES else (r + ROUND_LARGE_BYTES - 1) // ROUND_LARGE_BYTES * ROUND_LARGE_BYTES
    return seg if seg - r <= SMALL_SIZE_BYTES else r


def reserved_for(sizes: "list[int] | tuple[int, ...]", counts: "list[int] | tuple[int, ...] | None" = None) -> int:
    """Segment bytes for a set of tensors allocated together and never freed.

    Large requests (>= 10 MiB) each get their own segment. Medium requests share 20 MiB
    segments and small ones share 2 MiB segments, packed in order (first fit), which is what
    the allocator does when nothing is freed in between.
    """
    total = 0
    small = medium = 0
    for i, n in enumerate(sizes):
        if n <= 0:
            continue
        c = counts[i] if counts is not None else 1
        r = (n + 511) & ~511
        if r <= SMALL_SIZE_BYTES:
            small += c * r
        elif r < MIN_LARGE_ALLOC_BYTES:
            medium += c * r
        else:
            total += c * round_up(r, ROUND_LARGE_BYTES)
    total += round_up(small, SMALL_SEGMENT_BYTES) + round_up(medium, LARGE_SEGMENT_BYTES)
    return total


@dataclass(eq=False)
class Block:
    """One block of a segment: [addr, addr + size)."""

    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: "Block | None" = field(default=None, repr=False)
    next: "Block | None" = field(default=None, repr=False)


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


def pack(sizes: "list[int] | tuple[int, ...]") -> tuple[int, int]:
    """(allocated, reserved) bytes after allocating ``sizes`` in order and freeing none, as the
    caching allocator does: best fit into the remainders of earlier segments, each block charged
    whole when its remainder is too small to split. Example: 56 bf16 K/V projection weights of
    Llama 3.2 3B (6 MiB each, medium pool) fit three to a 20 MiB segment (18 MiB; a fourth does
    not fit the 2 MiB left), so 19 segments (380 MiB), not 56 x 6 MiB rounded up to 20 MiB."""
    sim = CachingAllocator()
    for n in sizes:
        sim.malloc(n)
    return sim.allocated_bytes, sim.reserved_bytes

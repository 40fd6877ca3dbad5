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

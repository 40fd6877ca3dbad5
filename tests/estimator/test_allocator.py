"""The caching allocator model (estimator.allocator.CachingAllocator), rule by rule.

Expected values are derived by hand from c10/cuda/CUDACachingAllocator.cpp (torch 2.13): 512-B
rounding, small pool <= 1 MiB in 2 MiB segments, (1, 10) MiB requests in 20 MiB segments, larger
ones rounded up to 2 MiB, best fit by (size, address), large blocks split only when more than
1 MiB would remain, free neighbours merge, segments never released.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.allocator import CachingAllocator, block_bytes, pack, round_size, segment_bytes

KiB, MiB = 1024, 1024 * 1024


def test_zero_bytes_allocate_nothing():
    a = CachingAllocator()
    assert a.malloc(0) is None
    assert (a.allocated_bytes, a.reserved_bytes, a.segments) == (0, 0, 0)


def test_small_request_rounds_to_512_in_a_2mib_segment():
    a = CachingAllocator()
    b = a.malloc(1)
    assert b.size == 512 and (a.allocated_bytes, a.reserved_bytes) == (512, 2 * MiB)


def test_medium_request_splits_a_20mib_segment():
    a = CachingAllocator()
    a.malloc(MiB + 1)  # rounds to 1 MiB + 512: large pool, below 10 MiB -> 20 MiB segment
    assert (a.allocated_bytes, a.reserved_bytes) == (MiB + 512, 20 * MiB)
    assert a.free_bytes() == 19 * MiB - 512  # the remainder is a free block of the segment


def test_large_request_unsplit_when_1mib_or_less_remains():
    a = CachingAllocator()
    a.malloc(19 * MiB + 512 * KiB)  # >= 10 MiB: segment rounded up to 20 MiB; 0.5 MiB would remain
    assert (a.allocated_bytes, a.reserved_bytes) == (20 * MiB, 20 * MiB)
    # the embedding of Llama 3.2 3B (bf16): 788,004,864 B -> a 788,529,152 B block, charged whole
    assert pack([788_004_864]) == (788_529_152, 788_529_152) == (block_bytes(788_004_864),) * 2


def test_best_fit_takes_the_smallest_free_block_that_fits():
    a = CachingAllocator()
    blocks = [a.malloc(n) for n in (30 * MiB, 12 * MiB, 40 * MiB)]
    for b in blocks:
        a.free(b)
    got = a.malloc(11 * MiB)  # fits 12, 30 and 40 MiB; best fit is the 12 MiB block (1 MiB left: unsplit)
    assert got.size == 12 * MiB and got.addr == blocks[1].addr
    assert a.reserved_bytes == 82 * MiB and a.segments == 3  # no new segment


def test_split_blocks_merge_back_when_freed():
    a = CachingAllocator()
    a.free(a.malloc(40 * MiB))
    x, y = a.malloc(15 * MiB), a.malloc(15 * MiB)  # carved from the 40 MiB block: 15 + 15 + 10 free
    assert (x.size, y.size, a.free_bytes(), a.segments) == (15 * MiB, 15 * MiB, 10 * MiB, 1)
    a.free(x)
    a.free(y)
    assert a.pools[False] and len(a.pools[False]) == 1  # one 40 MiB free block again
    assert a.malloc(40 * MiB).size == 40 * MiB and a.reserved_bytes == 40 * MiB


def test_small_pool_packs_whole_blocks_per_segment():
    # 700 KiB blocks: two fit a 2 MiB segment (1,433,600 B), the 663,552 B left cannot take a third
    assert pack([700 * KiB] * 3) == (3 * 700 * KiB, 4 * MiB)


def test_pack_medium_blocks_do_not_span_segments():
    # 56 bf16 k/v_proj weights of Llama 3.2 3B (1024 x 3072 x 2 B = 6 MiB): three per 20 MiB segment
    assert pack([6 * MiB] * 56) == (56 * 6 * MiB, 19 * 20 * MiB)


def test_peaks_and_reset():
    a = CachingAllocator()
    b = a.malloc(12 * MiB)
    a.free(b)
    assert (a.peak_allocated_bytes, a.allocated_bytes) == (12 * MiB, 0)
    a.reset_peak()
    assert (a.peak_allocated_bytes, a.peak_reserved_bytes) == (0, 12 * MiB)


def _segments(a: CachingAllocator, live: list) -> dict[int, list]:
    """Every block (free or allocated) reachable from the live and free blocks, by segment start."""
    seen = {}
    for b in [b for b in live if b] + [b for pool in a.pools.values() for _, _, b in pool]:
        while b.prev is not None:
            b = b.prev
        seg = []
        while b is not None:
            seg.append(b)
            b = b.next
        seen[seg[0].addr] = seg
    return seen


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40 * MiB), st.integers(0, 10**6)), max_size=60))
def test_invariants_under_random_alloc_free(ops):
    a = CachingAllocator()
    live: list = []
    requested: dict[int, int] = {}
    for is_alloc, n, pick in ops:
        if is_alloc or not live:
            b = a.malloc(n)
            if b is not None:
                assert b.size >= round_size(n) and b.size - round_size(n) <= max(0, segment_bytes(n) - round_size(n))
                requested[id(b)] = n
                live.append(b)
        else:
            a.free(live.pop(pick % len(live)))
        assert a.allocated_bytes == sum(b.size for b in live) <= a.reserved_bytes
        assert a.peak_allocated_bytes >= a.allocated_bytes and a.peak_reserved_bytes == a.reserved_bytes
        segs = _segments(a, live)
        # blocks tile their segments: contiguous, no overlap; free neighbours are always merged
        assert sum(b.size for seg in segs.values() for b in seg) == a.reserved_bytes
        for seg in segs.values():
            for x, y in zip(seg, seg[1:]):
                assert x.addr + x.size == y.addr
                assert x.allocated or y.allocated
    for b in live:
        a.free(b)
    assert a.allocated_bytes == 0 and a.free_bytes() == a.reserved_bytes

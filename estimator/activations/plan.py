"""Plans: the snapshots of a replay that can hold the allocator peak, evaluated at any context.

``plan`` keeps the snapshots of ``forward.trace_forward`` that can be the allocator peak for some
context of an interval (``Candidate``); ``evaluate`` gives, at one context, the peak's live bytes
raw and as the caching allocator charges them. The allocator's rules are ``allocator.py``'s
(``tally``, ``pool_segments``, ``floor_bytes``); here they are applied to polynomial sizes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..allocator import (
    MAX_ROUNDING_BYTES,
    MIN_BLOCK_BYTES,
    POOL_ROUNDING_BYTES,
    Pools,
    floor_bytes,
    pool_segments,
    tally,
)
from .forward import CARVED, SURCHARGE, Snapshot
from .poly import ZERO, Poly, min_on, padd, peval, pscale

Live = Counter[tuple[Poly, str]]  # live tensors of a snapshot: (size, kind) -> how many


@dataclass(frozen=True, slots=True)
class Candidate:
    """A snapshot that can hold the allocator peak: its live tensors, sizes as polynomials in T."""

    tag: str
    raw: Poly  # sum of live sizes
    sizes: tuple[Poly, ...]  # distinct live sizes that depend on T
    counts: tuple[int, ...]  # how many tensors of each size
    const: Pools  # allocator.tally of the live sizes that do not depend on T
    slack: int  # most the allocator can add on top of raw
    res_slack: int  # most the segments can add on top of raw
    own_slack: int = 0  # slack of the tensors not live in every candidate
    fresh: tuple[int, ...] = ()  # of counts: how many are charged a fresh block (the rest carved)


def plan(
    snaps: list[Snapshot], t_lo: int, t_hi: int, persistent: tuple[tuple[Poly, int], ...] = ()
) -> tuple[Candidate, ...]:
    """The snapshots that can be the allocator peak for some context in ``t_lo..t_hi``.

    A snapshot is dropped when another one contains it (as a multiset of live tensors), or
    when another one is larger by more than its rounding slack over the whole interval.
    ``persistent`` tensors (size, count) are live in every snapshot (e.g. the other layers' KV).
    """
    counted = [(tag, Counter(live)) for tag, live in snaps]  # keys: (size, kind)
    kept: list[tuple[str, Live]] = []
    for i, (tag, c) in enumerate(counted):
        dominated = False
        for j, (_, d) in enumerate(counted):
            if i != j and len(d) >= len(c) and all(d[k] >= v for k, v in c.items()) and (d != c or j > i):
                dominated = True
                break
        if not dominated:
            kept.append((tag, c))
    for _, c in kept:
        for size, n in persistent:  # allocated by earlier layers or steps: carved
            if size != ZERO and n:
                c[(size, CARVED)] += n

    def slack_of(c: Live) -> int:
        # The most rounding can add on top of raw bytes, both in allocated blocks (block_bytes)
        # and in the segment floor the solvers use (a large tensor's 2 MiB round-up), so that
        # pruning keeps every candidate that can set either peak.
        return sum(
            n * (floor_bytes(k[0]) - k[0] if not (k[1] or k[2]) else MAX_ROUNDING_BYTES) for (k, _), n in c.items()
        )

    def raw_of(c: Live) -> Poly:
        raw = ZERO
        for (size, kind), n in c.items():
            if kind != SURCHARGE:
                raw = padd(raw, pscale(size, n))
        return raw

    # Drop b when some a is larger over the whole interval by more than the rounding that b's
    # own tensors (those a does not share) could add: then blk(a) >= blk(b) everywhere.
    survivors = []
    for i, (_, b) in enumerate(kept):
        beaten = False
        for j, (_, a) in enumerate(kept):
            if i == j:
                continue
            only_a, only_b = a - b, b - a
            if not only_a:
                continue
            lead = padd(raw_of(only_a), pscale(raw_of(only_b), -1))
            if min_on(lead, t_lo, t_hi) >= slack_of(only_b) and (min_on(lead, t_lo, t_hi) > 0 or j < i):
                beaten = True
                break
        if not beaten:
            survivors.append(i)
    common: Live = kept[survivors[0]][1].copy() if survivors else Counter()
    for i in survivors[1:]:
        common &= kept[i][1]
    cands = []
    for i in survivors:
        tag, c = kept[i]
        raw = raw_of(c)
        tot, fr = _by_size(c)
        var = sorted((k, n) for k, n in tot.items() if k[1] or k[2])
        const = sorted((k[0], n) for k, n in tot.items() if not (k[1] or k[2]))
        const_pools = tally([k for k, _ in const], [n for _, n in const], [fr[(k, 0, 0)] for k, _ in const])
        # reserved: each large tensor rounds up by < 2 MiB; the shared small and medium
        # segments add < 2 MiB + 20 MiB in all.
        res_slack = sum(c.values()) * (MAX_ROUNDING_BYTES + MIN_BLOCK_BYTES) + POOL_ROUNDING_BYTES
        cands.append(
            Candidate(
                tag,
                raw,
                tuple(k for k, _ in var),
                tuple(n for _, n in var),
                const_pools,
                slack_of(c),
                res_slack,
                slack_of(c - common),
                tuple(fr[k] for k, _ in var),
            )
        )
    return tuple(cands)


def _by_size(c: Live) -> tuple[Counter[Poly], Counter[Poly]]:
    """(tensors per size, how many of them are charged a fresh block) of a (size, kind) multiset."""
    tot: Counter[Poly] = Counter()
    fr: Counter[Poly] = Counter()
    for (size, kind), n in c.items():
        if kind != SURCHARGE:
            tot[size] += n
        if kind != CARVED:
            fr[size] += n
    for size in fr:
        fr[size] = min(fr[size], tot[size])
    return tot, fr


def pools(c: Candidate, t: int) -> Pools:
    """(allocator bytes, small-pool bytes, medium-pool bytes, large segment bytes) of a
    candidate's live tensors at ``t`` (``allocator.tally``): the small and medium pools before
    their round-up to whole 2 / 20 MiB segments (``measure`` rounds them; the solvers use the
    unrounded floor, which never decreases with t)."""
    return tally([c0 + t * (c1 + t * c2) for c0, c1, c2 in c.sizes], c.counts, c.fresh, c.const)


def measure(c: Candidate, t: int) -> tuple[int, int]:
    """(allocator bytes, reserved segment bytes) of a candidate's live tensors at ``t``."""
    blk, small, medium, large = tally([c0 + t * (c1 + t * c2) for c0, c1, c2 in c.sizes], c.counts, c.fresh, c.const)
    return blk, pool_segments(small, medium, large)


def evaluate(cands: tuple[Candidate, ...], t: int) -> tuple[int, int, int, str]:
    """(raw, allocator, reserved bytes, where) at the allocator peak of a plan at context ``t``.

    Reserved is the most any candidate needs, not only the allocated peak's: the caching
    allocator keeps every segment it has mapped until ``empty_cache()``, so the segments of each
    moment's live tensors are all still reserved at the end of the forward.
    """
    if len(cands) == 1:
        c = cands[0]
        blk, res = measure(c, t)
        p = c.raw
        return p[0] + t * (p[1] + t * p[2]), blk, res, c.tag
    measured = [measure(c, t) for c in cands]
    # The peak is chosen by raw bytes first. Tensors live in every candidate round the same way
    # in each, so a candidate can only beat the best so far by its raw lead plus the rounding of
    # its own tensors: the search stops at the first that cannot.
    raw, blk, tag = -1, -1, ""
    for r, i in sorted(((peval(c.raw, t), i) for i, c in enumerate(cands)), reverse=True):
        if r + cands[i].own_slack <= raw:
            break
        if measured[i][0] > blk:
            raw, blk, tag = r, measured[i][0], cands[i].tag
    return raw, blk, max(res for _, res in measured), tag


def upper_bounds(cands: tuple[Candidate, ...], t: int) -> tuple[int, int]:
    """Upper bounds of (allocator bytes, segment bytes) of a plan at ``t``, without evaluating it."""
    blk = res = 0
    for c in cands:
        raw = peval(c.raw, t)
        blk = max(blk, raw + c.slack)
        res = max(res, raw + c.res_slack)
    return blk, res

"""Sizes as polynomials in the context: ``Poly`` = (c0, c1, c2) for c0 + c1*T + c2*T^2 bytes.

The replay (``forward``) computes every tensor size symbolically, so one replay gives a plan
(``plan``) that holds for a whole interval of contexts; sizes are at most quadratic in T
(attention scores: q x S).
"""

from __future__ import annotations

Poly = tuple[int, int, int]  # c0 + c1*T + c2*T^2, T = context tokens
ZERO: Poly = (0, 0, 0)


def P(c0: int = 0, c1: int = 0, c2: int = 0) -> Poly:
    return (c0, c1, c2)


def pmul(a: Poly, b: Poly) -> Poly:
    if a[2] and (b[1] or b[2]) or b[2] and a[1]:
        raise AssertionError("size of degree > 2")
    return (a[0] * b[0], a[0] * b[1] + a[1] * b[0], a[0] * b[2] + a[1] * b[1] + a[2] * b[0])


def pscale(a: Poly, k: int) -> Poly:
    return (a[0] * k, a[1] * k, a[2] * k)


def padd(a: Poly, b: Poly) -> Poly:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def peval(a: Poly, t: int) -> int:
    return a[0] + t * (a[1] + t * a[2])


def min_on(d: Poly, lo: int, hi: int) -> int:
    """Minimum of the polynomial d over the integers lo..hi."""
    pts = [lo, hi]
    if d[2] > 0:
        v = -d[1] // (2 * d[2])
        pts += [min(max(v, lo), hi), min(max(v + 1, lo), hi)]
    return min(peval(d, t) for t in pts)

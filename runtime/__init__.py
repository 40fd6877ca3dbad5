"""Reference runtime: load a Llama-family model through transformers, measure real memory per
phase (load, prefill, decode) on cuda, cpu (real tensors) or trace (fake tensors), sweep a grid
and compare with the estimator. ``python -m runtime --help``.

Importing this package does not import torch; ``measure`` does, on first call.
"""

from __future__ import annotations


def measure(settings=None, **kw):
    """Measure one point; see ``runtime.measure.measure``."""
    from .measure import measure as _measure

    return _measure(settings, **kw)


__all__ = ["measure"]

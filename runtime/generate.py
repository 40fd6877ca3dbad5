"""The memory-relevant part of ``GenerationMixin.generate()`` (greedy, no padding), step by step.

Emulated rather than called, because ``generate()`` cannot run under fake tensors (its stopping
criteria are data dependent) and because the phases must be measured separately. What it does,
from transformers 5.x ``generation/utils.py``:

- the context C is the window (what the KV cache holds at the end, as vLLM's ``max_model_len``):
  a prompt of T = C - new_tokens tokens, then new_tokens decode steps.
- prefill: one forward over ``input_ids`` [b, T] (random ids) with ``position_ids`` [b, T],
  ``attention_mask=None`` (no padding), a ``DynamicCache`` and ``logits_to_keep=1``; then
  ``logits[:, -1].to(copy=True, dtype=float32)`` ([b, V] fp32) and the greedy next token.
  ``prefill_chunk`` splits the prompt into chunks fed one after the other into the same cache.
- decode: ``new_tokens`` forwards of one token each; ``input_ids`` grows by ``cat`` as in generate.

``logits="full"`` keeps all T positions (a plain forward), ``"full-fp32"`` also upcasts them.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import torch


def _forward_kwargs(model) -> tuple[str, bool]:
    """transformers renamed ``past_key_values`` to ``cache`` and dropped ``cache_position`` in 5.2x."""
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), ("cache_position" in params)


def make_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signature
        return DynamicCache()


def _jump(cache, ids, cache_len: int, ids_len: int):
    """Grow every cached K/V to ``cache_len`` tokens and ``ids`` to ``ids_len`` at once, as the
    skipped decode steps would have: fresh tensors of the final shape replace the old ones."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)
            setattr(layer, name, t.new_empty(*t.shape[:-2], cache_len, t.shape[-1]))
    return ids.new_empty(ids.shape[0], ids_len)


def run(model, s: dict[str, Any], device: str, phase: Callable[[str, Any], None] | None = None,
        sync: Callable[[], None] = lambda: None, skip_middle: bool = False) -> dict[str, Any]:
    """Prefill then decode. ``phase(name, cache)`` is called at the start of "prefill" and
    "decode" and at "end" (cache is None before prefill). Returns the cache and timings.

    ``skip_middle`` (trace mode): run the first and the last decode step only, growing the cache
    to its final length in between. Every decode step allocates the same tensors with a cache one
    token longer, so the last step holds the decode peak; this makes a 32-token trace ~16x faster."""
    phase = phase or (lambda name, cache: None)
    cache_kw, wants_cache_position = _forward_kwargs(model)
    # The context is the window the cache holds at the end: a prompt of context - new_tokens
    # tokens, then new_tokens decode steps (each appends one token to the cache).
    B, N = s["batch"], s["new_tokens"]
    T = s["context"] - N
    V = model.config.vocab_size
    keep = 1 if s["logits"] == "last" else 0
    chunk = s["prefill_chunk"] or T
    timings: dict[str, float | None] = {"prefill_s": None, "decode_s": None}
    with torch.no_grad():
        phase("prefill", None)
        sync()
        t0 = time.perf_counter()
        ids = torch.randint(0, V, (B, T), dtype=torch.long, device=device)
        cache = make_cache(model)
        for start in range(0, T, chunk):
            stop = min(T, start + chunk)
            # generate() derives position_ids from the attention mask: an int64 [b, T] tensor
            pos = torch.arange(start, stop, dtype=torch.long, device=device).repeat(B, 1)
            kw = {cache_kw: cache, "use_cache": True, "logits_to_keep": keep, "attention_mask": None,
                  "input_ids": ids[:, start:stop], "position_ids": pos}
            if wants_cache_position:
                kw["cache_position"] = torch.arange(start, stop, dtype=torch.long, device=device)
            out = model(**kw)
            if s["logits"] == "full-fp32" and stop == T:
                full = out.logits.float()
                del full
            last = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            del out, pos, kw
        tok = last.argmax(-1, keepdim=True)
        ids = torch.cat([ids, tok], dim=-1)
        del last
        sync()
        timings["prefill_s"] = time.perf_counter() - t0
        phase("decode", cache)
        t0 = time.perf_counter()
        for i in range(N):
            if skip_middle and 0 < i < N - 1:
                continue
            if skip_middle and i == N - 1 and N > 2:
                ids = _jump(cache, ids, T + i, T + 1 + i)  # prefill added 1 id, each step 1 more
            kw = {cache_kw: cache, "use_cache": True, "logits_to_keep": 1, "attention_mask": None,
                  "input_ids": tok, "position_ids": torch.full((B, 1), T + i, dtype=torch.long, device=device)}
            if wants_cache_position:
                kw["cache_position"] = torch.full((1,), T + i, dtype=torch.long, device=device)
            out = model(**kw)
            last = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            del out, kw
            tok = last.argmax(-1, keepdim=True)
            ids = torch.cat([ids, tok], dim=-1)
            del last
        sync()
        timings["decode_s"] = time.perf_counter() - t0 if N else None
        phase("end", cache)
    return {"cache": cache, "ids": ids, **timings}

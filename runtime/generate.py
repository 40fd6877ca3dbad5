"""The memory-relevant part of ``GenerationMixin.generate()`` (greedy, no padding), step by step.

Emulated rather than called, because ``generate()`` cannot run under fake tensors (its stopping
criteria are data dependent) and because the phases must be measured separately. What it does,
from transformers 5.24 ``generation/utils.py`` (``generate``, ``_sample``, ``_prefill``,
``prepare_inputs_for_generation``, ``_update_model_kwargs_for_generation``), for
``generate(input_ids, max_new_tokens=N, do_sample=False)`` with no eos/pad token and no logits
processors:

- the context C is the window (what the KV cache holds at the end, as vLLM's ``max_model_len``):
  a prompt of T = C - new_tokens tokens, then new_tokens decode steps.
- prefill: one forward over ``input_ids`` [b, T] (random ids) with ``position_ids`` [b, T]
  (int64; generate derives them from the all-ones attention mask, then drops the mask),
  a ``DynamicCache`` and ``logits_to_keep=1``. Then, in generate's order:
  ``position_ids`` grows by one (``_update_model_kwargs_for_generation``: ``cat`` with
  ``position_ids[..., -1:] + arange(1) + 1``), ``next_token_logits =
  logits[:, -1].to(copy=True, dtype=float32)`` ([b, V] fp32), ``next_tokens = argmax`` ([b]),
  ``input_ids = cat([input_ids, next_tokens[:, None]])``, ``unfinished_sequences &=
  ~max_length_criteria`` ([b] int64), the stop check ``unfinished.max() == 0``, ``del outputs``.
  ``prefill_chunk`` splits the prompt into chunks fed one after the other into the same cache.
- decode: ``new_tokens`` forwards of one token each. ``prepare_inputs_for_generation`` clones
  ``input_ids[:, -1:]`` and ``position_ids[..., -1:]`` ([b, 1] each) into ``model_inputs``; the
  loop keeps, across every decode forward, the growing ``input_ids`` and ``position_ids``
  [b, T + 1 + i], the previous step's fp32 ``next_token_logits`` (reassigned only after the
  forward), ``next_tokens`` and ``unfinished_sequences``. ``cache_position`` is no longer
  created by 5.2x ``generate()`` (only for remote-code models).

Two prefill details of the real ``generate()`` are not reproduced, to keep the prefill phase equal
to the estimator's replay (tests/estimator/test_est_estimate.py pins it per token): its
``prepare_inputs_for_generation`` also clones the prompt's ``input_ids`` (8 B per prompt token),
and ``unfinished_sequences`` already exists during the prefill (8 B per sequence). With
``prefill_chunk`` the real loop keeps the previous chunk's ``outputs`` (bf16 logits) and the
whole ``position_ids``; here each chunk gets fresh positions and the fp32 last-token logits.

``logits="full"`` keeps all T positions (a plain forward), ``"full-fp32"`` also upcasts them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


@dataclass
class GenState:
    """What ``_sample`` holds between forwards (its locals and ``model_kwargs``)."""

    ids: torch.Tensor  # input_ids [b, tokens so far], grown by cat each step
    position_ids: torch.Tensor  # model_kwargs["position_ids"] [b, tokens so far]
    unfinished: torch.Tensor  # unfinished_sequences [b] int64
    logits: torch.Tensor | None = None  # next_token_logits [b, V] fp32 of the last step
    next_tokens: torch.Tensor | None = None  # argmax of it, [b] int64
    model_inputs: dict | None = None  # the last forward's inputs (clones), until replaced


def _grow_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """``_update_model_kwargs_for_generation`` for one new token, op for op."""
    nxt = torch.arange(1, dtype=position_ids.dtype, device=position_ids.device).view(1, -1) + position_ids[..., -1:] + 1
    return torch.cat([position_ids, nxt], dim=-1)


def _after_forward(st: GenState, out) -> None:
    """The rest of one ``_sample`` iteration, in its order (``del outputs`` is the caller's)."""
    st.position_ids = _grow_positions(st.position_ids)
    st.logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
    st.next_tokens = torch.argmax(st.logits, dim=-1)
    st.ids = torch.cat([st.ids, st.next_tokens[:, None]], dim=-1)
    # MaxLengthCriteria: torch.full((b,), is_done, dtype=bool); then unfinished & ~that.
    done = torch.full((st.ids.shape[0],), False, dtype=torch.bool, device=st.ids.device)
    st.unfinished = st.unfinished & ~done
    del done
    # StopCheck: bool(unfinished.max() == 0). bool() would sync (and is data dependent under
    # fake tensors); the tensors it allocates are made and dropped.
    stop = st.unfinished.max() == 0
    del stop


def _positions(start: int, stop: int, batch: int, device: str) -> torch.Tensor:
    """int64 positions [b, stop - start] (generate derives them from the all-ones attention mask,
    ``attention_mask.long().cumsum(-1) - 1``; the values do not matter here, the tensor does)."""
    return torch.arange(start, stop, dtype=torch.long, device=device).repeat(batch, 1)


def _prefill(model, s: dict[str, Any], ids: torch.Tensor, device: str, kws: dict[str, Any]):
    """The prompt's forward(s). Returns (the last forward's output, the position_ids generate
    holds after it, the previous chunk's fp32 logits or None)."""
    B, T = ids.shape
    keep = 1 if s["logits"] == "last" else 0
    chunk = s["prefill_chunk"] or T
    out = last = None
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        pos = _positions(start, stop, B, device)
        kw = {**kws, "logits_to_keep": keep, "input_ids": ids[:, start:stop], "position_ids": pos}
        if "cache_position" in kws:
            kw["cache_position"] = torch.arange(start, stop, dtype=torch.long, device=device)
        del out
        out = model(**kw)
        if s["logits"] == "full-fp32" and stop == T:
            full = out.logits.float()
            del full
        if stop < T:  # chunks: the estimator's model keeps the previous chunk's fp32 last-token logits
            last = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        del kw
        if chunk < T:
            del pos
    if chunk < T:  # chunked: generate's whole position_ids are made here (module docstring)
        pos = _positions(0, T, B, device)
    return out, pos, last  # unchunked: the forward got generate's own position_ids [b, T]


def _decode_step(model, st: GenState, kws: dict[str, Any]) -> None:
    """One ``_sample`` iteration after the prefill: ``prepare_inputs_for_generation`` clones
    the last id and position (the previous step's clones die when ``model_inputs`` is
    replaced), the forward, then ``_after_forward``; ``outputs`` dies at the end."""
    inputs = {
        **kws,
        "logits_to_keep": 1,
        "input_ids": st.ids[:, -1:].clone(memory_format=torch.contiguous_format),
        "position_ids": st.position_ids[..., -1:].clone(memory_format=torch.contiguous_format),
    }
    if "cache_position" in kws:  # transformers < 5.2x only
        inputs["cache_position"] = st.position_ids[0, -1:].clone()
    st.model_inputs = inputs
    del inputs
    out = model(**st.model_inputs)
    _after_forward(st, out)
    del out


def run(
    model,
    s: dict[str, Any],
    device: str,
    phase: Callable[[str, Any], None] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Prefill then decode. ``phase(name, cache)`` is called at the start of "prefill" and
    "decode" and at "end" (cache is None before prefill). Returns the cache and timings.

    Every decode step runs, in trace mode too: the caching allocator's state after step i depends
    on every earlier step's allocations and frees (runtime/allocsim.py replays them all)."""
    phase = phase or (lambda name, cache: None)
    cache_kw, wants_cache_position = _forward_kwargs(model)
    # The context is the window the cache holds at the end: a prompt of context - new_tokens
    # tokens, then new_tokens decode steps (each appends one token to the cache).
    B, N = s["batch"], s["new_tokens"]
    T = s["context"] - N
    timings: dict[str, float | None] = {"prefill_s": None, "decode_s": None}
    with torch.no_grad():
        phase("prefill", None)
        sync()
        t0 = time.perf_counter()
        ids = torch.randint(0, model.config.vocab_size, (B, T), dtype=torch.long, device=device)
        cache = make_cache(model)
        kws: dict[str, Any] = {cache_kw: cache, "use_cache": True, "attention_mask": None}
        if wants_cache_position:
            kws["cache_position"] = None
        out, pos, last = _prefill(model, s, ids, device, kws)
        st = GenState(ids=ids, position_ids=pos, unfinished=torch.ones(B, dtype=torch.long, device=device))
        del ids, pos
        _after_forward(st, out)
        del out, last
        sync()
        timings["prefill_s"] = time.perf_counter() - t0
        phase("decode", cache)
        t0 = time.perf_counter()
        for _ in range(N):
            _decode_step(model, st, kws)
        sync()
        timings["decode_s"] = time.perf_counter() - t0 if N else None
        phase("end", cache)
    return {"cache": cache, "ids": st.ids, **timings}

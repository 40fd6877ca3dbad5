"""Solvers: they honour every setting they are given, and their answers are safe.

"Safe" (issue 9): ``max_context`` answers the largest context C such that C and every shorter
context fit, although memory is not monotone in the context (the allocator's shared 2 MiB and
20 MiB segments). The property tests check the answer against brute force over random
settings: every engine, GPU architecture, chunking and cache kind.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estimator import (
    InvalidSpecError,
    UnknownNameError,
    best_quant,
    estimate,
    load_model,
    make_settings,
    max_batch,
    max_context,
    smallest_gpu,
    sweep,
)
from estimator.cli import main
from estimator.engines import llamacpp as lc
from estimator.engines import vllm as vl
from estimator.estimate import Settings, estimate_settings
from estimator.gpus import gpu_catalog
from estimator.kv import KV_DTYPES
from estimator.model import ModelSpec
from estimator.quant import TRANSFORMERS_QUANTS
from estimator.solve import POOL_ROUNDING_BYTES, device_used

# One catalog GPU per architecture: the arch picks the cuBLAS workspace and, before sm80, SDPA's
# math kernel.
ARCH_GPUS = sorted({g.arch: g for g in gpu_catalog()}.values(), key=lambda g: g.arch)


# ---- every field of a Settings is used -------------------------------------------------------


def test_fit_honours_batch_regression():
    """Before: `fit --gpu rtx-4090-24gb --batch 8` answered 97,280 tokens, the same as batch 1,
    and the estimate printed under it did not fit (max_context replaced the batch with 1)."""
    one = max_context("llama-3.2-3b", "bf16", gpu="rtx-4090-24gb")
    eight = max_context("llama-3.2-3b", "bf16", gpu="rtx-4090-24gb", batch=8)
    assert eight < one // 4
    assert estimate("llama-3.2-3b", "bf16", eight, 8, gpu="rtx-4090-24gb").fits
    assert not estimate("llama-3.2-3b", "bf16", eight + 1, 8, gpu="rtx-4090-24gb").fits


def test_cli_fit_honours_batch(capsys):
    import json

    assert main(["fit", "--gpu", "rtx-4090-24gb", "--batch", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["max_context"] == max_context("llama-3.2-3b", "bf16", gpu="rtx-4090-24gb", batch=8)
    assert d["estimate"]["settings"]["batch"] == 8 and d["estimate"]["fits"] is True


def test_solvers_keep_every_field_of_a_settings():
    """Before: max_context(s), max_batch(s) and best_quant(s) replaced the batch, quant or context
    of a Settings with their own defaults."""
    s = make_settings(
        "llama-3.2-3b",
        quant="nf4",
        context=16384,
        batch=3,
        attn="sdpa",
        kv_dtype="fp8",
        new_tokens=8,
        gpu="rtx-4090-24gb",
    )
    c = max_context(s)
    assert c == max_context(
        "llama-3.2-3b", "nf4", gpu="rtx-4090-24gb", batch=3, attn="sdpa", kv_dtype="fp8", new_tokens=8
    )
    assert c != max_context("llama-3.2-3b", gpu="rtx-4090-24gb")
    b = max_batch(s)
    assert estimate(replace(s, batch=b)).fits and not estimate(replace(s, batch=b + 1)).fits
    assert b != max_batch("llama-3.2-3b", gpu="rtx-4090-24gb")  # bf16, sdpa, 8K
    q = best_quant(replace(s, context=32768))  # batch 3 and fp8 KV at 32K: bf16, not fp32
    assert q == "bf16" and estimate(replace(s, context=32768, quant=q)).fits
    assert best_quant(replace(s, context=32768, batch=1)) == "fp32"
    g = smallest_gpu(s)
    assert estimate(replace(s, gpu=g)).fits
    # explicit arguments still override
    assert max_context(s, batch=1) == max_context(replace(s, batch=1))


def test_wrong_case_quant_is_an_error_not_nothing_fits():
    """Before: best_quant(quants=["NF4"]) answered None ("nothing fits")."""
    with pytest.raises(UnknownNameError, match="quant"):
        best_quant("llama-3.2-3b", 8192, gpu="rtx-4090-24gb", quants=["NF4"])
    with pytest.raises(UnknownNameError, match="quant"):
        max_context("llama-3.2-3b", "NF4", gpu="rtx-4090-24gb")
    with pytest.raises(UnknownNameError, match="quant"):
        smallest_gpu("llama-3.2-3b", "Bf16", 8192)


def test_solvers_stop_at_the_window():
    spec = load_model("llama-3.2-3b")
    assert max_context("llama-3.2-3b", "nf4", gpu="h200-141gb") == spec.max_position_embeddings
    small = replace(spec, max_position_embeddings=2048)
    assert max_context(small, "bf16", gpu="h200-141gb") == 2048
    assert max_context(small, "bf16", gpu="h200-141gb", limit=1000) == 1000


def test_sweep_validates_every_context():
    """Before: only the first context of a sweep was range-checked."""
    with pytest.raises(InvalidSpecError, match="window"):
        sweep(quants=["bf16"], contexts=[1024, 262144])
    with pytest.raises(InvalidSpecError, match="new_tokens"):
        sweep(quants=["bf16"], contexts=[1024, 16])
    with pytest.raises(InvalidSpecError, match="quants"):
        sweep(quants=[], contexts=[1024])
    with pytest.raises(InvalidSpecError, match="contexts"):
        sweep(quants=["bf16"], contexts=[])


# ---- the first chunk on pre-sm80 GPUs --------------------------------------------------------


def test_first_chunk_math_kernel_peak_is_kept_regression():
    """Before: with --prefill-chunk 2048 on a T4 the peak dropped from 7.06 GiB at a 4,096-token
    prompt to 6.58 GiB at 4,097: only the last two chunks were replayed, and only the first chunk
    (no 4-D mask) runs SDPA's math kernel with fp32 scores on sm75."""
    s = make_settings("llama-3.2-3b", quant="bf16", context=4096 + 32, prefill_chunk=2048, gpu="t4-16gb")
    at_4096 = estimate(s)
    at_4097 = estimate(replace(s, context=4097 + 32))
    assert at_4097.peak_allocated_bytes >= at_4096.peak_allocated_bytes
    assert at_4097.device_used_bytes >= at_4096.device_used_bytes - POOL_ROUNDING_BYTES
    assert "first chunk" in at_4097.peak_at


# ---- safe answers: brute force over random settings ------------------------------------------


def _random_settings(rng: random.Random) -> Settings:
    heads = rng.choice([1, 2, 4, 8])
    kv_heads = rng.choice([h for h in (1, 2, 4, 8) if heads % h == 0])
    spec = ModelSpec(
        name="r",
        hidden_size=rng.choice([64, 256, 1024]),
        num_hidden_layers=rng.randint(1, 4),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=rng.choice([32, 64, 128]),
        intermediate_size=rng.choice([128, 512, 2048]),
        vocab_size=rng.choice([256, 4096, 32000]),
        tie_word_embeddings=rng.random() < 0.5,
        max_position_embeddings=rng.choice([512, 1024, 2048]),
    )
    n = rng.choice([0, 1, 4, 32])
    return Settings(
        model=spec,
        context=n + 1,
        new_tokens=n,
        gpu=rng.choice(ARCH_GPUS),
        quant=rng.choice(TRANSFORMERS_QUANTS),
        kv_dtype=rng.choice(KV_DTYPES),
        attn=rng.choice(["sdpa", "eager"]),
        cache=rng.choice(["dynamic", "static"]),
        padding=rng.random() < 0.2,
        logits=rng.choice(["last", "full", "full-fp32"]),
        prefill_chunk=rng.choice([None, None, 64, 256]),
        bnb_compute_dtype=rng.choice(["bf16", "fp32"]),
        batch=rng.choice([1, 2, 3]),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), where=st.floats(0, 1), offset=st.integers(-(4 << 20), 4 << 20))
def test_max_context_is_the_largest_safe_context(seed, where, offset):
    """C fits, C + 1 does not, and every context up to C fits: checked exhaustively."""
    rng = random.Random(seed)
    s = _random_settings(rng)
    lo, window = s.new_tokens + 1, s.model.max_position_embeddings
    used = {c: device_used(s, c) for c in range(lo, window + 1)}
    pick = lo + int(where * (window - lo))
    mem = max(1, used[pick] + offset)
    c = max_context(s, gpu_memory_bytes=mem)
    first_over = next((x for x in range(lo, window + 1) if used[x] > mem), None)
    assert c == (window if first_over is None else (0 if first_over == lo else first_over - 1))
    if c:
        assert estimate_settings(replace(s, context=c), mem).fits


def test_max_context_safe_where_memory_dips_regression():
    """A setting where device_used drops as the context grows (a tensor leaves the shared 20 MiB
    segments): with the limit between the dip's two sides, binary search answered above a context
    that does not fit. The answer now stops before the first failure."""
    s = make_settings(
        "llama-3.2-1b",
        quant="nf4-dq",
        kv_dtype="int4",
        attn="eager",
        new_tokens=0,
        cache="static",
        context=1,
        gpu="rtx-4090-24gb",
    )
    used = [device_used(s, c) for c in range(1, 3000)]
    dips = [i for i in range(1, len(used)) if used[i] < used[i - 1]]
    assert dips, "the fixture needs a dip"
    i = dips[0]  # context i + 1 uses less than context i
    mem = (used[i - 1] + used[i]) // 2  # context i does not fit, i + 1 would
    assert used[i] <= mem < used[i - 1]
    c = max_context(s, gpu_memory_bytes=mem)
    assert c < i and all(u <= mem for u in used[:c])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_max_batch_is_the_largest_safe_batch(seed):
    rng = random.Random(seed)
    s = replace(_random_settings(rng), context=rng.randint(64, 512))
    s = replace(s, new_tokens=min(s.new_tokens, s.context - 1))
    used = {b: device_used(replace(s, batch=b)) for b in range(1, 33)}
    mem = used[rng.randint(1, 32)] + rng.randint(-(2 << 20), 2 << 20)
    b = max_batch(s, gpu_memory_bytes=mem, limit=32)
    first_over = next((x for x in range(1, 33) if used[x] > mem), None)
    assert b == (32 if first_over is None else first_over - 1)


VLLM_SPECS = [load_model(p) for p in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")]


@settings(max_examples=40, deadline=None)
@given(
    spec=st.sampled_from(VLLM_SPECS),
    gib=st.floats(4, 90),
    version=st.sampled_from(["v0", "v1", "v0-0.6"]),
    util=st.sampled_from([0.5, 0.9, 0.95]),
    eager=st.booleans(),
    kv=st.sampled_from(["auto", "fp8"]),
)
def test_vllm_max_model_len_is_safe(spec, gib, version, util, eager, kv):
    """Every 16-token max_model_len up to the answer starts, and the next block does not (V0's
    default token budget grows with max_model_len up to 32K, then drops: not monotone)."""
    mem = int(gib * 2**30)
    kw = dict(gpu_memory_utilization=util, version=version, enforce_eager=eager, kv_cache_dtype=kv)

    def starts(n: int) -> bool:
        try:
            return vl.estimate_vllm(spec, mem, max_model_len=n, **kw).starts
        except vl.VllmStartupError:
            return False

    c = vl.max_model_len_vllm(spec, mem, **kw)
    cap = spec.max_position_embeddings
    assert c == 0 or starts(c)
    assert all(starts(n) for n in range(16, c + 1, 16))
    if c < cap:
        assert not starts(min(cap, (c // 16 + 1) * 16))


@settings(max_examples=15, deadline=None)
@given(
    spec=st.sampled_from(VLLM_SPECS),
    gib=st.floats(2, 40),
    quant=st.sampled_from(["q4_k_m", "q8_0", "f16"]),
    fa=st.booleans(),
    parallel=st.sampled_from([1, 4]),
    ngl=st.sampled_from([-1, 10]),
    seed=st.integers(0, 1000),
)
def test_llamacpp_max_context_is_safe(spec, gib, quant, fa, parallel, ngl, seed):
    """The answer fits, the next 256 cells do not, and smaller multiples of 256 fit (sampled)."""
    mem = int(gib * 2**30)
    kw = dict(flash_attn=fa, parallel=parallel, n_gpu_layers=ngl)

    def fits(n: int) -> bool:
        return lc.estimate_llamacpp(spec, quant, n, **kw).device_bytes <= mem

    c = lc.max_context_llamacpp(spec, quant, mem, **kw)
    if c == 0:
        assert not fits(256)
        return
    assert fits(c)
    if c < spec.max_position_embeddings:
        assert not fits(c + 256)
    rng = random.Random(seed)
    ks = {c // 256, max(1, c // 256 - 1)} | {rng.randint(1, c // 256) for _ in range(20)}
    assert all(fits(256 * k) for k in ks)


def test_engine_fit_clis_stop_at_the_window(capsys):
    import json

    assert main(["fit", "--engine", "llama.cpp", "--gpu", "h200-141gb", "--quant", "q4_k_m", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["max_context"] == 131072 and d["whole_window_fits"] is True
    assert main(["fit", "--engine", "vllm", "--gpu", "h200-141gb", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["max_context"] == 131072 and d["whole_window_fits"] is True

"""llama.cpp / GGUF: block formats, mixtures, buffers, offload, compute-buffer replay."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.engines import llamacpp as lc
from estimator.errors import InvalidSpecError, UnknownNameError
from estimator.model import load_preset

MiB = 1 << 20
S3 = load_preset("llama-3.2-3b")
S1 = load_preset("llama-3.2-1b")
S8 = load_preset("llama-3.1-8b")


@pytest.mark.parametrize(
    "t,blck,size",
    [
        ("Q4_0", 32, 18),
        ("Q8_0", 32, 34),
        ("Q2_K", 256, 84),
        ("Q3_K", 256, 110),
        ("Q4_K", 256, 144),
        ("Q5_K", 256, 176),
        ("Q6_K", 256, 210),
        ("IQ4_XS", 256, 136),
        ("Q5_0", 32, 22),
        ("F16", 1, 2),
        ("BF16", 1, 2),
    ],
)
def test_block_formats(t, blck, size):
    """ggml-common.h block sizes: bits per weight = 8 x bytes / elements."""
    assert lc.GGML_TYPES[t] == (blck, size)
    assert lc.row_bytes(t, 256 * 32) == 256 * 32 // blck * size


# Llama 3.2 3B tensor bytes per ftype, computed from the rules (memory-model.md section 8.2 table).
@pytest.mark.parametrize(
    "ftype,nbytes",
    [
        ("q2_k", 1_356_097_792),
        ("q3_k_m", 1_679_321_344),
        ("q4_0", 1_909_352_704),
        ("q4_k_s", 1_920_362_752),
        ("q4_k_m", 2_011_539_712),
        ("q5_k_m", 2_314_316_032),
        ("q6_k", 2_636_015_872),
        ("q8_0", 3_414_061_312),
        ("f16", 6_425_850_112),
    ],
)
def test_3b_mixture_bytes(ftype, nbytes):
    assert lc.gguf_file_tensor_bytes(lc.gguf_tensors(S3, ftype)) == nbytes


def test_use_more_bits_28_layers():
    assert [i for i in range(28) if lc.use_more_bits(i, 28)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]


@pytest.mark.parametrize("ftype", lc.GGUF_QUANTS)
def test_every_ftype_builds_for_every_preset(ftype):
    for spec in (S1, S3, S8):
        ts = lc.gguf_tensors(spec, ftype)
        assert all(t.nbytes > 0 for t in ts)


def test_tied_vs_untied_output_rule():
    """Tied: token_embd takes the output rule (Q6_K); untied (8B): token_embd stays at the base type."""
    t3 = {t.name: t.ggml_type for t in lc.gguf_tensors(S3, "q4_k_m")}
    t8 = {t.name: t.ggml_type for t in lc.gguf_tensors(S8, "q4_k_m")}
    assert t3["token_embd.weight"] == "Q6_K" and "output.weight" not in t3
    assert t8["token_embd.weight"] == "Q4_K" and t8["output.weight"] == "Q6_K"
    assert {t.name: t.ggml_type for t in lc.gguf_tensors(S3, "q8_0")}["token_embd.weight"] == "Q8_0"


def test_q2_k_attn_v_depends_on_gqa():
    """Q2_K: attn_v is Q4_K when n_gqa >= 4 (1B: 32/8), else Q3_K (3B: 24/8 = 3)."""
    assert {t.name: t.ggml_type for t in lc.gguf_tensors(S1, "q2_k")}["blk.5.attn_v.weight"] == "Q4_K"
    assert {t.name: t.ggml_type for t in lc.gguf_tensors(S3, "q2_k")}["blk.5.attn_v.weight"] == "Q3_K"


def test_iq4_xs_rules():
    t1 = {t.name: t.ggml_type for t in lc.gguf_tensors(S1, "iq4_xs")}
    assert t1["blk.3.attn_v.weight"] == "Q5_K"  # n_gqa 4
    assert t1["blk.0.ffn_down.weight"] == "Q5_K"  # i < n/8 without imatrix
    assert t1["blk.9.ffn_down.weight"] == "IQ4_XS"


def test_row_fallback_when_not_whole_blocks():
    """A K-quant row that is not a multiple of 256 falls back (Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    odd = dataclasses.replace(S1, intermediate_size=8960 - 128)  # 8832 = 34.5 x 256
    ts = {t.name: t.ggml_type for t in lc.gguf_tensors(odd, "q4_k_m")}
    assert ts["blk.3.ffn_down.weight"] == "Q5_0"
    assert ts["blk.0.ffn_down.weight"] == "Q8_0"


def test_unknown_quant_named():
    with pytest.raises(UnknownNameError, match="q4_k_m"):
        lc.gguf_tensors(S3, "q4_k_x")


def test_tied_output_copy_on_gpu_and_embedding_on_host():
    mb = lc.model_buffers(lc.gguf_tensors(S3, "q4_k_m"), 28, -1)
    emb = 128256 * 3072 // 256 * 210
    assert mb.host_model_buffer_bytes == emb
    assert mb.gpu_model_buffer_bytes == 2_011_539_712  # all tensors - token_embd + its output copy
    assert mb.n_gpu_layers == 29


def test_partial_offload_moves_layers():
    ts = lc.gguf_tensors(S3, "q4_k_m")
    full = lc.model_buffers(ts, 28, -1)
    part = lc.model_buffers(ts, 28, 14)
    none = lc.model_buffers(ts, 28, 0)
    assert none.gpu_model_buffer_bytes == 0
    assert part.n_gpu_layers == 14 and 0 < part.gpu_model_buffer_bytes < full.gpu_model_buffer_bytes
    # the output copy only exists on the GPU, so host + GPU is the file (+ the copy when offloaded)
    assert part.gpu_model_buffer_bytes + part.host_model_buffer_bytes == lc.gguf_file_tensor_bytes(ts)
    e = lc.estimate_llamacpp(S3, "q4_k_m", 8192, n_gpu_layers=14)
    assert e.kv_buffer_bytes == e.host_kv_buffer_bytes == 448 * MiB


@pytest.mark.parametrize("kv,per_token", [("f16", 114_688), ("q8_0", 60_928), ("q4_0", 32_256)])
def test_kv_bytes_per_token(kv, per_token):
    assert lc.kv_buffer_bytes(S3, 4096, kv, flash_attn=True) == 4096 * per_token


def test_quantized_v_needs_flash_attention():
    with pytest.raises(InvalidSpecError, match="flash-attn"):
        lc.kv_buffer_bytes(S3, 4096, "q8_0", flash_attn=False)


def test_kv_padding():
    assert lc.kv_size_cells(1000, False, "2025-01") == 1024
    assert lc.kv_size_cells(1000, True, "2025-01") == 1024
    assert lc.kv_size_cells(1001, False, "2025-01") == 1024
    assert lc.kv_size_cells(1025, True, "current") == 1280
    assert lc.kv_size_cells(1025, False, "current") == 1056


def test_compute_buffer_no_fa_dominated_by_kq():
    """Without FA the live set is KQ f32 (4 x n_head x n_kv x n_ubatch) plus the mask and a few rows."""
    cb = lc.compute_buffers(S3, 8192, 512, flash_attn=False, version="2025-01")
    kq = 4 * 24 * 8192 * 512
    assert kq < cb.gpu_compute_buffer_bytes < kq * 1.15


def test_compute_buffer_fa_dominated_by_logits():
    cb = lc.compute_buffers(S3, 131072, 512, flash_attn=True, version="current")
    logits = 4 * 128256 * 512
    nofa = lc.compute_buffers(S3, 131072, 512, flash_attn=False, version="current")
    assert cb.gpu_compute_buffer_bytes >= logits
    assert nofa.gpu_compute_buffer_bytes > 10 * cb.gpu_compute_buffer_bytes


def test_compute_buffer_partial_offload_puts_logits_on_host():
    cb = lc.compute_buffers(S3, 4096, 512, flash_attn=True, n_gpu_layers=10)
    assert cb.host_compute_buffer_bytes >= 4 * 128256 * 512


@settings(max_examples=25, deadline=None)
@given(n=st.integers(256, 65536), extra=st.integers(1, 65536), fa=st.booleans())
def test_buffers_monotone_in_context(n, extra, fa):
    """More context never shrinks the KV buffer; the compute buffer may move by a few MiB because
    ggml-alloc's greedy placement is not monotone, but it never drops by more than one mask's worth."""
    a = lc.estimate_llamacpp(S1, "q4_k_m", n, flash_attn=fa)
    b = lc.estimate_llamacpp(S1, "q4_k_m", n + extra, flash_attn=fa)
    assert b.kv_buffer_bytes >= a.kv_buffer_bytes
    assert b.compute_buffer_bytes >= a.compute_buffer_bytes - 16 * MiB
    assert all(isinstance(v, int) and v >= 0 for k, v in a.to_dict().items() if k.endswith("_bytes"))


def test_allocator_best_fit_and_merge():
    """ggml_dyn_tallocr: freed neighbours merge; a fitting hole is reused before the tail."""
    a = lc.Tallocr(1)
    x, y, _ = a.alloc(100), a.alloc(50), a.alloc(100)
    a.release(x, 100)
    a.release(y, 50)
    assert a.alloc(150) == 0  # the merged hole
    assert a.max_size == 250


def test_max_context_llamacpp():
    n = lc.max_context_llamacpp(S3, "q4_k_m", 12 * 1024 * MiB)
    assert n % 256 == 0 and n > 8192
    assert lc.estimate_llamacpp(S3, "q4_k_m", n).device_bytes <= 12 * 1024 * MiB
    assert lc.estimate_llamacpp(S3, "q4_k_m", n + 256).device_bytes > 12 * 1024 * MiB
    assert lc.max_context_llamacpp(S3, "f16", 1024 * MiB) == 0


def test_partial_offload_op_offload_copies_host_weights():
    """With the output layer left on the CPU, the output matmul still runs on the GPU for a 512-token
    batch (op offload): the GPU compute buffer holds a copy of the Q6_K output weight + the logits."""
    full = lc.estimate_llamacpp(S3, "q4_k_m", 8192, flash_attn=True, n_gpu_layers=-1)
    part = lc.estimate_llamacpp(S3, "q4_k_m", 8192, flash_attn=True, n_gpu_layers=28)  # all but output
    out_w = 128256 * 3072 // 256 * 210
    assert part.compute_buffer_bytes >= out_w + 4 * 512 * 128256
    assert part.compute_buffer_bytes > full.compute_buffer_bytes
    small = lc.compute_buffers(S3, 8192, 16, flash_attn=True, n_gpu_layers=28, host_weight_bytes=out_w)
    assert small.gpu_compute_buffer_bytes < out_w  # batches under 32 rows are not offloaded

"""Compute buffers as llama.cpp prints them, from the llama graph built for the worst-case batch:

- ``compute buffer``: the size ``ggml_gallocr`` reserves for the worst-case graph (``n_ubatch``
  tokens attending to the full KV), obtained here by replaying ggml-alloc's greedy allocator
  (``ggml/src/ggml-alloc.c``: ``ggml_dyn_tallocr_alloc`` best fit, in-place reuse for
  ``ggml_op_can_inplace`` ops, free when the last consumer ran; see ``galloc``) over the llama graph
  (``llm_build_llama`` / ``build_attn``). ``CUDA_Host compute buffer``: the graph inputs that the
  scheduler keeps on the CPU (token ids, positions, KQ mask, output ids) plus the token-embedding
  rows fetched on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidSpecError, UnknownNameError
from ...model import ModelSpec
from .buffers import kv_size_cells, offloaded_layers
from .galloc import _Graph, _Node, _simulate
from .types import CPU_ALIGNMENT, CUDA_ALIGNMENT, KQ_MASK_PAD, OP_OFFLOAD_MIN_BATCH, VERSIONS, _pad


@dataclass(frozen=True, slots=True)
class ComputeBuffers:
    """Compute buffers as llama.cpp prints them. All fields are bytes."""

    gpu_compute_buffer_bytes: int  # "CUDA0 compute buffer size"
    host_compute_buffer_bytes: int  # "CUDA_Host compute buffer size" (pinned host), or "CPU compute buffer" CPU-only


def compute_buffers(
    spec: ModelSpec,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = False,
    n_gpu_layers: int = -1,
    gpu: bool = True,
    parallel: int = 1,
    kv_unified: bool | None = None,
    version: str = "current",
    host_weight_bytes: int = 0,
    op_offload: bool = True,
) -> ComputeBuffers:
    """Worst-case compute buffers that ``ggml_backend_sched_reserve`` sizes at context creation.

    The reserve graph has ``n_tokens = min(n_ctx, n_ubatch)`` tokens, all of them outputs, attending
    to the whole KV cache (``n_kv = kv_size``), or to one sequence's share per stream when the KV cache
    is split into per-sequence streams (llama.cpp since mid-2025, ``kv_unified = false``).
    """
    if version not in VERSIONS:
        raise UnknownNameError(f"llama.cpp version must be one of {', '.join(VERSIONS)}: {version!r}")
    if n_ubatch < 1:
        raise InvalidSpecError(f"n_ubatch must be >= 1: {n_ubatch}")
    if kv_unified is None:
        kv_unified = version == "2025-01"
    kv = kv_size_cells(n_ctx, flash_attn, version)
    T = min(n_ctx, n_ubatch)
    n_stream = 1 if (kv_unified or parallel <= 1) else parallel
    if n_stream > 1:
        kv = kv_size_cells(n_ctx // n_stream, flash_attn, version)
    E, I, hd, nh = spec.hidden_size, spec.intermediate_size, spec.head_dim, spec.num_attention_heads
    nkv = spec.num_key_value_heads
    Eq, Ek = nh * hd, nkv * hd
    L = spec.num_hidden_layers
    V = spec.vocab_size
    n_out = T
    pad = KQ_MASK_PAD[version]
    i_gpu_start, out_gpu = offloaded_layers(L, n_gpu_layers)
    if not gpu:
        i_gpu_start, out_gpu = L, False

    def dev_layer(i: int) -> str:
        return "gpu" if i >= i_gpu_start else "cpu"

    g = _Graph()
    # Inputs live on the CPU (sched: tensors flagged input go to the last backend, the CPU);
    # each GPU split gets a copy (allocated as an input of that split in the GPU buffer).
    tokens = g.add("inp_tokens", 4 * T, [], "none", "cpu", inp=True)
    pos_c = g.add("inp_pos", 4 * T, [], "none", "cpu", inp=True)
    mask_rows = _pad(T // n_stream, pad) * n_stream
    mask_c = g.add("KQ_mask", 4 * kv * mask_rows, [], "none", "cpu", inp=True)
    out_ids_c = g.add("inp_out_ids", 4 * n_out, [], "none", "cpu", inp=True)
    inpL = g.add("inp_embd", 4 * E * T, [tokens, _Graph.ext("token_embd")], "get_rows", "cpu")
    copies: dict[tuple[int, str], _Node] = {}

    def on(dev: str, t: _Node) -> _Node:
        if t["dev"] in (dev, "ext"):
            return t
        key = (id(t), dev)
        if key not in copies:
            copies[key] = g.add(t["name"] + "#copy", t["size"], [], "none", dev, inp=True)
        return copies[key]

    masks: dict[str, _Node] = {}

    def mask_for(dev: str) -> _Node:
        if dev not in masks:
            m = on(dev, mask_c)
            if flash_attn:  # ggml_cast(KQ_mask, F16), built once per graph
                m = g.add("KQ_mask_f16", 2 * kv * mask_rows, [m], "cpy", dev)
            masks[dev] = m
        return masks[dev]

    W = _Graph.ext("w")
    KV = _Graph.ext("kv")
    cur = inpL
    for il in range(L):
        d = dev_layer(il)
        inpSA = on(d, cur)
        x = g.add("norm", 4 * E * T, [inpSA], "rms_norm", d)
        x = g.add("attn_norm", 4 * E * T, [x, W], "mul", d)
        q = g.add("Qcur", 4 * Eq * T, [W, x], "mul_mat", d)
        qr = g.add("Qcur_r", 0, [q], "view", d, view_of=q)
        q = g.add("Qrope", 4 * Eq * T, [qr, on(d, pos_c), W], "rope", d)
        k = g.add("Kcur", 4 * Ek * T, [W, x], "mul_mat", d)
        kr = g.add("Kcur_r", 0, [k], "view", d, view_of=k)
        k = g.add("Krope", 4 * Ek * T, [kr, on(d, pos_c), W], "rope", d)
        v = g.add("Vcur", 4 * Ek * T, [W, x], "mul_mat", d)
        g.add("k_store", 0, [k, KV], "cpy", d)["external"] = True  # cpy into a cache view: no buffer
        if not flash_attn:
            vt = g.add("Vcur_t", 0, [v], "view", d, view_of=v)
            g.add("v_store", 0, [vt, KV], "cpy", d)["external"] = True
        else:
            g.add("v_store", 0, [v, KV], "cpy", d)["external"] = True
        qp = g.add("q", 0, [q], "view", d, view_of=q)
        m = mask_for(d)
        if flash_attn:
            a = g.add("fattn", 4 * hd * nh * T, [qp, KV, KV, m], "flash_attn_ext", d)
            ar = g.add("fattn_r", 0, [a], "view", d, view_of=a)
            o_in = ar
        else:
            kq = g.add("kq", 4 * kv * T * nh, [KV, qp], "mul_mat", d)
            kq = g.add("kq_soft_max", 4 * kv * T * nh, [kq, m], "soft_max", d)
            kqv = g.add("kqv", 4 * hd * T * nh, [KV, kq], "mul_mat", d)
            kqp = g.add("kqv_p", 0, [kqv], "view", d, view_of=kqv)
            o_in = g.add("kqv_merged_cont", 4 * Eq * T, [kqp], "cont", d)
        x = g.add("attn_out", 4 * E * T, [W, o_in], "mul_mat", d)
        if il == L - 1:
            oid = on(d, out_ids_c)
            x = g.add("get_rows_cur", 4 * E * n_out, [x, oid], "get_rows", d)
            inpSA = g.add("get_rows_inpSA", 4 * E * n_out, [inpSA, oid], "get_rows", d)
        ffn_inp = g.add("ffn_inp", x["size"], [x, inpSA], "add", d)
        Tn = n_out if il == L - 1 else T
        x = g.add("ffn_norm", 4 * E * Tn, [ffn_inp], "rms_norm", d)
        x = g.add("ffn_norm_w", 4 * E * Tn, [x, W], "mul", d)
        gate = g.add("ffn_gate", 4 * I * Tn, [W, x], "mul_mat", d)
        gate = g.add("ffn_silu", 4 * I * Tn, [gate], "unary", d)
        up = g.add("ffn_up", 4 * I * Tn, [W, x], "mul_mat", d)
        par = g.add("ffn_gate_par", 4 * I * Tn, [gate, up], "mul", d)
        down = g.add("ffn_down", 4 * E * Tn, [W, par], "mul_mat", d)
        cur = g.add("l_out", 4 * E * Tn, [down, ffn_inp], "add", d)
    d = "gpu" if out_gpu else "cpu"
    x = on(d, cur)
    x = g.add("result_norm", x["size"], [x], "rms_norm", d)
    x = g.add("result_norm_w", x["size"], [x, W], "mul", d)
    g.add("result_output", 4 * V * n_out, [W, x], "mul_mat", d, out=True)
    sizes = _simulate(g, {"gpu": CUDA_ALIGNMENT, "cpu": CPU_ALIGNMENT})
    gpu_b = sizes.get("gpu", 0) if gpu else 0
    partial = gpu and (i_gpu_start > 0 or not out_gpu)
    if partial and op_offload and T >= OP_OFFLOAD_MIN_BATCH and host_weight_bytes:
        # Op offload: a matmul whose weight sits in host memory still runs on the GPU when the batch
        # is >= 32 rows (ggml-cuda offload_op); the scheduler copies the weight into the GPU compute
        # buffer for that split. The worst case is the largest host-resident weight plus the matmul's
        # input and output rows (the output layer: weight + [vocab, n_out] logits).
        out_rows = V if not out_gpu else max(I, Eq + 2 * Ek)
        gpu_b = max(gpu_b, _pad(host_weight_bytes, CUDA_ALIGNMENT) + 4 * T * (E + out_rows))
    return ComputeBuffers(gpu_b, sizes.get("cpu", 0))

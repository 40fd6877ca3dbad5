"""Header readers: a real .gguf written with the gguf package and a safetensors file, read back
without touching tensor data; the inventory from the header equals the derived one."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys

import pytest

from estimator.engines import gguf_file as gf
from estimator.engines import llamacpp as lc
from estimator.errors import InvalidSpecError
from estimator.model import ModelSpec

TINY = ModelSpec(name="tiny", hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, intermediate_size=512, vocab_size=512, tie_word_embeddings=True,
                 max_position_embeddings=4096)


def _write_gguf(path, spec: ModelSpec, ftype: str) -> list[lc.GgufTensor]:
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    ts = list(lc.gguf_tensors(spec, ftype, rope_freqs=True))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(spec.num_hidden_layers)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_context_length(spec.max_position_embeddings)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_token_list([f"t{i}".encode() for i in range(spec.vocab_size)])
    for t in ts:
        qt = getattr(gguf.GGMLQuantizationType, t.ggml_type)
        if t.ggml_type == "F32":
            arr = np.zeros(tuple(reversed(t.shape)), dtype=np.float32)
            w.add_tensor(t.name, arr)
        elif t.ggml_type == "F16":
            w.add_tensor(t.name, np.zeros(tuple(reversed(t.shape)), dtype=np.float16))
        else:
            rows = t.nbytes // lc.row_bytes(t.ggml_type, t.shape[0])
            arr = np.zeros((rows, lc.row_bytes(t.ggml_type, t.shape[0])), dtype=np.uint8)
            w.add_tensor(t.name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ts


@pytest.mark.parametrize("ftype", ["q4_k_m", "q8_0", "f16"])
@pytest.mark.parametrize("use_package", [True, False])
def test_gguf_roundtrip(tmp_path, ftype, use_package):
    path = tmp_path / f"tiny-{ftype}.gguf"
    written = _write_gguf(path, TINY, ftype)
    meta, ts = gf.read_gguf(path, use_package=use_package)
    assert {t.name: (t.shape, t.ggml_type) for t in ts} == {t.name: (t.shape, t.ggml_type) for t in written}
    spec = gf.spec_from_gguf(meta, ts)
    assert (spec.hidden_size, spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads,
            spec.head_dim, spec.intermediate_size, spec.vocab_size, spec.tie_word_embeddings) == \
        (256, 2, 4, 2, 64, 512, 512, True)
    a = lc.estimate_llamacpp(spec, ftype, 1024, tensors=ts)
    b = lc.estimate_llamacpp(TINY, ftype, 1024, tensors=written)
    assert a.model_buffer_bytes == b.model_buffer_bytes and a.kv_buffer_bytes == b.kv_buffer_bytes


def test_gguf_header_cap_and_bad_magic(tmp_path):
    p = tmp_path / "x.gguf"
    _write_gguf(p, TINY, "q8_0")
    with pytest.raises(InvalidSpecError, match="larger than"):
        gf.read_gguf(p, cap=64, use_package=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(InvalidSpecError, match="magic"):
        gf.read_gguf(bad)
    with pytest.raises(InvalidSpecError, match="not found"):
        gf.read_gguf(tmp_path / "missing.gguf")


def _write_safetensors(path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1}
    header, off = {}, 0
    for name, (dt, shape) in tensors.items():
        n = sizes[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)


def test_safetensors_header(tmp_path):
    p = tmp_path / "model.safetensors"
    _write_safetensors(p, {"model.embed_tokens.weight": ("BF16", (512, 256)), "model.norm.weight": ("F32", (256,))})
    entries = gf.read_safetensors_header(p)
    assert {e["name"]: e["nbytes"] for e in entries} == {"model.embed_tokens.weight": 512 * 256 * 2,
                                                         "model.norm.weight": 1024}
    assert gf.checkpoint_weight_bytes(entries) == 512 * 256 * 2 + 1024
    assert gf.checkpoint_weight_bytes(entries, dtype_bytes=2) == 512 * 256 * 2 + 512
    pytest.importorskip("safetensors")
    pytest.importorskip("numpy")
    assert sorted(gf.read_safetensors_with_package(p), key=lambda e: e["name"]) == \
        sorted(entries, key=lambda e: e["name"])


def test_safetensors_sharded_index(tmp_path):
    _write_safetensors(tmp_path / "a.safetensors", {"x": ("F16", (4, 4))})
    _write_safetensors(tmp_path / "b.safetensors", {"y": ("F32", (8,))})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "a.safetensors",
                                                                                      "y": "b.safetensors"}}))
    entries = gf.read_safetensors_header(tmp_path)
    assert sum(e["nbytes"] for e in entries) == 32 + 32


def test_safetensors_header_too_large(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(InvalidSpecError, match="exceeds"):
        gf.read_safetensors_header(p)


def test_engines_import_is_standard_library_only():
    """Importing estimator.engines pulls in none of gguf, safetensors, torch, numpy."""
    code = ("import sys, estimator, estimator.engines, estimator.engines.gguf_file, estimator.engines.cli;"
            "print(','.join(m for m in ('gguf','safetensors','torch','numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_spec_from_gguf_rejects_other_arch():
    with pytest.raises(InvalidSpecError, match="architecture"):
        gf.spec_from_gguf({"general.architecture": "mamba"}, [])


def test_replace_keeps_types():
    t = lc.GgufTensor("blk.0.attn_q.weight", (256, 256), "Q4_K", 0)
    assert dataclasses.replace(t, name="x").nbytes == 256 * 144

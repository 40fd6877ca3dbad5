"""Header readers: a real .gguf written with the gguf package and a safetensors file, read back
without touching tensor data; the inventory from the header equals the derived one. Hostile files
(huge counts, truncation, bad types, offsets outside the file, deep nesting) give one-line
``InvalidSpecError``s quickly, never a hang or a traceback.

Tests marked "regression" failed (hang, traceback or silent acceptance) with the reader before
the bounded parsers: the ``gguf`` package's GGUFReader and an unchecked safetensors header."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estimator.engines import gguf_file as gf
from estimator.engines import llamacpp as lc
from estimator.errors import InvalidSpecError
from estimator.model import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelSpec(
    name="tiny",
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=512,
    vocab_size=512,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)
FAST_S = 1.0  # every hostile file must be refused within this many seconds


# --- GGUF files written with the gguf package ------------------------------------------------------


def _write_gguf(path, spec: ModelSpec, ftype: str, alignment: int | None = None) -> list[lc.GgufTensor]:
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    ts = list(lc.gguf_tensors(spec, ftype, rope_freqs=True))
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(spec.num_hidden_layers)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_context_length(spec.max_position_embeddings)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_token_list([f"t{i}".encode() for i in range(spec.vocab_size)])
    w.add_token_scores([0.5] * spec.vocab_size)
    w.add_bool("test.flag", True)
    w.add_float32("test.eps", 1e-5)
    w.add_string("general.name", "tiny")
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
def test_gguf_roundtrip(tmp_path, ftype):
    path = tmp_path / f"tiny-{ftype}.gguf"
    written = _write_gguf(path, TINY, ftype)
    meta, ts = gf.read_gguf(path)
    assert {t.name: (t.shape, t.ggml_type) for t in ts} == {t.name: (t.shape, t.ggml_type) for t in written}
    assert meta["tokenizer.ggml.tokens"] == gf.GgufArray(8, TINY.vocab_size)
    spec = gf.spec_from_gguf(meta, ts)
    assert (
        spec.hidden_size,
        spec.num_hidden_layers,
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.head_dim,
        spec.intermediate_size,
        spec.vocab_size,
        spec.tie_word_embeddings,
    ) == (256, 2, 4, 2, 64, 512, 512, True)
    a = lc.estimate_llamacpp(spec, ftype, 1024, tensors=ts)
    b = lc.estimate_llamacpp(TINY, ftype, 1024, tensors=written)
    assert a.model_buffer_bytes == b.model_buffer_bytes and a.kv_buffer_bytes == b.kv_buffer_bytes


def _package_inventory(path) -> tuple[dict, dict]:
    """(metadata, tensors) as the gguf package's GGUFReader sees them, in read_gguf's conventions."""
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(path), "r")
    meta: dict = {}
    for k, field in r.fields.items():
        if k.startswith("GGUF.") and k != "GGUF.version":
            continue
        kind = int(field.types[0])
        if kind == 9:
            meta[k] = gf.GgufArray(int(field.types[1]), len(field.data))
        elif kind == 8:
            meta[k] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            meta[k] = field.parts[field.data[0]].tolist()[0]
    tensors = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in r.tensors}
    return meta, tensors


@pytest.mark.parametrize("ftype,alignment", [("q4_k_m", None), ("q8_0", 64), ("f16", 256)])
def test_gguf_matches_package_reader(tmp_path, ftype, alignment):
    """Our parser and the gguf package's GGUFReader agree on a file gguf.GGUFWriter wrote."""
    path = tmp_path / "x.gguf"
    _write_gguf(path, TINY, ftype, alignment)
    meta, ts = gf.read_gguf(path)
    pmeta, pts = _package_inventory(path)
    assert meta == pmeta
    assert {t.name: (t.shape, t.ggml_type) for t in ts} == pts


def test_gguf_header_cap_and_bad_magic(tmp_path):
    p = tmp_path / "x.gguf"
    _write_gguf(p, TINY, "q8_0")
    with pytest.raises(InvalidSpecError, match="larger than 64 bytes"):
        gf.read_gguf(p, cap=64)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(InvalidSpecError, match="magic"):
        gf.read_gguf(bad)
    with pytest.raises(InvalidSpecError, match="not found"):
        gf.read_gguf(tmp_path / "missing.gguf")


# --- GGUF files built byte by byte ---------------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _u32(key: str, v: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", v))


def _str(key: str, v: str) -> bytes:
    return _kv(key, 8, _s(v))


def _arr(etype: int, n: int, items: bytes) -> bytes:
    return struct.pack("<IQ", etype, n) + items


def _info(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _gguf(kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3, align: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % align) + data


def _llama_kvs(heads: bytes | None = None) -> list[bytes]:
    return [
        _str("general.architecture", "llama"),
        _u32("llama.block_count", 1),
        _u32("llama.embedding_length", 64),
        heads if heads is not None else _u32("llama.attention.head_count", 2),
        _u32("llama.attention.head_count_kv", 1),
        _u32("llama.feed_forward_length", 128),
        _u32("llama.context_length", 256),
        _kv("tokenizer.ggml.tokens", 9, _arr(8, 3, _s("a") + _s("b") + _s("c"))),
        _kv("tokenizer.ggml.scores", 9, _arr(6, 3, struct.pack("<3f", 0, 0, 0))),
    ]


# token_embd F16 64x8 = 1024 B at 0, attn_norm F32 64 = 256 B at 1024, attn_k Q8_0 32x2 = 68 B at 1280
_INFOS = [
    _info("token_embd.weight", (64, 8), 1, 0),
    _info("blk.0.attn_norm.weight", (64,), 0, 1024),
    _info("blk.0.attn_k.weight", (32, 2), 8, 1280),
]
VALID_GGUF = _gguf(_llama_kvs(), _INFOS, b"\0" * 1348)


def _write(tmp_path, data: bytes, name: str = "x.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _refused(fn, path, match: str | None = None) -> str:
    """Call fn(path); it must raise a one-line InvalidSpecError within FAST_S seconds."""
    t0 = time.perf_counter()
    with pytest.raises(InvalidSpecError, match=match) as e:
        fn(path)
    assert time.perf_counter() - t0 < FAST_S
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_valid_small_gguf(tmp_path):
    meta, ts = gf.read_gguf(_write(tmp_path, VALID_GGUF))
    assert [(t.name, t.shape, t.ggml_type, t.layer) for t in ts] == [
        ("token_embd.weight", (64, 8), "F16", None),
        ("blk.0.attn_norm.weight", (64,), "F32", 0),
        ("blk.0.attn_k.weight", (32, 2), "Q8_0", 0),
    ]
    assert meta["tokenizer.ggml.tokens"] == gf.GgufArray(8, 3)
    spec = gf.spec_from_gguf(meta, ts)
    assert (spec.hidden_size, spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim, spec.vocab_size) == (
        64,
        2,
        1,
        32,
        8,
    )
    pmeta, pts = _package_inventory(tmp_path / "x.gguf")  # the gguf package agrees on our builder's bytes
    assert meta == pmeta and {t.name: (t.shape, t.ggml_type) for t in ts} == pts


def test_huge_array_count_regression(tmp_path):
    """Regression: a 49-byte file whose header claims an array of 2**62 items made GGUFReader loop
    with memory growing without bound. Run in a subprocess so a hang fails instead of blocking."""
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _s("k") + struct.pack("<IIQ", 9, 0, 1 << 62)
    assert len(data) == 49
    p = _write(tmp_path, data)
    code = (
        "import sys, time; from estimator.engines.gguf_file import read_gguf\n"
        "t = time.perf_counter()\n"
        "try:\n    read_gguf(sys.argv[1])\nexcept Exception as e:\n"
        "    print(type(e).__name__, time.perf_counter() - t, e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p)],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        preexec_fn=_limit_memory,
    )
    name, secs, msg = r.stdout.split(" ", 2)
    assert name == "InvalidSpecError" and float(secs) < FAST_S
    assert "4,611,686,018,427,387,904" in msg and "'k'" in msg


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except (ImportError, ValueError, OSError):
        pass


def test_every_truncation_refused_regression(tmp_path):
    """Regression: truncated files gave ValueError/IndexError tracebacks from GGUFReader.
    Every strict prefix of a valid file is refused (the last tensor ends at the end of the file)."""
    p = tmp_path / "t.gguf"
    for n in range(len(VALID_GGUF)):
        p.write_bytes(VALID_GGUF[:n])
        with pytest.raises(InvalidSpecError):
            gf.read_gguf(p)
    p.write_bytes(VALID_GGUF)
    assert len(gf.read_gguf(p)[1]) == 3


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 64])
def test_read_chunk_size_does_not_matter(tmp_path, monkeypatch, chunk):
    """The reader loads the header in chunks; values straddling a chunk edge read the same."""
    p = _write(
        tmp_path, _gguf(_llama_kvs() + [_nested(3), _kv("k", 9, _arr(8, 50, _s("xyz") * 50))], _INFOS, b"\0" * 1348)
    )
    expected = gf.read_gguf(p)
    monkeypatch.setattr(gf, "READ_CHUNK", chunk)
    assert gf.read_gguf(p) == expected


def test_header_larger_than_a_chunk(tmp_path):
    """A 2 MB tokenizer section (more than one read chunk) is skipped correctly and quickly."""
    n = 100_000
    kvs = _llama_kvs()[:7] + [
        _kv("tokenizer.ggml.tokens", 9, _arr(8, n, b"".join(_s(f"tok{i}") for i in range(n)))),
        _kv("tokenizer.ggml.scores", 9, _arr(6, n, b"\0" * 4 * n)),
    ]
    p = _write(tmp_path, _gguf(kvs, _INFOS, b"\0" * 1348))
    assert p.stat().st_size > gf.READ_CHUNK
    t0 = time.perf_counter()
    meta, ts = gf.read_gguf(p)
    assert time.perf_counter() - t0 < FAST_S
    assert meta["tokenizer.ggml.tokens"] == gf.GgufArray(8, n) and len(ts) == 3


def test_loop_budgets(tmp_path, monkeypatch):
    """Strings and arrays inside arrays are capped over the whole header, not only per array."""
    monkeypatch.setattr(gf, "MAX_GGUF_STRINGS", 5)
    monkeypatch.setattr(gf, "MAX_GGUF_NESTED", 2)
    three = _arr(8, 3, _s("a") * 3)
    _refused(
        gf.read_gguf,
        _write(tmp_path, _gguf([_kv("a", 9, three), _kv("b", 9, three)], [])),
        "more than 5 strings in arrays",
    )
    _refused(gf.read_gguf, _write(tmp_path, _gguf([_nested(4)], [])), "more than 2 arrays in arrays")


@pytest.mark.parametrize(
    "version,match",
    [(1, "version 1"), (99, "unsupported GGUF version 99"), (0, "unsupported GGUF version 0"), (3 << 24, "big-endian")],
)
def test_gguf_versions_regression(tmp_path, version, match):
    """Regression: v1 and v99 headers raised ValueError tracebacks from GGUFReader."""
    _refused(gf.read_gguf, _write(tmp_path, _gguf(_llama_kvs(), _INFOS, b"\0" * 1348, version=version)), match)


def test_gguf_v2_accepted(tmp_path):
    assert len(gf.read_gguf(_write(tmp_path, _gguf(_llama_kvs(), _INFOS, b"\0" * 1348, version=2)))[1]) == 3


@pytest.mark.parametrize(
    "heads,match",
    [
        (_u32("llama.attention.head_count", 0), r"head_count must be > 0: 0"),
        (_str("llama.attention.head_count", "two"), r"head_count must be an integer: str 'two'"),
        (_str("llama.attention.head_count", "2"), r"head_count must be an integer: str '2'"),
        (_kv("llama.attention.head_count", 7, b"\x01"), r"head_count must be an integer: bool True"),
        (_kv("llama.attention.head_count", 6, struct.pack("<f", 2.0)), r"head_count must be an integer: float 2.0"),
        (_kv("llama.attention.head_count", 9, _arr(4, 1, struct.pack("<I", 2))), r"an array of 1 u32"),
        (_u32("llama.attention.head_count", 100), r"embedding_length \(64\) is smaller"),
    ],
)
def test_spec_from_gguf_head_counts_regression(tmp_path, heads, match):
    """Regression: a zero head count gave ZeroDivisionError, a string one ValueError/TypeError."""
    meta, ts = gf.read_gguf(_write(tmp_path, _gguf(_llama_kvs(heads), _INFOS, b"\0" * 1348)))
    with pytest.raises(InvalidSpecError, match=match) as e:
        gf.spec_from_gguf(meta, ts)
    assert "llama.attention.head_count" in str(e.value)


@pytest.mark.parametrize(
    "meta,match",
    [
        ({}, "missing general.architecture"),
        ({"general.architecture": 3}, "must be a string: int 3"),
        ({"general.architecture": "mamba"}, "not a supported"),
        (
            {
                "general.architecture": "llama",
                "llama.attention.head_count": 2,
                "llama.embedding_length": 64,
                "llama.block_count": 1,
            },
            "missing llama.feed_forward_length",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.attention.head_count": 2,
                "llama.embedding_length": 64,
                "llama.block_count": 1,
                "llama.feed_forward_length": 128,
            },
            "no vocabulary size",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.attention.head_count": 2,
                "llama.embedding_length": 64,
                "llama.block_count": 1,
                "llama.feed_forward_length": 128,
                "llama.vocab_size": 8,
                "llama.rope.dimension_count": 64,
            },
            "rope.dimension_count must be at most the head size 32: 64",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.attention.head_count": 3,
                "llama.embedding_length": 96,
                "llama.block_count": 1,
                "llama.feed_forward_length": 128,
                "llama.vocab_size": 8,
                "llama.attention.head_count_kv": 2,
            },
            "invalid model: num_attention_heads",
        ),
    ],
)
def test_spec_from_gguf_checks_fields(meta, match):
    with pytest.raises(InvalidSpecError, match=match):
        gf.spec_from_gguf(meta, [])


def _nested(depth: int) -> bytes:
    """An array nested ``depth`` levels deep: [[...[1, 2]...]]."""
    v = _arr(4, 2, struct.pack("<2I", 1, 2))
    for _ in range(depth - 1):
        v = _arr(9, 1, v)
    return _kv("test.nested", 9, v)


def test_nested_arrays(tmp_path):
    """Shallow nesting (allowed by gguf.md) parses; nesting past the cap is refused (regression:
    the old reader recursed without a bound)."""
    for depth in (1, 2, gf.MAX_GGUF_ARRAY_DEPTH):
        meta, _ = gf.read_gguf(_write(tmp_path, _gguf(_llama_kvs() + [_nested(depth)], _INFOS, b"\0" * 1348)))
        assert meta["test.nested"] == gf.GgufArray(9 if depth > 1 else 4, 1 if depth > 1 else 2)
    _refused(
        gf.read_gguf,
        _write(tmp_path, _gguf(_llama_kvs() + [_nested(gf.MAX_GGUF_ARRAY_DEPTH + 1)], _INFOS, b"\0" * 1348)),
        "nests arrays deeper than 4",
    )
    # an array of arrays whose count cannot fit in the bytes left: refused before looping
    _refused(gf.read_gguf, _write(tmp_path, _gguf([_kv("k", 9, _arr(9, 1 << 20, b""))], [])), "truncated header")


@pytest.mark.parametrize(
    "infos,data,match",
    [
        # regression: n_dims 5 was read as a 5-D tensor
        ([_info("a", (32, 1, 1, 1, 1), 0, 0)], 128, "5 dimensions; ggml allows at most 4"),
        # regression: an unknown ggml type became the name "type99"
        ([_info("a", (32,), 99, 0)], 128, "unknown ggml type 99"),
        # regression: offsets were never checked against the file
        ([_info("a", (32,), 0, 1 << 40)], 128, "runs past the end of the file"),
        ([_info("a", (32,), 0, 32)], 128, "runs past the end of the file"),
        # regression: offsets were never checked against the alignment
        ([_info("a", (32,), 0, 1)], 256, "not a multiple of the alignment 32"),
        # regression: GGUFReader raised ValueError on duplicate names
        ([_info("a", (32,), 0, 0), _info("a", (32,), 0, 128)], 256, "duplicate tensor name 'a'"),
        ([_info("a", (0, 4), 0, 0)], 0, "dimension 0 must be in"),
        ([_info("a", (30, 2), 8, 0)], 128, "not a whole number of Q8_0 blocks"),
        ([_info("x" * 64, (32,), 0, 0)], 128, "fewer than 64"),
        ([_s(b"\xff\xfe") + struct.pack("<IQIQ", 1, 32, 0, 0)], 128, "not valid UTF-8"),
    ],
)
def test_bad_tensor_infos_regression(tmp_path, infos, data, match):
    _refused(gf.read_gguf, _write(tmp_path, _gguf([], infos, b"\0" * data)), match)


@pytest.mark.parametrize(
    "kvs,match",
    [
        ([_u32("k", 1), _u32("k", 2)], "duplicate key 'k'"),
        ([_u32("", 1)], "key 0 is empty"),
        ([_kv("k", 13, b"")], "unknown value type 13"),
        ([_kv("k", 9, _arr(13, 1, b"\0"))], "unknown element type 13"),
        ([_kv("k", 8, struct.pack("<Q", 1 << 60))], "claims 1,152,921,504,606,846,976 bytes"),
        ([_kv("k", 9, _arr(8, 1 << 20, b""))], "truncated header"),
        ([_kv("general.alignment", 10, struct.pack("<Q", 32))], "must be of type u32"),
        ([_u32("general.alignment", 24)], "power of two: 24"),
        ([_u32("general.alignment", 0)], "power of two: 0"),
    ],
)
def test_bad_metadata_regression(tmp_path, kvs, match):
    _refused(gf.read_gguf, _write(tmp_path, _gguf(kvs, [])), match)


def test_huge_counts_refused(tmp_path):
    head = b"GGUF" + struct.pack("<I", 3)
    _refused(gf.read_gguf, _write(tmp_path, head + struct.pack("<QQ", 1 << 63, 0)), "tensor count")
    _refused(gf.read_gguf, _write(tmp_path, head + struct.pack("<QQ", 0, 1 << 63)), "key/value count")
    _refused(gf.read_gguf, _write(tmp_path, head + struct.pack("<QQ", 1000, 0)), "truncated header")


def test_custom_alignment(tmp_path):
    kvs = [_u32("general.alignment", 64)]
    ok = _gguf(kvs, [_info("a", (32,), 0, 0), _info("b", (32,), 0, 128)], b"\0" * 256, align=64)
    assert [t.name for t in gf.read_gguf(_write(tmp_path, ok))[1]] == ["a", "b"]
    bad = _gguf(kvs, [_info("a", (32,), 0, 0), _info("b", (32,), 0, 160)], b"\0" * 320, align=64)
    _refused(gf.read_gguf, _write(tmp_path, bad), "160 is not a multiple of the alignment 64")


def test_unreadable_paths(tmp_path, monkeypatch):
    _refused(gf.read_gguf, tmp_path, "directory")
    _refused(gf.read_gguf, tmp_path / "nope.gguf", "not found")
    _refused(gf.read_gguf, str(tmp_path / "a\0b"), "cannot read")
    _refused(gf.read_safetensors_header, tmp_path, "holds neither")
    _refused(gf.read_safetensors_header, tmp_path / "nope.safetensors", "not found")
    p = _write(tmp_path, VALID_GGUF)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(gf, "open", denied, raising=False)
    assert "Permission denied" in _refused(gf.read_gguf, p, "cannot read")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    p = _write(tmp_path, VALID_GGUF)
    p.chmod(0)
    try:
        _refused(gf.read_gguf, p, "Permission denied")
    finally:
        p.chmod(0o600)


# --- safetensors ----------------------------------------------------------------------------------


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


def _raw_safetensors(header: object, n_data: int, pad: bytes = b"") -> bytes:
    raw = (json.dumps(header).encode() if not isinstance(header, bytes) else header) + pad
    return struct.pack("<Q", len(raw)) + raw + b"\0" * n_data


def _package_safetensors(path) -> list[dict]:
    safetensors = pytest.importorskip("safetensors")
    pytest.importorskip("numpy")
    out = []
    with safetensors.safe_open(str(path), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
            sl = f.get_slice(name)
            shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
            n = 1
            for s in shape:
                n *= s
            out.append(
                {"name": name, "dtype": dtype, "shape": shape, "nbytes": n * gf.SAFETENSORS_DTYPE_BITS[dtype] // 8}
            )
    return out


def test_safetensors_header(tmp_path):
    p = tmp_path / "model.safetensors"
    _write_safetensors(p, {"model.embed_tokens.weight": ("BF16", (512, 256)), "model.norm.weight": ("F32", (256,))})
    entries = gf.read_safetensors_header(p)
    assert {e["name"]: e["nbytes"] for e in entries} == {
        "model.embed_tokens.weight": 512 * 256 * 2,
        "model.norm.weight": 1024,
    }
    assert gf.checkpoint_weight_bytes(entries) == 512 * 256 * 2 + 1024
    assert gf.checkpoint_weight_bytes(entries, dtype_bytes=2) == 512 * 256 * 2 + 512
    assert sorted(_package_safetensors(p), key=lambda e: e["name"]) == sorted(entries, key=lambda e: e["name"])
    assert gf.read_safetensors_header(tmp_path) == entries  # a folder holding model.safetensors


def test_safetensors_sharded_index(tmp_path):
    _write_safetensors(tmp_path / "a.safetensors", {"x": ("F16", (4, 4))})
    _write_safetensors(tmp_path / "b.safetensors", {"y": ("F32", (8,))})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})
    )
    entries = gf.read_safetensors_header(tmp_path)
    assert sum(e["nbytes"] for e in entries) == 32 + 32


def test_safetensors_header_too_large(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(InvalidSpecError, match="exceeds"):
        gf.read_safetensors_header(p)


GOOD = {
    "a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
    "b": {"dtype": "F4", "shape": [4], "data_offsets": [12, 14]},
    "__metadata__": {"format": "pt"},
}


def _with(name: str, **fields) -> dict:
    h = json.loads(json.dumps(GOOD))
    h[name].update(fields)
    return h


def test_safetensors_valid_small(tmp_path):
    entries = gf.read_safetensors_header(_write(tmp_path, _raw_safetensors(GOOD, 14), "m.safetensors"))
    assert [(e["name"], e["dtype"], e["shape"], e["nbytes"]) for e in entries] == [
        ("a", "F16", (2, 3), 12),
        ("b", "F4", (4,), 2),
    ]


@pytest.mark.parametrize(
    "data,match",
    [
        # regression: a header length past the end of the file was read short and parsed
        (struct.pack("<Q", 200) + json.dumps(GOOD).encode(), "runs past the end of the file"),
        # already refused before (the message now names the file and the reason)
        (b"\x01\x02", "only 2 bytes"),
        (_raw_safetensors(b"{not json", 0), "not valid JSON"),
        (_raw_safetensors(b"{\xff}", 0), "not UTF-8"),
        # regression: a JSON array header gave AttributeError
        (_raw_safetensors([1, 2], 0), "must be a JSON object"),
        (_raw_safetensors(b" " + json.dumps(GOOD).encode(), 14), "must be a JSON object"),
        # regression: deep nesting gave RecursionError
        (_raw_safetensors(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 0), "nested too deeply"),
        # regression: these were all accepted
        (_raw_safetensors(_with("a", dtype="F17"), 14), "unknown dtype: 'F17'"),
        (_raw_safetensors(_with("a", dtype=None), 14), "unknown dtype: None"),
        (_raw_safetensors(_with("a", shape=[-2, -3]), 14), r"non-negative integers: \[-2, -3\]"),
        (_raw_safetensors(_with("a", shape=[2.0, 3]), 14), r"non-negative integers: \[2.0, 3\]"),
        (_raw_safetensors(_with("a", shape=[True, 6]), 14), r"non-negative integers: \[True, 6\]"),
        (_raw_safetensors(_with("a", shape="23"), 14), "non-negative integers: '23'"),
        (_raw_safetensors(_with("a", data_offsets=[0, 12, 14]), 14), "two integers"),
        (_raw_safetensors(_with("a", data_offsets=[0, 1200]), 14), r"0 <= start <= end <= 14"),
        (_raw_safetensors(_with("a", data_offsets=[-4, 8]), 14), r"0 <= start <= end <= 14"),
        (_raw_safetensors(_with("a", data_offsets=[12, 0]), 14), r"0 <= start <= end <= 14"),
        (_raw_safetensors(_with("a", data_offsets=[0, 10]), 14), "hold 10 bytes but shape .* needs 12"),
        (_raw_safetensors(_with("a", shape=[1 << 60, 1 << 60]), 14), "needs more than the 14-byte data buffer"),
        (_raw_safetensors(_with("b", shape=[3]), 14), "not a whole number of bytes"),
        (_raw_safetensors({**GOOD, "a": [1]}, 14), r"must be a JSON object: \[1\]"),
        (_raw_safetensors({**GOOD, "__metadata__": {"x": 1}}, 14), "__metadata__ must be an object of string"),
        (_raw_safetensors({"__metadata__": {}}, 0), "holds no tensors"),
    ],
)
def test_bad_safetensors_regression(tmp_path, data, match):
    _refused(gf.read_safetensors_header, _write(tmp_path, data, "m.safetensors"), match)


def _index(tmp_path, weight_map: object) -> Path:
    p = tmp_path / "model.safetensors.index.json"
    p.write_text(json.dumps({"weight_map": weight_map}))
    return p


def test_bad_index_regression(tmp_path):
    """Regression: shard names were joined to the folder unchecked ('../x' read outside it), and an
    index naming itself recursed until RecursionError."""
    sub = tmp_path / "ckpt"
    sub.mkdir()
    _write_safetensors(tmp_path / "outside.safetensors", {"x": ("F16", (4, 4))})
    _write_safetensors(sub / "a.safetensors", {"x": ("F16", (4, 4))})
    _write_safetensors(sub / "b.safetensors", {"x": ("F16", (4, 4))})
    for shard in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "..", "", "a\\b"):
        _refused(gf.read_safetensors_header, _index(sub, {"x": shard}), "plain file name")
    _refused(
        gf.read_safetensors_header,
        _index(sub, {"x": "model.safetensors.index.json"}),
        "safetensors file .*index.json': header length",
    )  # read as a shard, not recursed into
    _refused(gf.read_safetensors_header, _index(sub, {"x": "gone.safetensors"}), "shard 'gone.safetensors' is missing")
    _refused(gf.read_safetensors_header, _index(sub, {"x": 3}), "must be a file name: 3")
    _refused(gf.read_safetensors_header, _index(sub, []), "weight_map must be a non-empty JSON object")
    _refused(gf.read_safetensors_header, _index(sub, {}), "weight_map must be a non-empty JSON object")
    _refused(
        gf.read_safetensors_header,
        _index(sub, {"x": "a.safetensors", "y": "b.safetensors"}),
        "tensor 'x' is in both 'a.safetensors' and 'b.safetensors'",
    )
    many = {f"t{i}": f"s{i}.safetensors" for i in range(gf.MAX_SAFETENSORS_SHARDS + 1)}
    _refused(gf.read_safetensors_header, _index(sub, many), "more than 10,000 shards")
    (sub / "model.safetensors.index.json").write_bytes(b"[" * 100_000)
    _refused(gf.read_safetensors_header, sub, "nested too deeply")


# --- property tests: mutated, truncated and extended files -------------------------------------

INTERESTING = [
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    12,
    13,
    31,
    32,
    64,
    99,
    255,
    0xFFFF,
    0xFFFFFFFF,
    1 << 31,
    1 << 32,
    1 << 62,
    1 << 63,
    (1 << 64) - 1,
]


@st.composite
def _mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "overwrite", "field", "insert", "extend"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[i:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[i : i + len(chunk)] = chunk
        elif op == "field":  # an interesting u32 or u64 written over any position
            w = draw(st.sampled_from([4, 8]))
            v = draw(st.sampled_from(INTERESTING)) % (1 << (8 * w))
            data[i : i + w] = v.to_bytes(w, "little")
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def _timed(fn, *args):
    """fn(*args): a result or InvalidSpecError (returned as None), within FAST_S seconds."""
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except InvalidSpecError as e:
        assert "\n" not in str(e)
        out = None
    assert time.perf_counter() - t0 < FAST_S
    return out


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutated(VALID_GGUF))
def test_gguf_fuzz(tmp_path, data):
    p = _write(tmp_path, data, "fuzz.gguf")
    got = _timed(gf.read_gguf, p)
    if got is None:
        return
    meta, ts = got
    size = len(data)
    for t in ts:
        assert isinstance(t.name, str) and 1 <= len(t.shape) <= gf.GGML_MAX_DIMS
        assert all(isinstance(d, int) and d > 0 for d in t.shape)
        assert 0 <= t.nbytes <= size
    spec = _timed(gf.spec_from_gguf, meta, ts)
    if spec is not None:
        _timed(lambda: lc.estimate_llamacpp(spec, "q4_k_m", 256, tensors=ts))


@st.composite
def _json_value(draw):
    return draw(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(1 << 70), 1 << 70)
            | st.floats(allow_nan=True)
            | st.text(max_size=6),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
            max_leaves=8,
        )
    )


@st.composite
def _mutated_header(draw) -> bytes:
    """GOOD with one field (or one entry, or the metadata) replaced by arbitrary JSON."""
    h = json.loads(json.dumps(GOOD))
    target = draw(st.sampled_from(["a", "b", "__metadata__", "new"]))
    field = draw(st.sampled_from([None, "dtype", "shape", "data_offsets"]))
    value = draw(_json_value())
    if field is None or target in ("__metadata__", "new"):
        h[target] = value
    else:
        h[target][field] = value
    return _raw_safetensors(h, draw(st.integers(0, 32)))


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(_mutated(_raw_safetensors(GOOD, 14)), _mutated_header()))
def test_safetensors_fuzz(tmp_path, data):
    got = _timed(gf.read_safetensors_header, _write(tmp_path, data, "fuzz.safetensors"))
    for e in got or []:
        assert set(e) == {"name", "dtype", "shape", "nbytes"}
        assert e["dtype"] in gf.SAFETENSORS_DTYPE_BITS and 0 <= e["nbytes"] <= len(data)
        assert all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in e["shape"])


# --- the command line -------------------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "estimator", "estimate", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=_limit_memory,
    )
    assert time.perf_counter() - t0 < 10
    return r


def test_cli_hostile_gguf_regression(tmp_path):
    """Regression: the 49-byte 2**62-array file hung `estimate --engine llama.cpp --gguf`."""
    p = _write(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _s("k") + struct.pack("<IIQ", 9, 0, 1 << 62))
    r = _cli("--engine", "llama.cpp", "--gguf", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "array 'k' claims" in r.stderr


def test_cli_hostile_safetensors_regression(tmp_path):
    """Regression: a safetensors header that is a JSON array gave an AttributeError traceback."""
    p = _write(tmp_path, _raw_safetensors([1, 2], 0), "m.safetensors")
    r = _cli("--engine", "vllm", "--gpu", "h100-sxm-80gb", "--safetensors", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "JSON object" in r.stderr


def test_cli_gguf_directory_and_spec_errors(tmp_path):
    r = _cli("--engine", "llama.cpp", "--gguf", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "directory" in r.stderr
    p = _write(tmp_path, _gguf(_llama_kvs(_u32("llama.attention.head_count", 0)), _INFOS, b"\0" * 1348))
    r = _cli("--engine", "llama.cpp", "--gguf", str(p))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "head_count must be > 0: 0" in r.stderr


def test_cli_valid_small_gguf(tmp_path):
    r = _cli("--engine", "llama.cpp", "--gguf", str(_write(tmp_path, VALID_GGUF)), "--context", "256", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gguf_tensor_bytes"] == 1348


# --- the rest -------------------------------------------------------------------------------------


def test_engines_import_is_standard_library_only():
    """Importing estimator.engines pulls in none of gguf, safetensors, torch, numpy."""
    code = (
        "import sys, estimator, estimator.engines, estimator.engines.gguf_file, estimator.engines.cli;"
        "print(','.join(m for m in ('gguf','safetensors','torch','numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_spec_from_gguf_rejects_other_arch():
    with pytest.raises(InvalidSpecError, match="architecture"):
        gf.spec_from_gguf({"general.architecture": "mamba"}, [])


def test_replace_keeps_types():
    t = lc.GgufTensor("blk.0.attn_q.weight", (256, 256), "Q4_K", 0)
    assert dataclasses.replace(t, name="x").nbytes == 256 * 144


def test_layer_of_ascii_only():
    assert gf.layer_of("blk.12.attn_q.weight") == 12
    assert gf.layer_of("blk.\u0663.attn_q.weight") is None  # int() would take the Arabic-Indic digit 3
    assert gf.layer_of("blk") is None and gf.layer_of("output.weight") is None

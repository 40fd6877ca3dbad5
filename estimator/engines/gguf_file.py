"""Read the tensor inventory from a real ``.gguf`` file or safetensors checkpoint, header only.

Nothing here reads tensor data. GGUF: the ``gguf`` package's ``GGUFReader`` memory-maps the file
and parses only the header (imported lazily, inside the function); without it, a small
standard-library parser reads the documented header layout (magic ``GGUF``, version, tensor
count, key/value count, key/values, tensor infos) up to ``MAX_HEADER_BYTES``. Safetensors: the
documented layout is an 8-byte little-endian header length followed by a JSON header
(``{name: {dtype, shape, data_offsets}}``); only those bytes are read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import InvalidSpecError
from ..model import ModelSpec
from .llamacpp import GGML_TYPES, GgufTensor

MAX_HEADER_BYTES = 256 << 20   # tokenizer arrays make GGUF headers a few MiB; refuse past 256 MiB
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors spec caps the JSON header at 100 MB

# ggml_type enum values (ggml/include/ggml.h)
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
                   17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
                   23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
                   30: "BF16", 34: "TQ1_0", 35: "TQ2_0"}
# Block formats of the types above that llamacpp.GGML_TYPES does not list (ggml-common.h).
_EXTRA_BLOCKS = {"Q8_1": (32, 36), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98),
                 "IQ1_S": (256, 50), "IQ3_S": (256, 110), "IQ2_S": (256, 82), "IQ1_M": (256, 56),
                 "TQ1_0": (256, 54), "TQ2_0": (256, 66)}
for _k, _v in _EXTRA_BLOCKS.items():
    GGML_TYPES.setdefault(_k, _v)

# safetensors dtype -> bytes per element (safetensors format spec)
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                      "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def _layer_of(name: str) -> int | None:
    if name.startswith("rope_freqs."):
        return 0  # created in layer 0's loop (llama-model.cpp), so it lives with layer 0
    if name.startswith("blk."):
        try:
            return int(name.split(".")[1])
        except (IndexError, ValueError):
            return None
    return None


# --- GGUF --------------------------------------------------------------------------------------

class _Cursor:
    def __init__(self, f, cap: int) -> None:
        self.f, self.cap, self.pos = f, cap, 0

    def read(self, n: int) -> bytes:
        if self.pos + n > self.cap:
            raise InvalidSpecError(f"gguf header is larger than {self.cap:,} bytes; refusing to read further")
        b = self.f.read(n)
        if len(b) != n:
            raise InvalidSpecError("gguf file is truncated inside its header")
        self.pos += n
        return b

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def string(self) -> str:
        n = self.u64()
        return self.read(n).decode("utf-8", errors="replace")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _value(c: _Cursor, vtype: int, keep_arrays: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, c.read(struct.calcsize(fmt)))[0]
    if vtype == 8:
        return c.string()
    if vtype == 9:
        etype, n = c.u32(), c.u64()
        if etype in _SCALARS and not keep_arrays:
            c.read(struct.calcsize(_SCALARS[etype]) * n)
            return n  # the length is all we need from tokenizer arrays
        vals = [_value(c, etype, False) for _ in range(n)]
        return vals if keep_arrays else n
    raise InvalidSpecError(f"gguf header has an unknown value type: {vtype}")


def _read_gguf_stdlib(path: Path, cap: int) -> tuple[dict[str, Any], list[GgufTensor]]:
    with open(path, "rb") as f:
        c = _Cursor(f, cap)
        if c.read(4) != b"GGUF":
            raise InvalidSpecError(f"not a GGUF file (bad magic): {str(path)!r}")
        version = c.u32()
        if version not in (2, 3):
            raise InvalidSpecError(f"unsupported GGUF version: {version}")
        n_tensors, n_kv = c.u64(), c.u64()
        meta: dict[str, Any] = {"GGUF.version": version}
        for _ in range(n_kv):
            key = c.string()
            meta[key] = _value(c, c.u32(), keep_arrays=False)
        tensors = []
        for _ in range(n_tensors):
            name = c.string()
            nd = c.u32()
            shape = tuple(c.u64() for _ in range(nd))
            t = c.u32()
            c.u64()  # data offset
            tensors.append(GgufTensor(name, shape, GGML_TYPE_NAMES.get(t, f"type{t}"), _layer_of(name)))
    return meta, tensors


def _read_gguf_package(path: Path) -> tuple[dict[str, Any], list[GgufTensor]]:
    from gguf import GGUFReader  # lazy: the core package stays standard-library only

    r = GGUFReader(str(path), "r")
    meta: dict[str, Any] = {}
    for k, field in r.fields.items():
        if k.startswith("GGUF.") and k != "GGUF.version":
            continue
        try:
            if len(field.types) and int(field.types[0]) == 9:  # array: keep its length
                meta[k] = len(field.data)
            elif len(field.types) and int(field.types[0]) == 8:
                meta[k] = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
            else:
                meta[k] = field.parts[field.data[0]].tolist()[0]
        except Exception:  # noqa: BLE001 - an odd field must not stop the inventory
            continue
    tensors = [GgufTensor(t.name, tuple(int(x) for x in t.shape), GGML_TYPE_NAMES.get(int(t.tensor_type),
               str(t.tensor_type)), _layer_of(t.name)) for t in r.tensors]
    return meta, tensors


def read_gguf(path: str | Path, cap: int = MAX_HEADER_BYTES, use_package: bool = True) -> tuple[dict[str, Any], list[GgufTensor]]:
    """(metadata, tensors) from a .gguf header. Array values are replaced by their length."""
    p = Path(path)
    if not p.is_file():
        raise InvalidSpecError(f"gguf file not found: {str(path)!r}")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidSpecError(f"not a GGUF file (bad magic): {str(path)!r}")
    if use_package:
        try:
            return _read_gguf_package(p)
        except ImportError:
            pass
    return _read_gguf_stdlib(p, cap)


def spec_from_gguf(meta: dict[str, Any], tensors: list[GgufTensor], name: str = "gguf") -> ModelSpec:
    """A ModelSpec from GGUF metadata (``<arch>.block_count``, ``embedding_length``, ...)."""
    arch = meta.get("general.architecture", "llama")
    if arch not in ("llama", "mistral", "qwen2", "qwen3", "granite"):
        raise InvalidSpecError(f"general.architecture {arch!r} is not a supported Llama-family decoder")

    def g(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise InvalidSpecError(f"gguf metadata is missing {arch}.{key}")
        return int(v)

    by_name = {t.name: t for t in tensors}
    emb = by_name.get("token_embd.weight")
    vocab = emb.shape[1] if emb is not None else int(meta.get("tokenizer.ggml.tokens", 0))
    heads = g("attention.head_count")
    hidden = g("embedding_length")
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rot = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    return ModelSpec(
        name=str(meta.get("general.name", name)), model_type=arch if arch != "granite" else "granite",
        hidden_size=hidden, num_hidden_layers=g("block_count"), num_attention_heads=heads,
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)), head_dim=head_dim,
        intermediate_size=g("feed_forward_length"), vocab_size=vocab,
        tie_word_embeddings="output.weight" not in by_name,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        attention_bias="blk.0.attn_q.bias" in by_name, attention_out_bias="blk.0.attn_output.bias" in by_name,
        qk_norm="blk.0.attn_q_norm.weight" in by_name, partial_rotary_factor=rot / head_dim)


# --- safetensors -------------------------------------------------------------------------------

def read_safetensors_header(path: str | Path) -> list[dict[str, Any]]:
    """[{name, dtype, shape, nbytes}] from one .safetensors file, or every shard named by a
    ``model.safetensors.index.json`` (or a folder holding one). Reads only the headers."""
    p = Path(path)
    if p.is_dir():
        idx = p / "model.safetensors.index.json"
        p = idx if idx.is_file() else p / "model.safetensors"
    if p.name.endswith(".index.json"):
        if p.stat().st_size > MAX_SAFETENSORS_HEADER:
            raise InvalidSpecError(f"safetensors index is too large: {str(p)!r}")
        index = json.loads(p.read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        out: list[dict[str, Any]] = []
        for s in shards:
            out += read_safetensors_header(p.parent / s)
        return out
    if not p.is_file():
        raise InvalidSpecError(f"safetensors file not found: {str(path)!r}")
    with open(p, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidSpecError(f"not a safetensors file (too short): {str(path)!r}")
        n = struct.unpack("<Q", raw)[0]
        if n > MAX_SAFETENSORS_HEADER:
            raise InvalidSpecError(f"safetensors header length {n:,} exceeds 100 MB: {str(path)!r}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise InvalidSpecError(f"safetensors header is not JSON: {e}") from None
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], tuple(info["shape"])
        start, end = info["data_offsets"]
        out.append({"name": name, "dtype": dtype, "shape": shape, "nbytes": int(end) - int(start)})
    return out


def read_safetensors_with_package(path: str | Path) -> list[dict[str, Any]]:
    """Same inventory through ``safetensors.safe_open`` (lazy import; header only)."""
    from safetensors import safe_open  # lazy

    out = []
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            shape = tuple(sl.get_shape())
            dtype = sl.get_dtype()
            n = 1
            for s in shape:
                n *= s
            out.append({"name": name, "dtype": dtype, "shape": shape, "nbytes": n * SAFETENSORS_DTYPES[dtype]})
    return out


def checkpoint_weight_bytes(entries: list[dict[str, Any]], dtype_bytes: int | None = None) -> int:
    """Bytes the checkpoint's tensors take once loaded: their stored size, or cast to ``dtype_bytes``
    per element for floating tensors (vLLM ``--dtype``)."""
    total = 0
    for e in entries:
        if dtype_bytes is None or e["dtype"] not in ("F32", "F16", "BF16", "F64"):
            total += e["nbytes"]
        else:
            n = 1
            for s in e["shape"]:
                n *= s
            total += n * dtype_bytes
    return total

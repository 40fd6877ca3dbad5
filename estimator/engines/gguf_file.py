"""Read the tensor inventory from a real ``.gguf`` file or safetensors checkpoint, header only.

Nothing here reads tensor data, and nothing trusts the header: both readers are bounded
standard-library parsers. Every count and length a header declares is checked against the bytes
left in the file (and an absolute cap) before anything is read or looped over; arrays the
estimator does not need (tokenizer vocabularies) are skipped by seeking; what the header declares
(types, shapes, offsets) is validated against the file size. Every failure is an
``InvalidSpecError`` whose message is one line naming the file, the field and the value.

GGUF layout (ggml/docs/gguf.md, ggml/src/gguf.cpp): magic ``GGUF``, u32 version, u64 tensor
count, u64 key/value count, key/values (u64-length-prefixed UTF-8 key, u32 value type, value),
tensor infos (name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset), padding to
``general.alignment``, tensor data. Safetensors layout (huggingface/safetensors README): u64
little-endian header length N, N bytes of UTF-8 JSON ``{name: {dtype, shape, data_offsets},
"__metadata__": {str: str}}``, then the data buffer that the offsets index.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from ..errors import InvalidSpecError
from ..model import ModelSpec
from .llamacpp import GGML_TYPES, GgufTensor, tensor_bytes

# --- caps and format constants --------------------------------------------------------------------

MAX_HEADER_BYTES = 256 << 20  # tokenizer arrays make GGUF headers a few MiB; refuse past 256 MiB
# Count caps keep the worst-case parse of a hostile header to about a second (each tensor info or
# key/value costs a few microseconds, each skipped string a fraction of one).
MAX_GGUF_TENSORS = 1 << 16  # 65,536; the largest public GGUFs (MoE experts merged per layer) hold ~1-2 thousand
MAX_GGUF_KV = 1 << 16  # 65,536; real files carry a few dozen key/values
MAX_GGUF_STRING = 1 << 24  # 16 MiB; the longest real strings are chat templates of tens of KiB
#                                (llama.cpp's own cap, GGUF_MAX_STRING_LENGTH in ggml/src/gguf.cpp, is 1 GiB)
MAX_GGUF_ARRAY = 1 << 24  # 16 Mi elements; the largest vocabularies hold ~262k tokens (Gemma 3)
#                                (llama.cpp: GGUF_MAX_ARRAY_ELEMENTS = 1 GiB elements, ggml/src/gguf.cpp)
MAX_GGUF_STRINGS = 1 << 22  # strings inside arrays, whole header; tokens + merges of real vocabularies < 1 Mi
MAX_GGUF_NESTED = 1 << 16  # arrays inside arrays, whole header; real files have none (llama.cpp refuses them)
MAX_GGUF_ARRAY_DEPTH = 4  # gguf.md allows arrays of arrays; llama.cpp reads none (gguf.cpp refuses them)
GGUF_MAGIC = b"GGUF"  # ggml/include/gguf.h GGUF_MAGIC
GGUF_VERSIONS = (2, 3)  # v2 widened counts and lengths to u64 (gguf.md); v1 (u32) is refused by
#                                llama.cpp ("GGUFv1 is no longer supported"); GGUF_VERSION = 3 in gguf.h
GGUF_DEFAULT_ALIGNMENT = 32  # ggml/include/gguf.h GGUF_DEFAULT_ALIGNMENT
GGML_MAX_DIMS = 4  # ggml/include/ggml.h
GGML_MAX_NAME = 64  # ggml/include/ggml.h; gguf.cpp refuses tensor names of 64 bytes or more
INT64_MAX = (1 << 63) - 1  # ggml's ne[] are int64_t (ggml.h struct ggml_tensor)

MAX_SAFETENSORS_HEADER = 100_000_000  # MAX_HEADER_SIZE in safetensors/src/tensor.rs ("100Mo")
MAX_SAFETENSORS_INDEX = 100_000_000  # same bound for model.safetensors.index.json (real ones are < 10 MB)
MAX_SAFETENSORS_SHARDS = 10_000  # real checkpoints have at most a few hundred shards
SAFETENSORS_INDEX = "model.safetensors.index.json"  # transformers SAFE_WEIGHTS_INDEX_NAME
SAFETENSORS_SINGLE = "model.safetensors"  # transformers SAFE_WEIGHTS_NAME

READ_CHUNK = 1 << 20  # bytes read from the file at a time while parsing a GGUF header

# GGUF metadata value types (gguf_type, ggml/include/gguf.h) -> struct format of the fixed-size ones
_GGUF_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
GGUF_STRING, GGUF_ARRAY, GGUF_UINT32 = 8, 9, 4
# GGUF_TYPE_NAME in ggml/src/gguf.cpp
GGUF_TYPE_NAMES = {
    0: "u8",
    1: "i8",
    2: "u16",
    3: "i16",
    4: "u32",
    5: "i32",
    6: "f32",
    7: "bool",
    8: "str",
    9: "arr",
    10: "u64",
    11: "i64",
    12: "f64",
}
# Fewest bytes one value of each type takes: a string is at least its u64 length, an array at least
# its u32 element type and u64 count.
_GGUF_MIN_BYTES = {**{t: s.size for t, s in _GGUF_SCALARS.items()}, GGUF_STRING: 8, GGUF_ARRAY: 12}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, ggml type, offset

# ggml_type enum values (ggml/include/ggml.h); values 4, 5 and 31-33 are retired types.
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}
# Block formats of the types above that llamacpp.GGML_TYPES does not list (ggml-common.h:
# block_q8_1, block_iq2_xxs, ..., block_mxfp4 = e8m0 scale + 16 B of 4-bit values).
_EXTRA_BLOCKS = {
    "Q8_1": (32, 36),
    "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74),
    "IQ3_XXS": (256, 98),
    "IQ1_S": (256, 50),
    "IQ3_S": (256, 110),
    "IQ2_S": (256, 82),
    "IQ1_M": (256, 56),
    "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
    "MXFP4": (32, 17),
}
for _k, _v in _EXTRA_BLOCKS.items():
    GGML_TYPES.setdefault(_k, _v)  # GgufTensor.nbytes reads llamacpp.GGML_TYPES

# safetensors dtype -> bits per element (Dtype::bitsize, safetensors/src/tensor.rs, safetensors 0.6+)
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Llama-family architectures spec_from_gguf maps onto ModelSpec (general.architecture values)
GGUF_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "granite")


@dataclass(frozen=True, slots=True)
class GgufArray:
    """A GGUF array in the metadata: its element type (a gguf_type number) and element count.
    The elements themselves are skipped, not read."""

    element_type: int
    count: int


# --- shared helpers -------------------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: file-derived text stays on one short line."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _open_regular(path: str | Path, kind: str) -> tuple[BinaryIO, int]:
    """(open binary file, its size) for a regular file, or a one-line InvalidSpecError."""
    shown = _show(str(path), 200)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidSpecError(f"{kind} file not found: {shown}") from None
    except (OSError, ValueError) as e:  # permission, a file used as a folder, an embedded NUL
        raise InvalidSpecError(f"cannot read {kind} file {shown}: {_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidSpecError(f"{kind} path is a directory, not a file: {shown}")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidSpecError(f"{kind} path is not a regular file: {shown}")
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise InvalidSpecError(f"cannot read {kind} file {shown}: {_reason(e)}") from None
    return f, os.fstat(f.fileno()).st_size


def _reason(e: BaseException) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0]


def layer_of(name: str) -> int | None:
    if name.startswith("rope_freqs."):
        return 0  # created in layer 0's loop (llama-model.cpp), so it lives with layer 0
    if name.startswith("blk."):
        part = name.split(".")[1]
        return int(part) if part.isascii() and part.isdigit() else None
    return None


# --- GGUF -----------------------------------------------------------------------------------------


class _Header:
    """Sequential reads over a GGUF header. ``need`` checks a length against the bytes left in the
    file and against the header cap before anything is read or skipped."""

    def __init__(self, f: BinaryIO, size: int, cap: int, where: str) -> None:
        self.f, self.size, self.cap, self.where = f, size, cap, where
        self.pos = 0  # file offset of the next read
        self.buf, self.buf_at = b"", 0  # bytes held in memory and the file offset of buf[0]
        self.strings_left, self.nested_left = MAX_GGUF_STRINGS, MAX_GGUF_NESTED  # loop budgets

    def fail(self, text: str) -> InvalidSpecError:
        return InvalidSpecError(f"{self.where}: {text}")

    def need(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n > left:
            raise self.fail(
                f"truncated header: {what} needs {n:,} bytes at offset {self.pos:,}, the file has {left:,} left"
            )
        if self.pos + n > self.cap:
            raise self.fail(
                f"gguf header is larger than {self.cap:,} bytes ({what} at offset {self.pos:,}); "
                "refusing to read further"
            )

    def take(self, n: int, what: str) -> int:
        """Index into ``self.buf`` of the next ``n`` bytes (loaded on demand); advances past them."""
        self.need(n, what)
        i = self.pos - self.buf_at
        if i < 0 or i + n > len(self.buf):
            self.f.seek(self.pos)
            self.buf, self.buf_at, i = self.f.read(max(n, READ_CHUNK)), self.pos, 0
            if len(self.buf) < n:
                raise self.fail(f"file shrank while reading {what} at offset {self.pos:,}")
        self.pos += n
        return i

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def scalar(self, s: struct.Struct, what: str) -> Any:
        i = self.take(s.size, what)  # first: take() may load a new buffer
        return s.unpack_from(self.buf, i)[0]

    def u32(self, what: str) -> int:
        return int(self.scalar(_GGUF_SCALARS[4], what))  # "<I" unpacks an int

    def u64(self, what: str) -> int:
        return int(self.scalar(_GGUF_SCALARS[10], what))  # "<Q" unpacks an int

    def string_length(self, what: str) -> int:
        n = self.u64(f"length of {what}")
        if n > MAX_GGUF_STRING:
            raise self.fail(f"{what} claims {n:,} bytes; at most {MAX_GGUF_STRING:,} accepted")
        return n

    def skip_strings(self, n: int, what: str) -> None:
        """Skip ``n`` length-prefixed strings: a tight loop over the loaded buffer, falling back to
        ``string_length``/``skip`` (which refill it, or raise the full message) at its edge."""
        unpack, cap_len, end = _GGUF_SCALARS[10].unpack_from, MAX_GGUF_STRING, min(self.size, self.cap)
        buf, at, pos = self.buf, self.buf_at, self.pos
        last = at + len(buf) - 8  # the last position whose u64 length lies inside buf
        for _ in range(n):
            if at <= pos <= last:
                k = unpack(buf, pos - at)[0]
                if k <= cap_len and pos + 8 + k <= end:
                    pos += 8 + k
                    continue
            self.pos = pos
            self.skip(self.string_length(f"string in {what}"), f"string in {what}")
            buf, at, pos = self.buf, self.buf_at, self.pos
            last = at + len(buf) - 8
        self.pos = pos

    def raw(self, n: int, what: str) -> bytes:
        i = self.take(n, what)
        return self.buf[i : i + n]

    def name(self, what: str) -> str:
        """A u64-length-prefixed string that must be valid UTF-8 (keys, tensor names)."""
        b = self.raw(self.string_length(what), what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8: {_show(b)}") from None


def _gguf_value(h: _Header, vtype: int, key: str, depth: int) -> Any:
    """One metadata value; arrays are skipped and returned as ``GgufArray``."""
    s = _GGUF_SCALARS.get(vtype)
    if s is not None:
        return h.scalar(s, f"value of {_show(key)}")
    if vtype == GGUF_STRING:
        what = f"string value of {_show(key)}"
        return h.raw(h.string_length(what), what).decode("utf-8", errors="replace")
    if vtype != GGUF_ARRAY:
        raise h.fail(f"key {_show(key)} has unknown value type {vtype} (known: 0-12)")
    if depth >= MAX_GGUF_ARRAY_DEPTH:
        raise h.fail(f"key {_show(key)} nests arrays deeper than {MAX_GGUF_ARRAY_DEPTH} levels")
    etype = h.u32(f"element type of array {_show(key)}")
    n = h.u64(f"element count of array {_show(key)}")
    if etype not in _GGUF_MIN_BYTES:
        raise h.fail(f"array {_show(key)} has unknown element type {etype} (known: 0-12)")
    if n > MAX_GGUF_ARRAY:
        raise h.fail(f"array {_show(key)} claims {n:,} elements; at most {MAX_GGUF_ARRAY:,} accepted")
    what = f"array {_show(key)} of {n:,} {GGUF_TYPE_NAMES[etype]}"
    h.need(n * _GGUF_MIN_BYTES[etype], what)  # before looping: every element takes at least this much
    if etype in _GGUF_SCALARS:
        h.skip(n * _GGUF_SCALARS[etype].size, what)
    elif etype == GGUF_STRING:
        h.strings_left -= n
        if h.strings_left < 0:
            raise h.fail(f"{what}: the header holds more than {MAX_GGUF_STRINGS:,} strings in arrays")
        h.skip_strings(n, what)
    else:
        h.nested_left -= n
        if h.nested_left < 0:
            raise h.fail(f"{what}: the header holds more than {MAX_GGUF_NESTED:,} arrays in arrays")
        for _ in range(n):
            _gguf_value(h, GGUF_ARRAY, key, depth + 1)
    return GgufArray(etype, n)


def _gguf_metadata(h: _Header, n_kv: int, version: int) -> tuple[dict[str, Any], int]:
    """(metadata, alignment) from the key/value section."""
    h.need(n_kv * _MIN_KV_BYTES, f"{n_kv:,} key/value pairs")
    meta: dict[str, Any] = {"GGUF.version": version}
    alignment = GGUF_DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = h.name(f"key {i}")
        if not key:
            raise h.fail(f"key {i} is empty")
        if key in meta:
            raise h.fail(f"duplicate key {_show(key)}")
        vtype = h.u32(f"value type of {_show(key)}")
        meta[key] = _gguf_value(h, vtype, key, 0)
        if key == "general.alignment":  # gguf.cpp: must be a u32 power of two
            if vtype != GGUF_UINT32:
                raise h.fail(f"general.alignment must be of type u32, not {GGUF_TYPE_NAMES.get(vtype, vtype)}")
            alignment = meta[key]
            if alignment == 0 or alignment & (alignment - 1):
                raise h.fail(f"general.alignment must be a power of two: {alignment}")
    return meta, alignment


def _gguf_tensor_info(h: _Header, i: int) -> tuple[str, tuple[int, ...], str, int]:
    """(name, shape in GGUF order, ggml type name, data offset) of tensor info ``i``."""
    name = h.name(f"tensor {i} name")
    if len(name.encode("utf-8")) >= GGML_MAX_NAME:
        raise h.fail(
            f"tensor name {_show(name)} is {len(name.encode('utf-8'))} bytes; "
            f"llama.cpp takes fewer than {GGML_MAX_NAME}"
        )
    n_dims = h.u32(f"n_dims of tensor {_show(name)}")
    if n_dims > GGML_MAX_DIMS:
        raise h.fail(f"tensor {_show(name)} has {n_dims} dimensions; ggml allows at most {GGML_MAX_DIMS}")
    dims = tuple(h.u64(f"dimension {j} of tensor {_show(name)}") for j in range(n_dims))
    for j, d in enumerate(dims):
        if not 0 < d <= INT64_MAX:
            raise h.fail(f"tensor {_show(name)} dimension {j} must be in [1, {INT64_MAX:,}]: {d:,}")
    t = h.u32(f"ggml type of tensor {_show(name)}")
    type_name = GGML_TYPE_NAMES.get(t)
    if type_name is None:
        raise h.fail(f"tensor {_show(name)} has unknown ggml type {t}")
    shape = dims or (1,)  # n_dims 0 is a scalar: ggml fills ne[] with 1 (gguf.cpp)
    blck = GGML_TYPES[type_name][0]
    if shape[0] % blck:
        raise h.fail(
            f"tensor {_show(name)} row of {shape[0]:,} elements is not a whole number of {type_name} blocks ({blck})"
        )
    offset = h.u64(f"data offset of tensor {_show(name)}")
    return name, shape, type_name, offset


def _parse_gguf(h: _Header) -> tuple[dict[str, Any], list[GgufTensor]]:
    magic = h.raw(4, "magic")
    if magic != GGUF_MAGIC:
        raise h.fail(f"not a GGUF file (bad magic {_show(magic)})")
    version = h.u32("version")
    if version == 1:
        raise h.fail(
            "GGUF version 1 (32-bit counts) is not supported (llama.cpp refuses it too); "
            "convert the model again with a current llama.cpp"
        )
    if version and version & 0xFFFF == 0:  # gguf.cpp: the version of a file written on the other endianness
        raise h.fail(f"GGUF version {version:#x} looks big-endian; only little-endian files are supported")
    if version not in GGUF_VERSIONS:
        raise h.fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, GGUF_VERSIONS))})")
    n_tensors, n_kv = h.u64("tensor count"), h.u64("key/value count")
    if n_tensors > MAX_GGUF_TENSORS:
        raise h.fail(f"tensor count {n_tensors:,} exceeds {MAX_GGUF_TENSORS:,}")
    if n_kv > MAX_GGUF_KV:
        raise h.fail(f"key/value count {n_kv:,} exceeds {MAX_GGUF_KV:,}")
    meta, alignment = _gguf_metadata(h, n_kv, version)
    h.need(n_tensors * _MIN_TENSOR_INFO_BYTES, f"{n_tensors:,} tensor infos")
    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        info = _gguf_tensor_info(h, i)
        if info[0] in names:
            raise h.fail(f"duplicate tensor name {_show(info[0])}")
        names.add(info[0])
        infos.append(info)
    data_start = -(-h.pos // alignment) * alignment  # gguf.cpp: the data section starts aligned
    tensors = []
    for name, shape, type_name, offset in infos:
        if offset % alignment:
            raise h.fail(f"tensor {_show(name)} data offset {offset:,} is not a multiple of the alignment {alignment}")
        nbytes = tensor_bytes(type_name, shape)
        if data_start + offset + nbytes > h.size:
            raise h.fail(
                f"tensor {_show(name)} data ({nbytes:,} bytes at offset {offset:,} from the data "
                f"section at {data_start:,}) runs past the end of the file ({h.size:,} bytes)"
            )
        tensors.append(GgufTensor(name, shape, type_name, layer_of(name)))
    return meta, tensors


def read_gguf(path: str | Path, cap: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], list[GgufTensor]]:
    """(metadata, tensors) from a .gguf header; reads at most ``cap`` header bytes and no tensor data.

    Metadata values are Python ints, floats, bools and strs; arrays are ``GgufArray`` (element type
    and count, elements skipped). ``meta["GGUF.version"]`` is the file version. Raises
    ``InvalidSpecError`` (one line) for anything malformed, truncated or unreadable."""
    where = f"gguf file {_show(str(path), 200)}"
    f, size = _open_regular(path, "gguf")
    try:
        with f:
            return _parse_gguf(_Header(f, size, cap, where))
    except OSError as e:
        raise InvalidSpecError(f"cannot read {where}: {_reason(e)}") from None


def _describe(v: Any) -> str:
    if isinstance(v, GgufArray):
        return f"an array of {v.count:,} {GGUF_TYPE_NAMES.get(v.element_type, v.element_type)}"
    return f"{type(v).__name__} {_show(v)}"


def _meta_int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    """``meta[key]`` as an integer > 0; ``default`` when absent (None: the key is required)."""
    if key not in meta:
        if default is None:
            raise InvalidSpecError(f"gguf metadata is missing {key}")
        return default
    v = meta[key]
    if not _is_int(v):
        raise InvalidSpecError(f"gguf metadata {key} must be an integer: {_describe(v)}")
    if v <= 0:
        raise InvalidSpecError(f"gguf metadata {key} must be > 0: {v}")
    return v


def _gguf_vocab(meta: dict[str, Any], by_name: dict[str, GgufTensor], arch: str) -> int:
    """Vocabulary size: token_embd's rows, else the tokenizer's token count, else ``<arch>.vocab_size``."""
    emb = by_name.get("token_embd.weight")
    if emb is not None:
        if len(emb.shape) != 2:
            raise InvalidSpecError(f"gguf tensor token_embd.weight must be 2-D: shape {emb.shape}")
        return emb.shape[1]
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, GgufArray) and tokens.count > 0:
        return tokens.count
    if f"{arch}.vocab_size" in meta:
        return _meta_int(meta, f"{arch}.vocab_size")
    raise InvalidSpecError(
        "gguf file gives no vocabulary size: no token_embd.weight tensor, "
        f"tokenizer.ggml.tokens array or {arch}.vocab_size"
    )


def spec_from_gguf(meta: dict[str, Any], tensors: list[GgufTensor], name: str = "gguf") -> ModelSpec:
    """A ModelSpec from GGUF metadata (``<arch>.block_count``, ``embedding_length``, ...).

    Every field used must be an integer > 0 (a bool, float, string or array is refused);
    ``InvalidSpecError`` names the key and the value."""
    if "general.architecture" not in meta:
        raise InvalidSpecError("gguf metadata is missing general.architecture")
    arch = meta["general.architecture"]
    if not isinstance(arch, str):
        raise InvalidSpecError(f"gguf metadata general.architecture must be a string: {_describe(arch)}")
    if arch not in GGUF_ARCHS:
        raise InvalidSpecError(
            f"general.architecture {_show(arch)} is not a supported Llama-family decoder ({', '.join(GGUF_ARCHS)})"
        )
    by_name = {t.name: t for t in tensors}
    heads = _meta_int(meta, f"{arch}.attention.head_count")
    hidden = _meta_int(meta, f"{arch}.embedding_length")
    if hidden < heads and f"{arch}.attention.key_length" not in meta:
        raise InvalidSpecError(
            f"gguf metadata {arch}.embedding_length ({hidden}) is smaller than {arch}.attention.head_count: {heads}"
        )
    head_dim = _meta_int(meta, f"{arch}.attention.key_length", hidden // heads)
    rot = _meta_int(meta, f"{arch}.rope.dimension_count", head_dim)
    if rot > head_dim:
        raise InvalidSpecError(
            f"gguf metadata {arch}.rope.dimension_count must be at most the head size {head_dim}: {rot}"
        )
    gname = meta.get("general.name")
    try:
        return ModelSpec(
            name=gname if isinstance(gname, str) and gname else name,
            model_type=arch,
            hidden_size=hidden,
            num_hidden_layers=_meta_int(meta, f"{arch}.block_count"),
            num_attention_heads=heads,
            num_key_value_heads=_meta_int(meta, f"{arch}.attention.head_count_kv", heads),
            head_dim=head_dim,
            intermediate_size=_meta_int(meta, f"{arch}.feed_forward_length"),
            vocab_size=_gguf_vocab(meta, by_name, arch),
            tie_word_embeddings="output.weight" not in by_name,
            max_position_embeddings=_meta_int(meta, f"{arch}.context_length", 2048),
            attention_bias="blk.0.attn_q.bias" in by_name,
            attention_out_bias="blk.0.attn_output.bias" in by_name,
            qk_norm="blk.0.attn_q_norm.weight" in by_name,
            partial_rotary_factor=rot / head_dim,
        )
    except InvalidSpecError as e:
        if str(e).startswith("gguf"):
            raise
        raise InvalidSpecError(f"gguf metadata gives an invalid model: {e}") from None


# --- safetensors ----------------------------------------------------------------------------------


def _parse_json(raw: bytes, where: str) -> Any:
    """JSON from UTF-8 bytes; bad encoding, bad syntax and runaway nesting are one-line errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"{where}: header is not UTF-8 (byte {e.start:,})") from None
    try:
        return json.loads(text)
    except RecursionError:  # the json module recurses once per nesting level
        raise InvalidSpecError(f"{where}: JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal past sys.get_int_max_str_digits()
        raise InvalidSpecError(f"{where}: not valid JSON: {_reason(e)}") from None


def _numel_up_to(shape: list[int], limit: int) -> int:
    """Product of ``shape``, or ``limit + 1`` as soon as it passes ``limit`` (no huge products)."""
    if 0 in shape:
        return 0
    n = 1
    for s in shape:
        n *= s
        if n > limit:
            return limit + 1
    return n


def _safetensors_entry(name: str, info: Any, n_data: int, where: str) -> dict[str, Any]:
    """{name, dtype, shape, nbytes} of one header entry, validated against the data buffer size."""
    t = f"{where}: tensor {_show(name)}"
    if not isinstance(info, dict):
        raise InvalidSpecError(f"{t} must be a JSON object: {_show(info)}")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise InvalidSpecError(f"{t} has unknown dtype: {_show(dtype)}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise InvalidSpecError(f"{t} shape must be a list of non-negative integers: {_show(shape)}")
    offs = info.get("data_offsets")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
        raise InvalidSpecError(f"{t} data_offsets must be two integers: {_show(offs)}")
    start, end = offs
    if not 0 <= start <= end <= n_data:
        raise InvalidSpecError(
            f"{t} data_offsets {_show(offs)} must satisfy 0 <= start <= end <= {n_data:,} (the data buffer's size)"
        )
    numel = _numel_up_to(shape, n_data * 8)  # every dtype takes >= 4 bits: more elements cannot fit
    if numel > n_data * 8:
        raise InvalidSpecError(f"{t} shape {_show(shape)} needs more than the {n_data:,}-byte data buffer")
    bits = numel * SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8:
        raise InvalidSpecError(f"{t} of shape {_show(shape)} and dtype {dtype} is not a whole number of bytes")
    if end - start != bits // 8:
        raise InvalidSpecError(
            f"{t} data_offsets {_show(offs)} hold {end - start:,} bytes but shape "
            f"{_show(shape)} of {dtype} needs {bits // 8:,}"
        )
    return {"name": name, "dtype": dtype, "shape": tuple(shape), "nbytes": end - start}


def _read_safetensors_file(p: Path) -> list[dict[str, Any]]:
    where = f"safetensors file {_show(str(p), 200)}"
    f, size = _open_regular(p, "safetensors")
    try:
        with f:
            if size < 8:
                raise InvalidSpecError(f"{where}: not a safetensors file (only {size} bytes)")
            n = struct.unpack("<Q", f.read(8))[0]
            if n > MAX_SAFETENSORS_HEADER:
                raise InvalidSpecError(
                    f"{where}: header length {n:,} exceeds 100 MB ({MAX_SAFETENSORS_HEADER:,} bytes)"
                )
            if 8 + n > size:
                raise InvalidSpecError(f"{where}: header length {n:,} runs past the end of the file ({size:,} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise InvalidSpecError(f"cannot read {where}: {_reason(e)}") from None
    if len(raw) != n:
        raise InvalidSpecError(f"{where}: file shrank while reading its {n:,}-byte header")
    if not raw.startswith(b"{"):  # the format requires the header to begin with '{'
        raise InvalidSpecError(f"{where}: header must be a JSON object starting with '{{': {_show(raw[:20])}")
    header = _parse_json(raw, where)
    if not isinstance(header, dict):
        raise InvalidSpecError(f"{where}: header must be a JSON object: {_show(header)}")
    n_data = size - 8 - n
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise InvalidSpecError(f"{where}: __metadata__ must be an object of string values: {_show(info)}")
            continue
        out.append(_safetensors_entry(name, info, n_data, where))
    if not out:
        raise InvalidSpecError(f"{where}: holds no tensors")
    return out


def _read_safetensors_index(p: Path) -> list[dict[str, Any]]:
    where = f"safetensors index {_show(str(p), 200)}"
    f, size = _open_regular(p, "safetensors index")
    if size > MAX_SAFETENSORS_INDEX:
        f.close()
        raise InvalidSpecError(f"{where}: {size:,} bytes exceeds {MAX_SAFETENSORS_INDEX:,}")
    try:
        with f:
            raw = f.read(MAX_SAFETENSORS_INDEX + 1)
    except OSError as e:
        raise InvalidSpecError(f"cannot read {where}: {_reason(e)}") from None
    if len(raw) > MAX_SAFETENSORS_INDEX:
        raise InvalidSpecError(f"{where}: grew past {MAX_SAFETENSORS_INDEX:,} bytes while reading")
    index = _parse_json(raw, where)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise InvalidSpecError(f"{where}: weight_map must be a non-empty JSON object: {_show(wm)}")
    shards: set[str] = set()
    for tensor, shard in wm.items():
        if not isinstance(shard, str):
            raise InvalidSpecError(f"{where}: weight_map[{_show(tensor)}] must be a file name: {_show(shard)}")
        if not shard or shard in (".", "..") or any(c in shard for c in "/\\\0"):
            raise InvalidSpecError(f"{where}: shard {_show(shard)} must be a plain file name in the index's folder")
        shards.add(shard)
        if len(shards) > MAX_SAFETENSORS_SHARDS:
            raise InvalidSpecError(f"{where}: names more than {MAX_SAFETENSORS_SHARDS:,} shards")
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for shard in sorted(shards):
        sp = p.parent / shard
        if not sp.exists():
            raise InvalidSpecError(f"{where}: shard {_show(shard)} is missing from {_show(str(p.parent), 200)}")
        for entry in _read_safetensors_file(sp):
            if entry["name"] in seen:
                raise InvalidSpecError(
                    f"{where}: tensor {_show(entry['name'])} is in both {_show(seen[entry['name']])} and {_show(shard)}"
                )
            seen[entry["name"]] = shard
            out.append(entry)
    return out


def read_safetensors_header(path: str | Path) -> list[dict[str, Any]]:
    """[{name, dtype, shape, nbytes}] from one .safetensors file, or every shard named by a
    ``model.safetensors.index.json`` (or a folder holding one, or ``model.safetensors``).
    Reads only the headers; raises ``InvalidSpecError`` (one line) for anything malformed."""
    p = Path(path)
    try:
        if p.is_dir():
            if (p / SAFETENSORS_INDEX).exists():
                p = p / SAFETENSORS_INDEX
            elif (p / SAFETENSORS_SINGLE).exists():
                p = p / SAFETENSORS_SINGLE
            else:
                raise InvalidSpecError(
                    f"folder {_show(str(path), 200)} holds neither {SAFETENSORS_INDEX} nor {SAFETENSORS_SINGLE}"
                )
        if p.name.endswith(".index.json"):
            return _read_safetensors_index(p)
        return _read_safetensors_file(p)
    except OSError as e:  # e.g. a folder without search permission, probed by exists()
        raise InvalidSpecError(f"cannot read safetensors path {_show(str(p), 200)}: {_reason(e)}") from None


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

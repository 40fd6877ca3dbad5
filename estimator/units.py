"""Byte units, integer rounding, and parsing of user-typed sizes and contexts.

Every size in this package is an ``int`` of bytes. GiB means 2**30 and is always
labelled "GiB"; GB means 10**9. Formatting helpers live here so that the CLI and the
app share one definition; the math never formats.
"""

from __future__ import annotations

import re

from .errors import InvalidSpecError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
KB = 10**3
MB = 10**6
GB = 10**9

_SIZE_UNITS = {"": 1, "b": 1, "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40,
               "kb": KB, "mb": MB, "gb": GB, "tb": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_CONTEXT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmM]?)\s*$")


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``."""
    return cdiv(n, multiple) * multiple


def parse_size(text: str | int, field: str = "size") -> int:
    """Parse "24GiB", "80 GB", "512MiB", "1e9"-free plain byte counts. Returns bytes.

    Accepted units: none or B (bytes), KiB/MiB/GiB/TiB (binary), KB/MB/GB/TB (SI).
    """
    if isinstance(text, bool):
        raise InvalidSpecError(f"{field} must be a size like 24GiB, 80GB or 25769803776: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _SIZE_UNITS:
            raise InvalidSpecError(
                f"{field} must be a size like 24GiB, 80GB, 512MiB or plain bytes: {text!r}")
        number = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
        value = int(round(number * _SIZE_UNITS[unit]))
    if value <= 0:
        raise InvalidSpecError(f"{field} must be > 0 bytes: {text!r}")
    return value


def parse_context(text: str | int, field: str = "context") -> int:
    """Parse a token count: 8192, "8k", "128K", "1.5k", "1M". k means 1024 tokens."""
    if isinstance(text, bool):
        raise InvalidSpecError(f"{field} must be a token count like 8192 or 8k: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _CONTEXT_RE.match(str(text))
        if not m:
            raise InvalidSpecError(f"{field} must be a token count like 8192, 8k or 128K: {text!r}")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        number = float(m.group(1)) * scale
        if number != int(number):
            raise InvalidSpecError(f"{field} must be a whole number of tokens: {text!r}")
        value = int(number)
    if value < 1:
        raise InvalidSpecError(f"{field} must be >= 1 token: {text!r}")
    return value


def format_gib(n: int, digits: int = 2) -> str:
    """``format_gib(6425499648) == '5.98 GiB'``."""
    return f"{n / GiB:,.{digits}f} GiB"


def format_bytes(n: int) -> str:
    """Human size with a binary unit (B, KiB, MiB, GiB), two decimals."""
    sign = "-" if n < 0 else ""
    a = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if a >= size:
            return f"{sign}{a / size:,.2f} {unit}"
    return f"{sign}{a} B"


def format_context(tokens: int) -> str:
    """8192 -> '8K', 131072 -> '128K', 1000 -> '1000'."""
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)

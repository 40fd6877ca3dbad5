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

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1 << 40,
    "kb": KB,
    "mb": MB,
    "gb": GB,
    "tb": 10**12,
}
# ASCII digits only (Python's int() and str.isdigit() also take superscripts and other scripts'
# digits), at most 18 digits before and after the point, so no text can make a huge number.
_NUMBER = r"([0-9]{1,18}(?:_[0-9]{3})*(?:,[0-9]{3})*)(?:\.([0-9]{0,18}))?"
_SIZE_RE = re.compile(r"^[ \t]*" + _NUMBER + r"[ \t]*([a-zA-Z]{0,3})[ \t]*$", re.ASCII)
_CONTEXT_RE = re.compile(r"^[ \t]*" + _NUMBER + r"[ \t]*([kKmM]?)[ \t]*$", re.ASCII)
_INT_RE = re.compile(r"^[ \t]*([+-]?[0-9]{1,18})[ \t]*$", re.ASCII)
MAX_SIZE_BYTES = 1 << 60  # 1 EiB: far above any GPU, far below float and int64 trouble
MAX_TOKENS = 1 << 40  # far above any model window (the estimator refuses past the window)
MAX_NUMBER_TEXT = 64  # characters: "1_000_000_000 tokens" fits many times over


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages that echo user input."""
    try:
        r = repr(value)
    except RecursionError:  # a hostile, deeply nested JSON value
        r = f"<deeply nested {type(value).__name__}>"
    return r if len(r) <= limit else r[:limit] + "..."


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``, ``\\x00``,
    ``\\u2028``), so that an error message that echoes user input stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``."""
    return cdiv(n, multiple) * multiple


def _scaled(whole: str, frac: str | None, scale: int) -> tuple[int, int]:
    """(numerator, denominator) of ``whole.frac x scale``, exactly (no floats)."""
    digits = whole.replace("_", "").replace(",", "")
    frac = frac or ""
    return int(digits + frac) * scale, 10 ** len(frac)


def check_int(value: object, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` itself if it is an int (not a bool) within [lo, hi]; else InvalidSpecError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(f"{field} must be an integer: {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = (
            f"between {lo:,} and {hi:,}"
            if lo is not None and hi is not None
            else (f">= {lo:,}" if lo is not None else f"at most {hi:,}")
        )
        raise InvalidSpecError(f"{field} must be {rng}: {value!r}")
    return value


def parse_int(text: str | int, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """A plain integer from an int or ASCII text ("12", "-1"); bools and non-ASCII digits are
    refused. Raises InvalidSpecError naming ``field`` and the value."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise InvalidSpecError(f"{field} must be an integer: {shown(text)}")
    if isinstance(text, int):
        return check_int(text, field, lo, hi)
    m = _INT_RE.match(text) if len(text) <= MAX_NUMBER_TEXT else None
    if not m:
        raise InvalidSpecError(f"{field} must be an integer: {shown(text)}")
    value = int(m.group(1))
    if lo is not None and value < lo:
        raise InvalidSpecError(f"{field} must be >= {lo:,}: {shown(text)}")
    if hi is not None and value > hi:
        raise InvalidSpecError(f"{field} must be at most {hi:,}: {shown(text)}")
    return value


def parse_size(text: str | int, field: str = "size") -> int:
    """Parse "24GiB", "80 GB", "512MiB", "1.5GiB" or plain bytes. Returns int bytes (rounded).

    Accepted units: none or B (bytes), KiB/MiB/GiB/TiB (binary), KB/MB/GB/TB (SI); at most
    ``MAX_SIZE_BYTES``.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise InvalidSpecError(f"{field} must be a size like 24GiB, 80GB or 25769803776: {shown(text)}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(text) if len(text) <= MAX_NUMBER_TEXT else None
        unit = m.group(3).lower() if m else None
        if not m or unit not in _SIZE_UNITS:
            raise InvalidSpecError(f"{field} must be a size like 24GiB, 80GB, 512MiB or plain bytes: {shown(text)}")
        num, den = _scaled(m.group(1), m.group(2), _SIZE_UNITS[unit])
        value = (2 * num + den) // (2 * den)  # round half up
    if value <= 0:
        raise InvalidSpecError(f"{field} must be > 0 bytes: {shown(text)}")
    if value > MAX_SIZE_BYTES:
        raise InvalidSpecError(f"{field} must be at most {MAX_SIZE_BYTES:,} bytes: {shown(text)}")
    return value


def parse_context(text: str | int, field: str = "context") -> int:
    """Parse a token count: 8192, "8k", "128K", "1.5k", "1M", "100,000". k means 1024 tokens."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise InvalidSpecError(f"{field} must be a token count like 8192 or 8k: {shown(text)}")
    if isinstance(text, int):
        value = text
    else:
        m = _CONTEXT_RE.match(text) if len(text) <= MAX_NUMBER_TEXT else None
        if not m:
            raise InvalidSpecError(f"{field} must be a token count like 8192, 8k or 128K: {shown(text)}")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(3).lower()]
        num, den = _scaled(m.group(1), m.group(2), scale)
        if num % den:
            raise InvalidSpecError(f"{field} must be a whole number of tokens: {shown(text)}")
        value = num // den
    if value < 1:
        raise InvalidSpecError(f"{field} must be >= 1 token: {shown(text)}")
    if value > MAX_TOKENS:
        raise InvalidSpecError(f"{field} must be at most {MAX_TOKENS:,} tokens: {shown(text)}")
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

"""Check a real engine log against the estimate: what the log states, what we predict, the difference
and the mechanism that owns each term.

``check_log(text, model=..., gpu=...)`` recognises the log (vLLM V0/V1 startup logs, llama.cpp /
Ollama / llama-cpp-python logs, the runtime's own JSONL), infers every setting the log states,
asks (``MissingSetting``) only for what it lacks, and returns a ``CheckResult``: one ``Term`` per
logged quantity with the logged and predicted bytes. A text with nothing recognisable raises
``LogNotRecognised``. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSpecError
from ..units import GiB

MAX_LOG_BYTES = 8 << 20  # a startup log is a few hundred KB at most; refuse larger input


class LogNotRecognised(InvalidSpecError):
    """Nothing in the text is a line this checker knows."""


class MissingSetting(InvalidSpecError):
    """The log does not state a setting the estimate needs; the message names it and the option."""


@dataclass(frozen=True, slots=True)
class Term:
    """One logged quantity against its prediction."""

    name: str  # e.g. "weights", "kv_cache", "activation_peak", "non_torch", "kv_blocks"
    logged: int | float | None  # bytes for *_bytes terms, else the unit in ``unit``
    predicted: int | float | None
    unit: str = "bytes"  # "bytes", "blocks", "tokens", "x" (concurrency)
    owner: str = ""  # the mechanism (estimator function / engine behaviour) that owns the prediction
    line: str = ""  # the log line it was read from (trimmed)
    # The prediction's range where derivation stops (None: an exact term, low = high = predicted), and
    # the slack of the log's printing (half a unit of its last digit) the logged value stands within.
    low: int | float | None = None
    high: int | float | None = None
    slack: float = 0.0

    @property
    def within_range(self) -> bool | None:
        """Whether the logged value lies in [low, high] (within the print's slack); None without a
        range or a logged value."""
        if self.logged is None or self.low is None or self.high is None:
            return None
        return self.low - self.slack <= self.logged <= self.high + self.slack

    @property
    def difference(self) -> int | float | None:
        if self.logged is None or self.predicted is None:
            return None
        return self.predicted - self.logged

    @property
    def rel_error(self) -> float | None:
        if self.logged is None or self.logged == 0 or self.predicted is None:
            return None
        return (self.predicted - self.logged) / self.logged

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logged": self.logged,
            "predicted": self.predicted,
            "unit": self.unit,
            "difference": self.difference,
            "rel_error": self.rel_error,
            "owner": self.owner,
            "line": self.line,
            "low": self.low,
            "high": self.high,
            "within_range": self.within_range,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a log says, what the estimator predicts for the same settings, term by term."""

    engine: str  # "vllm", "llama.cpp", "runtime"
    engine_version: str | None  # as the log states it, else None
    inferred: Mapping[str, Any]  # every setting read from the log (and the options given)
    terms: tuple[Term, ...]
    notes: tuple[str, ...] = ()  # e.g. which release the prediction modelled, what drifted
    unparsed_lines: int = field(default=0)  # lines ignored (not recognised)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "inferred": dict(self.inferred),
            "terms": [t.to_dict() for t in self.terms],
            "notes": list(self.notes),
            "unparsed_lines": self.unparsed_lines,
        }


def format_value(v: float | None, unit: str) -> str:
    """A term's value as text: bytes in GiB (3 decimals), concurrency as "28.41x", else the count
    and its unit; "-" when absent. Shared by the CLI and the app's Check page."""
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v / GiB:,.3f} GiB"
    return f"{v:,.2f}{unit}" if unit == "x" else f"{v:,.0f} {unit}"


def format_range(low: float, high: float, unit: str) -> str:
    """A term's range as text, "0.131-0.479 GiB", "7,162-7,366 blocks", "4.26-4.32x"."""
    if unit == "bytes":
        return f"{low / GiB:,.3f}-{high / GiB:,.3f} GiB"
    return f"{low:,.2f}-{high:,.2f}x" if unit == "x" else f"{low:,.0f}-{high:,.0f} {unit}"


# Engine checkers register here: (name, detect(text) -> bool, check(text, **options) -> CheckResult).
Checker = tuple[str, Callable[[str], bool], Callable[..., CheckResult]]


def _checkers() -> list[Checker]:
    out: list[Checker] = []
    try:
        from . import vllm_log

        out.append(("vllm", vllm_log.detect, vllm_log.check))
    except ImportError:  # the module is being written
        pass
    try:
        from . import llamacpp_log

        out.append(("llama.cpp", llamacpp_log.detect, llamacpp_log.check))
    except ImportError:
        pass
    from . import runtime_log

    out.append(("runtime", runtime_log.detect, runtime_log.check))
    return out


def check_log(text: str | bytes, **options: Any) -> CheckResult:
    """Recognise the log and check it (options: ``model``, ``gpu``, ``gpu_memory_bytes``, ... for what
    the log does not state)."""
    if isinstance(text, bytes):
        if len(text) > MAX_LOG_BYTES:
            raise InvalidSpecError(f"log must be under {MAX_LOG_BYTES >> 20} MiB: got {len(text):,} bytes")
        text = text.decode("utf-8", errors="replace")
    if len(text) > MAX_LOG_BYTES:
        raise InvalidSpecError(f"log must be under {MAX_LOG_BYTES >> 20} MiB: got {len(text):,} characters")
    for _name, detect, check in _checkers():
        if detect(text):
            return check(text, **options)
    raise LogNotRecognised("log: no vLLM, llama.cpp / Ollama or runtime JSONL line recognised")

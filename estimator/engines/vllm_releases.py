"""vLLM releases as inputs: which memory-relevant behaviour holds in which release range.

``BEHAVIOURS`` is the one table: each entry is a behaviour, the first and last release it holds in
(``None``: open), its value and where it was read. ``resolve_release(text)`` turns ``--vllm-version``
("0.6.4", "v0.8.5", "0.11", or the accountings "v0" / "v1" kept as they were) into a ``Release``:
the accounting ``estimate_vllm(version=...)`` models and the flags it takes
(``cudagraph_in_budget``). The log checker (``estimator.check.vllm_log``) uses the same resolver
for the release a log states.

Sources (vllm-project/vllm, pull requests with their merge date; the first release holding a change
is the next tag after the merge):

- PR #2031 (Dec 2023, 0.2.5): the profiler charges everything on the device torch did not allocate
  (``torch.cuda.mem_get_info`` after the profile run) -- the "v0-0.6" accounting.
- PR #10511 "[core] overhaul memory profiling" (merged Dec 2024, log excerpts dated 12-13):
  ``memory_profiling`` in ``vllm/utils`` takes a baseline snapshot before the model loads, so the
  CUDA context and other processes are outside the budget -- the "v0" accounting. First release
  0.6.5 (the checker's fixtures: 0.6.4 prints the device-wide form, later V0 the summary form).
- V1 default: ``VLLM_USE_V1`` defaults to 1 from 0.8.0 (docs/source/getting_started/v1_user_guide.md
  "V1 is now enabled by default", PR #15064, March 2025; VLLM_USE_V1=0 still selects V0).
- V0 removed: 0.11.0 ("the V0 engine has been completely removed from vLLM starting with version
  0.11.0", huggingface/optimum-neuron PR #1027; vLLM PRs #25033 / #25114 "[V0 Deprecation]").
- Sampler in the profile run: V0 ``_dummy_run`` samples (top-k/top-p over the vocabulary); V1's
  ``_dummy_sampler_run`` in ``profile_run`` came with PRs #13594 / #14508 (Feb-Mar 2025, 0.8.0).
- CUDA graphs inside the budget: PR #30515 "[UX][Startup] Account for CUDA graphs during memory
  profiling" (merged Dec 2025, off by default behind ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``);
  on by default from 0.21.0 (vLLM 0.27.1 logs: "CUDA graph memory profiling is enabled (default since
  v0.21.0)", gpustack/runner PR #251). Before, V1 captured graphs after the KV allocation, outside
  the budget.
- Batch defaults (``EngineArgs.get_batch_defaults``): V1 1024 seqs / 8192-16384 tokens on GPUs of
  >= 70 GiB that are not A100 (PR #17073, Apr 2025: by memory; PR #17885, May 2025: A100 excluded;
  first release with both 0.9.0), else 256 / 2048-8192. V0: 256 seqs, max(max_model_len, 2048) tokens,
  chunked prefill above 32K with 2048 tokens (512 up to 0.6.x).
- gpu_memory_utilization: 0.9 in every release (``CacheConfig`` / ``EngineArgs``).

Not confirmed, today's behaviour kept:

- V1 before PR #19312 (June 2025, "[V1] Reuse V0's memory_profiling util"; first release 0.9.2 or
  0.10.0, not confirmed) charged other processes and the CUDA context as non-torch memory, like
  "v0-0.6"; modelled here as "v1" (the baseline snapshot).
- V1 0.8.0-0.8.x batch defaults (1024 seqs on every GPU until PR #16158, 256 off H100/H200 until
  #17073 / #17885): today's rule is applied.
- V1 before 0.8.0 (opt-in, experimental from late 2024; its first release is not confirmed, 0.6.x is
  accepted) is modelled as 0.8.0, the sampler in its profile run included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownNameError

ReleaseTuple = tuple[int, int, int]

OLDEST_RELEASE = "0.2.0"
NEWEST_RELEASE = "0.29.0"  # the newest release seen in public sources (OpenRLHF PR #1328, Sept 2026)
ACCOUNTING_NAMES = ("v0", "v1")  # --vllm-version names kept from before releases were inputs


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One memory-relevant behaviour of vLLM: ``value`` holds from release ``first`` to ``last``
    (inclusive; ``None`` = open) on ``engine`` ("v0", "v1" or "any")."""

    name: str
    engine: str
    first: ReleaseTuple | None
    last: ReleaseTuple | None
    value: Any
    source: str

    def holds(self, rel: ReleaseTuple, engine: str) -> bool:
        return (
            self.engine in ("any", engine)
            and (self.first is None or rel >= self.first)
            and (self.last is None or rel <= self.last)
        )


BEHAVIOURS: tuple[Behaviour, ...] = (
    # profile-run accounting
    Behaviour(
        "accounting", "v0", (0, 2, 0), (0, 6, 4), "v0-0.6", "vllm/worker/worker.py mem_get_info, PR #2031 (0.2.5)"
    ),
    Behaviour(
        "accounting", "v0", (0, 6, 5), (0, 10, 99), "v0", "vllm/utils memory_profiling baseline, PR #10511 (0.6.5)"
    ),
    Behaviour("accounting", "v1", (0, 6, 0), None, "v1", "vllm/v1/worker/gpu_worker.py determine_available_memory"),
    # the engine a release runs without VLLM_USE_V1
    Behaviour("default_engine", "any", (0, 2, 0), (0, 7, 99), "v0", "V1 opt-in (VLLM_USE_V1=1) in 0.7.x"),
    Behaviour("default_engine", "any", (0, 8, 0), None, "v1", "vllm/envs.py VLLM_USE_V1 default 1, 0.8.0 (PR #15064)"),
    # engines a release has
    Behaviour("has_engine", "v0", (0, 2, 0), (0, 10, 99), True, "V0 removed in 0.11.0 (PRs #25033, #25114)"),
    Behaviour(
        "has_engine", "v1", (0, 6, 0), None, True, "vllm/v1, opt-in until 0.8.0; its first release not confirmed"
    ),
    # the sampler (top-k/top-p sort over [num_reqs, vocab]) in the profile run
    Behaviour("sampler_in_profile", "v0", (0, 2, 0), (0, 10, 99), True, "vllm/worker/model_runner.py _dummy_run"),
    Behaviour("sampler_in_profile", "v1", (0, 6, 0), None, True, "gpu_model_runner _dummy_sampler_run, #13594/#14508"),
    # CUDA-graph memory subtracted from the KV budget (V1); V0 always captured after the KV allocation
    Behaviour("cudagraph_in_budget", "v0", (0, 2, 0), (0, 10, 99), False, "V0 capture_model after KV allocation"),
    Behaviour("cudagraph_in_budget", "v1", (0, 6, 0), (0, 20, 99), False, "V1 captures after KV allocation"),
    Behaviour(
        "cudagraph_in_budget",
        "v1",
        (0, 21, 0),
        None,
        True,
        "PR #30515; VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS default on since v0.21.0 (gpu_worker.py log)",
    ),
    # which decode batch sizes are captured as CUDA graphs (``vllm.capture_sizes``): the count sets the
    # high end of the CUDA-graph range (each graph's cudaGraphExec state)
    Behaviour(
        "cudagraph_capture_sizes",
        "v0",
        (0, 2, 0),
        (0, 10, 99),
        "v0",
        "[1, 2, 4] + 8k up to 256, capped at max_num_seqs: vllm/worker/model_runner.py _BATCH_SIZES_TO_CAPTURE",
    ),
    Behaviour(
        "cudagraph_capture_sizes",
        "v1",
        (0, 6, 0),
        (0, 9, 99),
        "v1-step8-512",
        "[1, 2, 4] + 8k up to 512: SchedulerConfig.cuda_graph_sizes default [512] (PR #18698 describes it), "
        "until PR #20062",
    ),
    Behaviour(
        "cudagraph_capture_sizes",
        "v1",
        (0, 10, 0),
        (0, 11, 99),
        "v1-step8",
        "[1, 2, 4] + 8k up to min(2 x max_num_seqs, 512): PR #20062 (June 2025) cuda_graph_sizes default "
        "[min(max_num_seqs * 2, 512)]; the step-16 list's "
        "first release is not confirmed, so 0.11.x keeps the longer step-8 list (a wider high end)",
    ),
    Behaviour(
        "cudagraph_capture_sizes",
        "v1",
        (0, 12, 0),
        None,
        "v1-step16",
        "[1, 2, 4] + 8k below 256 + 16k from 256, up to min(2 x max_num_seqs, 512): vllm/config/vllm.py "
        "_set_cudagraph_sizes; 51 piecewise graphs in the 0.15.1 public log "
        "(tests/check/fixtures/vllm/v1-0.15.1-llama-3.1-8b-rtx6000ada.log)",
    ),
    Behaviour(
        "cudagraph_full_decode", "any", (0, 2, 0), (0, 10, 99), False, "piecewise graphs only (V1), V0 full graphs"
    ),
    Behaviour(
        "cudagraph_full_decode",
        "v1",
        (0, 11, 0),
        None,
        True,
        "PR #25444: default cudagraph_mode FULL_AND_PIECEWISE, full graphs for uniform decode batches up to "
        "max_num_seqs on top of the piecewise ones (0.15.1 log: 51 piecewise + 35 full)",
    ),
    # defaults
    Behaviour("gpu_memory_utilization", "any", (0, 2, 0), None, 0.9, "CacheConfig / EngineArgs default 0.9"),
    Behaviour(
        "batch_defaults",
        "v0",
        (0, 2, 0),
        (0, 6, 99),
        "256 seqs; max(len, 2048) tokens, 512 with chunked prefill above 32K",
        "vllm/engine/arg_utils.py (0.6.x)",
    ),
    Behaviour(
        "batch_defaults",
        "v0",
        (0, 7, 0),
        (0, 10, 99),
        "256 seqs; max(len, 2048) tokens, 2048 with chunked prefill above 32K",
        "vllm/engine/arg_utils.py (0.7+)",
    ),
    Behaviour(
        "batch_defaults",
        "v1",
        (0, 6, 0),
        None,
        "1024 seqs / 8192 (API) 16384 (LLM) tokens on >= 70 GiB non-A100 GPUs, else 256 / 2048 / 8192",
        "EngineArgs.get_batch_defaults, PRs #17073 / #17885 (0.9.0); 0.8.x differs, not modelled",
    ),
)


@dataclass(frozen=True, slots=True)
class Release:
    """A vLLM release (or an accounting name) resolved to what ``estimate_vllm`` models.

    ``name``: the release ("0.8.5") or the accounting name given ("v0", "v1"); ``version`` the
    tuple (None for an accounting name); ``engine`` "v0" / "v1"; ``accounting`` estimate_vllm's
    ``version=``; ``cudagraph_in_budget`` its ``cudagraph_in_budget=`` (None: the accounting's
    default); ``notes`` the behaviours and where they were read."""

    name: str
    version: ReleaseTuple | None
    engine: str
    accounting: str
    cudagraph_in_budget: bool | None
    sampler_in_profile: bool
    gpu_memory_utilization: float
    notes: tuple[str, ...]

    def estimate_kw(self) -> dict[str, Any]:
        """``estimate_vllm`` keywords: version, cudagraph_in_budget and release."""
        return {"version": self.accounting, "cudagraph_in_budget": self.cudagraph_in_budget, "release": self.name}


_RELEASE = re.compile(
    r"\s*v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?(?:\.\d{1,3})?(?:[.+\-]?(?:rc|dev|post)\S*|\+\S*)?\s*", re.ASCII
)


def parse_release(text: str | None) -> ReleaseTuple | None:
    """(major, minor, patch) of a release string ("0.8.5", "v0.10.1rc2.dev310+g4f35be10a", "0.11");
    a four-part hotfix release (0.10.1.1 on PyPI) is its base release's; None when it is not one."""
    m = _RELEASE.fullmatch(text or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _value(name: str, rel: ReleaseTuple, engine: str) -> Behaviour | None:
    for b in BEHAVIOURS:
        if b.name == name and b.holds(rel, engine):
            return b
    return None


def _error(flag: str, text: str, why: str) -> UnknownNameError:
    return UnknownNameError(
        f"{flag} must be v0, v1 or a vLLM release {OLDEST_RELEASE} to {NEWEST_RELEASE} (e.g. 0.8.5): {text!r} ({why})"
    )


def resolve_release(text: str, engine: str | None = None, *, flag: str = "--vllm-version") -> Release:
    """The accounting and behaviour flags of a vLLM release, or of the accounting names "v0" / "v1".

    ``engine`` ("v0" / "v1", case-insensitive "V0"/"V1" too): the engine run, when not the release's
    default (VLLM_USE_V1=0 on 0.8-0.10). Releases after ``NEWEST_RELEASE`` take the newest
    behaviour. Raises ``UnknownNameError`` (one line naming ``flag`` and the value) for anything
    else, a release older than ``OLDEST_RELEASE``, or an engine the release does not have."""
    raw = str(text)
    t = raw.strip().lower()
    if engine is not None:
        engine = engine.strip().lower()
        if engine not in ("v0", "v1"):
            raise _error(flag, raw, f"engine must be v0 or v1, not {engine!r}")
    if t in ACCOUNTING_NAMES:
        if engine is not None and engine != t:
            raise _error(flag, raw, f"the {t} accounting is not the {engine} engine")
        return Release(
            name=t,
            version=None,
            engine=t,
            accounting=t,
            cudagraph_in_budget=None,
            sampler_in_profile=True,
            gpu_memory_utilization=0.9,
            notes=(f"accounting {t!r} as given (no release: today's {t} behaviour)",),
        )
    rel = parse_release(t)
    if rel is None:
        raise _error(flag, raw, "not a release")
    if rel < parse_release(OLDEST_RELEASE):  # type: ignore[operator]
        raise _error(flag, raw, f"older than {OLDEST_RELEASE}, the oldest release modelled")
    default_engine = _value("default_engine", rel, "any")
    assert default_engine is not None
    eng = engine or str(default_engine.value)
    if _value("has_engine", rel, eng) is None:
        has = [e for e in ("v0", "v1") if _value("has_engine", rel, e) is not None]
        raise _error(flag, raw, f"release {'.'.join(map(str, rel))} has no {eng.upper()} engine, only {has[0].upper()}")
    picked = {n: _value(n, rel, eng) for n in ("accounting", "cudagraph_in_budget", "sampler_in_profile")}
    util = _value("gpu_memory_utilization", rel, eng)
    batch = _value("batch_defaults", rel, eng)
    name = ".".join(map(str, rel))
    notes = [f"vLLM {name}, {eng.upper()} engine ({'default' if engine is None else 'as stated'})"]
    for b in (*picked.values(), batch):
        assert b is not None
        notes.append(f"{b.name} = {b.value!r} ({b.source})")
    acc, graphs, sampler = (picked[n] for n in ("accounting", "cudagraph_in_budget", "sampler_in_profile"))
    assert acc is not None and graphs is not None and sampler is not None and util is not None
    return Release(
        name=name,
        version=rel,
        engine=eng,
        accounting=str(acc.value),
        cudagraph_in_budget=bool(graphs.value),
        sampler_in_profile=bool(sampler.value),
        gpu_memory_utilization=float(util.value),
        notes=tuple(notes),
    )


def graph_capture(release: str | None, engine: str) -> tuple[str, bool]:
    """(the capture-size rule, whether full decode graphs are captured too) of ``release`` for
    ``engine`` ("v0" / "v1"); the newest release's for None, an accounting name or an unparsed text."""
    rel = parse_release(release) if release not in (None, *ACCOUNTING_NAMES) else None
    rel = rel or parse_release(NEWEST_RELEASE)
    assert rel is not None
    sizes, full = _value("cudagraph_capture_sizes", rel, engine), _value("cudagraph_full_decode", rel, engine)
    return (str(sizes.value) if sizes else "v0", bool(full and full.value))  # no V0 in the newest: its last rule


def release_names() -> tuple[str, ...]:
    """The release boundaries the table names (each a first release of a behaviour), oldest first."""
    firsts = {b.first for b in BEHAVIOURS if b.first is not None}
    return tuple(".".join(map(str, r)) for r in sorted(firsts))


__all__ = [
    "ACCOUNTING_NAMES",
    "BEHAVIOURS",
    "NEWEST_RELEASE",
    "OLDEST_RELEASE",
    "Behaviour",
    "Release",
    "graph_capture",
    "parse_release",
    "release_names",
    "resolve_release",
]

"""A vLLM startup log (V0 or V1, releases 0.5/0.6 to the current V1) against ``estimator.engines.vllm``.

``detect(text)`` looks for lines only vLLM prints. ``check(text, model=..., gpu=..., gpu_memory_bytes=...)``
reads every setting the log states (engine V0/V1 and release, model, dtype, max_model_len, TP/PP,
quantization, KV dtype, enforce_eager, gpu_memory_utilization, total GPU memory, max_num_seqs,
max_num_batched_tokens), raises ``MissingSetting`` for the one setting the prediction needs and the log
lacks, and predicts with ``estimate_vllm`` under the accounting of the release the log states:

- ``"v0-0.6"``: releases up to 0.6.4 (device-wide profiler; the "Memory profiling results:
  total_gpu_memory=... initial_memory_usage=..." line), unless the log prints the newer summary.
- ``"v0"``: the V0 engine from 0.6.5 (baseline snapshot: "model weights take X GiB; non_torch_memory
  takes ...") to 0.10.
- ``"v1"``: the V1 engine ("Initializing a V1 LLM engine", "Available KV cache memory"); releases before
  0.21 captured CUDA graphs after the KV allocation, so the graphs are kept outside the budget there.

Lines the checker reads (each wording seen in public logs of the release named):

- banner: "Initializing an LLM engine (v0.6.4.post1)", "Initializing a V0 LLM engine (v0.8.2)",
  "Initializing a V1 LLM engine (v0.10.2)", "vLLM API server version 0.8.5", and on the same engine line
  model=..., dtype=..., max_seq_len=..., tensor_parallel_size=..., pipeline_parallel_size=...,
  quantization=..., kv_cache_dtype=..., enforce_eager=..., compilation_config cudagraph_capture_sizes;
- "non-default args: {...}" / "args: Namespace(...)", "Using max model len N", "Chunked prefill is enabled
  with max_num_batched_tokens=N";
- "Loading model weights took X GB" (<= 0.7) / "Model loading took X GB|GiB" (printed "GB", meaning GiB);
- "Memory profiling results: total_gpu_memory=... initial_memory_usage=... peak_torch_memory=...
  memory_usage_post_profile=... non_torch_memory=... kv_cache_size=... gpu_memory_utilization=..." (0.6.x),
  the multi-line "Memory profiling results:" table (0.6.5), "the current vLLM instance can use
  total_gpu_memory (T GiB) x gpu_memory_utilization (U) = R GiB" and "model weights take X GiB;
  non_torch_memory takes Y GiB; PyTorch activation peak memory takes Z GiB; the rest of the memory
  reserved for KV Cache is W GiB" (0.7-0.10), V1's "Free memory on device (F/T GiB) on startup. Desired
  GPU memory utilization is (U, R GiB). Actual usage is X GiB for weight, Z GiB for peak activation,
  Y GiB for non-torch memory, and G GiB for CUDAGraph memory";
- "Available KV cache memory: X GiB", "GPU KV cache size: N tokens", "# GPU blocks: N, # CPU blocks: M"
  ("# cuda blocks" in 0.8), "num_gpu_blocks is: N", "Maximum concurrency for L tokens per request: Cx",
  "Graph capturing finished in S secs, took X GiB" (alone, a graph-only excerpt is still a vLLM log);
- V1 0.11+: the banner's "version 0.15.1", the Python-dict compilation_config ('cudagraph_capture_sizes': [...],
  'max_cudagraph_capture_size': 512, 'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>), the capture
  progress bars ("Capturing CUDA graphs (decode, FULL): 100%|...| 35/35"; V0 "Capturing CUDA graph shapes"), the
  DEBUG lines "Initial free memory: F GiB; Requested memory: U (util), R GiB" and "Total non KV cache memory: ...;
  torch peak memory increase: A; non-torch forward increase memory: N; weights memory: W", and where the CUDA-graph
  estimate of PR #30515 runs (opt-in from Dec 2025, default from 0.21) "Estimated CUDA graph memory: X GiB total" /
  "CUDA graph pool memory: X GiB (actual), Y GiB (estimated)".

A four-part hotfix release (0.10.1.1) is modelled as its base release. The notes say where the logged non-torch and
CUDA-graph memory fall in the estimate's ranges, and when the log captures more graphs than ``vllm.capture_sizes``.

Anything else is ignored and counted in ``unparsed_lines``. Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ..engines.vllm_releases import Release, resolve_release
from ..errors import EstimatorError, InvalidSpecError
from ..gpus import Gpu, get_gpu
from ..model import PRESETS, ModelSpec, load_model, preset_for
from . import CheckResult, LogNotRecognised, MissingSetting, Term

GiB = 1 << 30

_NUM = r"(-?[\d,]*\.?\d+)"

# Phrases only vLLM prints; ``detect`` needs one of them.
_DETECT = re.compile(
    r"LLM engine \(v[\w.+\-]+\) with config"
    r"|vLLM API server version"
    r"|Loading model weights took [\d.]+ GB"
    r"|Model loading took [\d.]+ Gi?B"
    r"|# (?:GPU|cuda) blocks: \d+"
    r"|Available KV cache memory: -?[\d.]+ GiB"
    r"|GPU KV cache size: [\d,]+ tokens"
    r"|Maximum concurrency for [\d,]+ tokens per request"
    r"|the rest of the memory reserved for KV Cache is"
    r"|Memory profiling results:"
    r"|the current vLLM instance can use"
    r"|Free memory on device \([\d.]+/[\d.]+ GiB\) on startup"
    r"|Graph capturing finished in [\d.]+ secs?, took -?[\d.]+ GiB"
)

_TORCH_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}

OWNERS = {
    "weights": "vllm.weights_bytes_per_gpu (params + rotary cos_sin_cache)",
    "weights_profiled": "vllm.weights_bytes_per_gpu (params + rotary cos_sin_cache)",
    "activation_peak": "vllm.sampler_peak_bytes / forward_peak_bytes (profile run: sampler sort or one forward)",
    "peak_torch": "vllm.weights_bytes_per_gpu + profile-run activation peak (sampler sort or forward)",
    "non_torch": "NON_TORCH_GROWTH_BYTES (engineering default, not derivable)",
    "non_torch_v06": "NON_TORCH_GROWTH_BYTES + device baseline from the log's initial_memory_usage (v0-0.6)",
    "kv_cache": "vllm.estimate_vllm kv_pool (budget - weights - activation peak - non-torch)",
    "kv_blocks": "vllm.kv_bytes_per_block (kv_pool // block bytes)",
    "kv_tokens": "vllm.estimate_vllm kv_cache_tokens (blocks x block_size)",
    "max_concurrency": "vllm.estimate_vllm max_concurrency (blocks per max_model_len request)",
    "cuda_graph": "vllm.cuda_graph_pool_bytes (lower bound: driver cudaGraphExec memory not modelled)",
    "requested": "total_gpu_memory x gpu_memory_utilization",
}


def _f(s: str) -> float:
    return float(s.replace(",", ""))


def _gib(s: str) -> int:
    return round(_f(s) * GiB)


def detect(text: str) -> bool:
    """A line only vLLM prints, within the first MiB."""
    return _DETECT.search(text[: 1 << 20]) is not None


class _Log:
    """What the lines of one log state: settings, logged quantities (with their line), counts."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.logged: dict[str, tuple[int | float, str]] = {}
        self.unparsed = 0

    def set(self, key: str, value: Any) -> None:
        self.settings.setdefault(key, value)  # the first statement wins (ranks repeat the same lines)

    def log(self, name: str, value: int | float, line: str) -> None:
        if name not in self.logged:
            self.logged[name] = (value, line.strip()[-240:])


def _kv_pairs(s: str) -> dict[str, str]:
    """key=value and 'key': value pairs of an engine-config, Namespace or non-default-args line."""
    out: dict[str, str] = {}
    for m in re.finditer(r"'?(\w+)'?\s*[=:]\s*('[^']*'|\"[^\"]*\"|[^,\s){}]+)", s):
        out.setdefault(m.group(1), m.group(2).strip("'\""))
    return out


def _engine_line(log: _Log, line: str, m: re.Match[str]) -> None:
    if m.group(1):
        log.set("engine", m.group(1))
    log.set("release", m.group(2))
    kv = _kv_pairs(line[m.end() :])
    if "model" in kv:
        log.set("model_name", kv["model"])
    if "dtype" in kv:
        log.set("dtype", _TORCH_DTYPES.get(kv["dtype"].removeprefix("torch."), kv["dtype"]))
    for key, name in (
        ("max_seq_len", "max_model_len"),
        ("tensor_parallel_size", "tensor_parallel_size"),
        ("pipeline_parallel_size", "pipeline_parallel_size"),
    ):
        if key in kv and kv[key].isdigit():
            log.set(name, int(kv[key]))
    if "quantization" in kv and kv["quantization"] != "None":
        log.set("quantization", kv["quantization"])
    if "kv_cache_dtype" in kv:
        log.set("kv_cache_dtype", kv["kv_cache_dtype"])
    if "enforce_eager" in kv:
        log.set("enforce_eager", kv["enforce_eager"] == "True")
    _capture_config(log, line)


def _capture_config(log: _Log, line: str) -> None:
    """compilation_config's capture sizes and graph mode: JSON up to 0.10 ("max_capture_size": 192),
    a Python dict from 0.11 ('max_cudagraph_capture_size': 512, 'cudagraph_mode': <CUDAGraphMode.X: ..>)."""
    cap = re.search(r"[\"']max_(?:cudagraph_)?capture_size[\"']:\s*(\d+)", line)
    if cap:
        log.set("max_capture_size", int(cap.group(1)))
    sizes = re.search(r"[\"']cudagraph_capture_sizes[\"']:\s*\[([\d,\s]+)\]", line)
    if sizes:
        log.set("capture_sizes", tuple(int(x) for x in sizes.group(1).split(",")))
    mode = re.search(r"cudagraph_mode[\"']?:\s*<CUDAGraphMode\.(\w+)", line)
    if mode:
        log.set("cudagraph_mode", mode.group(1))


def _args_line(log: _Log, line: str) -> None:
    kv = _kv_pairs(line)
    if kv.get("model"):
        log.set("model_name", kv["model"])
    for key in (
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "tensor_parallel_size",
        "pipeline_parallel_size",
    ):
        if key in kv and kv[key].isdigit():
            log.set(key, int(kv[key]))
    if "gpu_memory_utilization" in kv:
        try:
            log.set("gpu_memory_utilization", float(kv["gpu_memory_utilization"]))
        except ValueError:
            pass
    if kv.get("dtype") not in (None, "auto"):
        log.set("dtype", _TORCH_DTYPES.get(kv["dtype"], kv["dtype"]))
    if kv.get("enforce_eager") in ("True", "False"):
        log.set("enforce_eager", kv["enforce_eager"] == "True")
    if kv.get("kv_cache_dtype") not in (None, "None"):
        log.set("kv_cache_dtype", kv["kv_cache_dtype"])
    if kv.get("quantization") not in (None, "None"):
        log.set("quantization", kv["quantization"])


def _v06_profile(log: _Log, line: str, m: re.Match[str]) -> None:
    kv = {k: v for k, v in re.findall(r"(\w+)=([\d.]+)", line[m.start() :])}
    if "total_gpu_memory" in kv:
        log.set("total_gpu_memory_bytes", _gib(kv["total_gpu_memory"]))
    if "gpu_memory_utilization" in kv:
        log.set("gpu_memory_utilization", float(kv["gpu_memory_utilization"]))
    if "initial_memory_usage" in kv:
        log.set("initial_memory_usage_bytes", _gib(kv["initial_memory_usage"]))
        log.set("profile_form", "v0-0.6")
    for key, name in (
        ("peak_torch_memory", "peak_torch"),
        ("non_torch_memory", "non_torch"),
        ("kv_cache_size", "kv_cache"),
    ):
        if key in kv:
            log.log(name, _gib(kv[key]), line)


def _summary(log: _Log, line: str, m: re.Match[str]) -> None:
    log.set("profile_form", "summary")
    for name, g in (("weights_profiled", 1), ("non_torch", 2), ("activation_peak", 3), ("kv_cache", 4)):
        log.log(name, _gib(m.group(g)), line)


def _budget(log: _Log, line: str, m: re.Match[str]) -> None:
    log.set("total_gpu_memory_bytes", _gib(m.group(1)))
    log.set("printed_utilization", _f(m.group(2)))
    log.set("requested_bytes", _gib(m.group(3)))


def _table_row(log: _Log, line: str, m: re.Match[str]) -> None:
    """One row of 0.6.5's multi-line 'Memory profiling results:' table."""
    key, value = m.group(1), m.group(2)
    log.set("profile_form", "summary")
    if key == "total_gpu_memory":
        log.set("total_gpu_memory_bytes", _gib(value))
    elif key == "gpu_memory_utilization":
        log.set("printed_utilization", _f(value))
    elif key == "the current vLLM instance can use":
        log.set("requested_bytes", _gib(value))
    else:
        name = {
            "model weights take": "weights_profiled",
            "non_torch_memory": "non_torch",
            "PyTorch activation peak memory": "activation_peak",
            "available_kv_cache_memory": "kv_cache",
        }[key]
        log.log(name, _gib(value), line)


def _v1_usage(log: _Log, line: str, m: re.Match[str]) -> None:
    log.set("free_memory_bytes", _gib(m.group(1)))
    log.set("total_gpu_memory_bytes", _gib(m.group(2)))
    log.set("gpu_memory_utilization", _f(m.group(3)))
    log.set("requested_bytes", _gib(m.group(4)))
    u = re.search(
        rf"{_NUM} GiB for weight, {_NUM} GiB for peak activation, {_NUM} GiB for non-torch memory"
        rf"(?:, and {_NUM} GiB for CUDAGraph memory)?",
        line,
    )
    if u:
        log.set("profile_form", "summary")
        log.log("weights_profiled", _gib(u.group(1)), line)
        log.log("activation_peak", _gib(u.group(2)), line)
        log.log("non_torch", _gib(u.group(3)), line)
        if u.group(4) is not None:
            log.log("cuda_graph_estimate", _gib(u.group(4)), line)


def _v1_kv(log: _Log, line: str, m: re.Match[str]) -> None:
    log.set("engine", "V1")  # only the V1 worker prints "Available KV cache memory"
    log.log("kv_cache", _gib(m.group(1)), line)


def _v1_profile(log: _Log, line: str, m: re.Match[str]) -> None:
    """V1's memory_profiling summary, a DEBUG line ("Memory profiling takes 14.40 seconds. Total non KV cache memory:
    10.22GiB; torch peak memory increase: 1.40GiB; non-torch forward increase memory: 0.02GiB; weights memory: 8.80GiB.")."""
    log.log("activation_peak", _gib(m.group(2)), line)
    log.log("non_torch", _gib(m.group(3)), line)
    log.log("weights_profiled", _gib(m.group(4)), line)


def _v1_requested(log: _Log, line: str, m: re.Match[str]) -> None:
    """V1, a DEBUG line: "Initial free memory: 23.08 GiB; Requested memory: 0.80 (util), 18.82 GiB"."""
    log.set("free_memory_bytes", _gib(m.group(1)))
    log.set("printed_utilization", _f(m.group(2)))
    log.set("requested_bytes", _gib(m.group(3)))


def _concurrency(log: _Log, line: str, m: re.Match[str]) -> None:
    log.set("concurrency_len", int(_f(m.group(1))))  # the max_model_len the engine divides by
    log.log("max_concurrency", _f(m.group(2)), line)


_Handler = Callable[[_Log, str, "re.Match[str]"], None]

_LINES: tuple[tuple[re.Pattern[str], _Handler], ...] = (
    (re.compile(r"Initializing an? (?:(V0|V1) )?LLM engine \(v?([^)\s]+)\) with config"), _engine_line),
    (re.compile(r"vLLM API server version v?(\S+)"), lambda log, line, m: log.set("release", m.group(1))),
    (re.compile(r"[▀▄█]\s+version v?(\d[\w.+\-]*)\s*$"), lambda log, line, m: log.set("release", m.group(1))),
    (
        re.compile(r"Capturing CUDA graph(?:s \(([^)]*)\)| shapes): +100%\|.*\|\s*(\d+)/\2\b"),
        lambda log, line, m: log.set(f"graphs:{m.group(1) or 'decode'}", int(m.group(2))),
    ),
    (re.compile(r"non-default args: \{|args: Namespace\("), lambda log, line, m: _args_line(log, line)),
    (re.compile(r"Using max model len (\d+)"), lambda log, line, m: log.set("max_model_len", int(m.group(1)))),
    (
        re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)"),
        lambda log, line, m: log.set("max_num_batched_tokens", int(m.group(1))),
    ),
    (re.compile(r"\bvllm serve (?!--)(\S+)"), lambda log, line, m: log.set("model_name", m.group(1).strip("'\""))),
    (
        re.compile(r"Starting to load model (\S+?)\.\.\."),
        lambda log, line, m: log.set("model_name", m.group(1)),
    ),
    (
        re.compile(r"(?:Loading model weights took|Model loading took) ([\d.]+) (GB|GiB)"),
        lambda log, line, m: log.log("weights", _gib(m.group(1)), line),
    ),
    (re.compile(r"Memory profiling results: (?:duration=[\d.]+ seconds, )?total_gpu_memory="), _v06_profile),
    (
        re.compile(r"total_gpu_memory \(([\d.]+) ?GiB\) x gpu_memory_utilization \(([\d.]+)\) = ([\d.]+) ?GiB"),
        _budget,
    ),
    (
        re.compile(
            r"model weights take ([\d.]+) ?GiB; non_torch_memory takes (-?[\d.]+) ?GiB; PyTorch activation peak "
            r"memory takes ([\d.]+) ?GiB; the rest of the memory reserved for KV Cache is (-?[\d.]+) ?GiB"
        ),
        _summary,
    ),
    (
        re.compile(
            r"\] (total_gpu_memory|gpu_memory_utilization|the current vLLM instance can use|model weights take"
            r"|non_torch_memory|PyTorch activation peak memory|available_kv_cache_memory)\s+(-?[\d.]+)(?:GiB)?\s*$"
        ),
        _table_row,
    ),
    (
        re.compile(
            r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup\. Desired GPU memory utilization is "
            r"\(([\d.]+), ([\d.]+) GiB\)"
        ),
        _v1_usage,
    ),
    (re.compile(r"Available KV cache memory: (-?[\d.]+) GiB"), _v1_kv),
    (
        re.compile(
            r"Total non KV cache memory: ([\d.]+) ?GiB; torch peak memory increase: ([\d.]+) ?GiB; "
            r"non-torch forward increase memory: (-?[\d.]+) ?GiB; weights memory: ([\d.]+) ?GiB"
        ),
        _v1_profile,
    ),
    (
        re.compile(r"Initial free memory: ([\d.]+) GiB; Requested memory: ([\d.]+) \(util\), ([\d.]+) GiB"),
        _v1_requested,
    ),
    (
        re.compile(r"Estimated CUDA graph memory: (-?[\d.]+) GiB total"),
        lambda log, line, m: log.log("cuda_graph_estimate", _gib(m.group(1)), line),
    ),
    (
        re.compile(r"CUDA graph pool memory: (-?[\d.]+) GiB \(actual\)"),
        lambda log, line, m: log.log("cuda_graph", _gib(m.group(1)), line),
    ),
    (
        re.compile(r"GPU KV cache size: ([\d,]+) tokens"),
        lambda log, line, m: log.log("kv_tokens", int(_f(m.group(1))), line),
    ),
    (
        re.compile(r"# (?:GPU|cuda) blocks: (\d+), # CPU blocks: (\d+)"),
        lambda log, line, m: log.log("kv_blocks", int(m.group(1)), line),
    ),
    (
        re.compile(r"num_gpu_blocks is: (\d+)"),
        lambda log, line, m: log.log("kv_blocks", int(m.group(1)), line),
    ),
    (re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d,.]+)x"), _concurrency),
    (
        re.compile(r"Graph capturing finished in [\d.]+ secs?, took (-?[\d.]+) GiB"),
        lambda log, line, m: log.log("cuda_graph", _gib(m.group(1)), line),
    ),
)


def parse(text: str) -> _Log:
    log = _Log()
    for line in text.splitlines():
        if not line.strip():
            continue
        hit = False
        for pattern, handler in _LINES:
            m = pattern.search(line)
            if m:
                handler(log, line, m)
                hit = True
        log.unparsed += not hit
    return log


def _release(engine: str | None, release: str | None, profile_form: str | None) -> tuple[Release, str | None]:
    """The release the log states, resolved by ``vllm_releases.resolve_release`` for the engine it
    runs (the one place that maps a release to an accounting), and why it fell back when the release
    cannot be resolved (not stated, a dev build, no such engine in it). The profile lines the log
    prints are evidence of the accounting and win over the release: the device-wide form is
    "v0-0.6", the summary form "v0"."""
    eng = "v1" if engine == "V1" else "v0"
    if eng == "v0" and profile_form in ("v0-0.6", "summary"):
        acc = "v0-0.6" if profile_form == "v0-0.6" else "v0"
        try:
            r = resolve_release(release or "", eng)
        except EstimatorError:
            r = None
        if r is not None and r.accounting == acc:
            return r, None
        return dataclasses.replace(resolve_release(eng), accounting=acc, name=acc), (
            f"the {'device-wide' if acc == 'v0-0.6' else 'summary'} profile lines state the {acc} accounting"
        )
    if release is None:
        return resolve_release(eng), "no release stated"
    try:
        r = resolve_release(release, eng)  # a four-part hotfix release (0.10.1.1) resolves to its base
    except EstimatorError as e:
        return resolve_release(eng), f"release {release!r} not resolved ({str(e).split(': ', 1)[-1]})"
    base = release.strip().lstrip("v").split("+")[0]
    return r, (
        None
        if base == r.name or not base.startswith(r.name + ".")
        else f"the hotfix release {release} has the behaviours of {r.name}"
    )


# vLLM prints GiB with 2 decimals: a logged value stands for anything within half its last digit.
_HALF_PRINTED_BYTES = GiB // 200


def _term_range(name: str, e: Any) -> tuple[int | float | None, int | float | None, float]:
    """(low, high, print slack) of a term's prediction: the estimate's range for the terms the settings
    do not determine (non-torch growth, CUDA graphs) and those they move (KV pool, blocks, tokens,
    concurrency); None for the exact terms. GiB and concurrency are printed with 2 decimals."""
    if name == "non_torch":
        return e.non_torch_low_bytes, e.non_torch_high_bytes, _HALF_PRINTED_BYTES
    if name.startswith("cuda_graph"):
        return e.cuda_graph_bytes, e.cuda_graph_high_bytes, _HALF_PRINTED_BYTES
    if name == "kv_cache":
        return e.kv_pool_low_bytes, e.kv_pool_high_bytes, _HALF_PRINTED_BYTES
    if name == "kv_blocks":
        return e.num_gpu_blocks_low, e.num_gpu_blocks_high, 0.0
    if name == "kv_tokens":
        return e.kv_cache_tokens_low, e.kv_cache_tokens_high, 0.0
    if name == "max_concurrency":
        lo, hi = e.max_concurrency_low, e.max_concurrency_high
        return (None if lo is None else round(lo, 2)), (None if hi is None else round(hi, 2)), 0.005
    return None, None, 0.0


def _range_note(name: str, logged: int, low: int, high: int, what: str) -> str:
    inside = logged + _HALF_PRINTED_BYTES >= low and logged - _HALF_PRINTED_BYTES <= high
    return (
        f"{name}: logged {logged / GiB:.3f} GiB is {'within' if inside else 'OUTSIDE'} the range "
        f"{low / GiB:.3f} .. {high / GiB:.3f} GiB ({what})"
    )


def _graph_count_note(log: _Log, modelled: int) -> str | None:
    """The graphs the log's progress bars count against the capture sizes the estimate counts."""
    bars = {k.removeprefix("graphs:"): v for k, v in log.settings.items() if k.startswith("graphs:")}
    if not bars or sum(bars.values()) == modelled:
        return None
    said = " + ".join(f"{n} '{mode}'" for mode, n in bars.items())
    return f"CUDA graphs: the log captures {sum(bars.values())} ({said}); the estimate counts {modelled} (vllm.num_cuda_graphs)"


def _range_notes(log: _Log, e: Any) -> list[str]:
    """Where the logged non-torch and CUDA-graph memory fall in the estimate's ranges (the terms the
    settings do not determine), and a graph count the estimate does not model."""
    out: list[str] = []
    if "non_torch" in log.logged and e.non_torch_low_bytes is not None and e.non_torch_high_bytes is not None:
        logged = int(log.logged["non_torch"][0])
        out.append(
            _range_note(
                "non_torch", logged, e.non_torch_low_bytes, e.non_torch_high_bytes, "NON_TORCH_GROWTH_RANGE_BYTES"
            )
        )
    n_graphs = e.num_cuda_graphs
    if "cuda_graph" in log.logged and e.cuda_graph_high_bytes is not None:
        logged = int(log.logged["cuda_graph"][0])
        what = f"pool .. pool + {n_graphs} graphs x CUDA_GRAPH_EXEC_PER_GRAPH_BYTES"
        out.append(_range_note("cuda_graph", logged, e.cuda_graph_bytes, e.cuda_graph_high_bytes, what))
    count = _graph_count_note(log, n_graphs)
    if count is not None:
        out.append(count)
    return out


def _utilization(log: _Log) -> float | None:
    """gpu_memory_utilization as stated; refined from the printed budget when the log rounds it to 2 digits."""
    util = log.settings.get("gpu_memory_utilization")
    if util is not None:
        return float(util)
    printed = log.settings.get("printed_utilization")
    total, req = log.settings.get("total_gpu_memory_bytes"), log.settings.get("requested_bytes")
    if printed is not None and total and req:
        refined = round(req / total, 3)
        return refined if round(refined, 2) == round(printed, 2) else float(printed)
    return None if printed is None else float(printed)


def check(
    text: str,
    *,
    model: str | ModelSpec | None = None,
    gpu: str | Gpu | None = None,
    gpu_memory_bytes: int | None = None,
    **_: Any,
) -> CheckResult:
    """Each logged quantity of a vLLM startup log against ``estimate_vllm`` for the settings it states."""
    from ..engines import vllm as vl

    log = parse(text)
    if not log.logged and "release" not in log.settings:
        raise LogNotRecognised("log: no vLLM startup line recognised")
    s = log.settings
    notes: list[str] = []

    # --- model
    if model is not None:
        spec = load_model(model)
        model_key: str = model if isinstance(model, str) else spec.name
    else:
        preset = preset_for(str(s.get("model_name", "")))
        if preset is None:
            named = f" ({s['model_name']!r})" if s.get("model_name") else ""
            raise MissingSetting(
                f"model: the log does not name a known model{named}; pass --model PRESET "
                f"({', '.join(PRESETS)}) or a config.json path"
            )
        spec, model_key = load_model(preset), preset

    # --- GPU: the total the log states wins; the catalog GPU gives the arch (and the total otherwise)
    g = get_gpu(gpu) if gpu is not None else None
    total = s.get("total_gpu_memory_bytes") or gpu_memory_bytes or (g.memory_bytes if g else None)
    needs_total = any(k in log.logged for k in ("kv_cache", "kv_blocks", "kv_tokens", "max_concurrency"))
    if total is None:
        if needs_total:
            raise MissingSetting(
                "gpu: the log does not state the GPU's total memory; pass --gpu NAME or --gpu-memory-bytes N"
            )
        total = 80 * GiB  # the weights, activation and graph terms do not depend on it
        notes.append("the log states no GPU total and none was given: only budget-independent terms are predicted")

    engine, release = s.get("engine"), s.get("release")
    modelled, fallback = _release(engine, release, s.get("profile_form"))
    accounting = modelled.accounting
    engine_said = f"{engine} engine" if engine else "no engine (V1 lines absent: V0)"
    if engine is None:
        engine = "V1" if accounting == "v1" else "V0"
    util = _utilization(log)
    if util is None:
        util = 0.9
        notes.append("gpu_memory_utilization not stated: vLLM's default 0.9")
    max_model_len = s.get("max_model_len") or s.get("concurrency_len")
    max_num_seqs = s.get("max_num_seqs")
    cap = s.get("max_capture_size")
    if max_num_seqs is None and accounting != "v1" and cap and cap < 256 and not s.get("enforce_eager"):
        # V0 captures batch sizes up to min(256, max_num_seqs padded to 8): a smaller cap is max_num_seqs
        max_num_seqs = cap
        notes.append(f"max_num_seqs {cap}: from the logged cudagraph_capture_sizes (V0 caps them at max_num_seqs)")
    quant = s.get("quantization")
    if quant is not None and quant not in vl.QUANTIZATIONS:
        raise InvalidSpecError(
            f"quantization: the log states {quant!r}, which the vLLM estimate does not model "
            f"({', '.join(vl.QUANTIZATIONS)} of an unquantized checkpoint)"
        )
    kv_dtype = s.get("kv_cache_dtype", "auto")
    dtype = s.get("dtype", "auto")
    kw: dict[str, Any] = {
        "gpu_memory_utilization": util,
        "max_model_len": max_model_len,
        "max_num_batched_tokens": s.get("max_num_batched_tokens"),
        "max_num_seqs": max_num_seqs,
        "dtype": dtype,
        "kv_cache_dtype": kv_dtype,
        "version": accounting,
        "tensor_parallel_size": s.get("tensor_parallel_size", 1),
        "pipeline_parallel_size": s.get("pipeline_parallel_size", 1),
        "enforce_eager": bool(s.get("enforce_eager", False)),
        "quantization": quant,
        "gpu_name": g.name if g else None,
        "gpu_arch": g.arch if g else None,
    }
    if modelled.cudagraph_in_budget is not None:
        kw["cudagraph_in_budget"] = modelled.cudagraph_in_budget  # V1 up to 0.20: graphs after the KV pool
    if modelled.version is not None:
        kw["release"] = modelled.name
    if accounting == "v0-0.6" and "initial_memory_usage_bytes" in s and "weights" in log.logged:
        # the device in use before the profile (CUDA context, other processes), from the same log line
        kw["device_baseline_bytes"] = s["initial_memory_usage_bytes"] - int(log.logged["weights"][0])
    e = vl.estimate_vllm(spec, int(total), **kw)

    predicted: dict[str, int | float] = {
        "weights": e.weights_bytes,
        "weights_profiled": e.weights_bytes,
        "activation_peak": e.activation_peak_bytes,
        "peak_torch": e.weights_bytes + e.activation_peak_bytes,
        "non_torch": e.non_torch_bytes,
        "kv_cache": e.kv_pool_bytes,
        "kv_blocks": e.num_gpu_blocks,
        "kv_tokens": e.kv_cache_tokens,
        "max_concurrency": round(e.max_concurrency, 2),
        "cuda_graph": e.cuda_graph_bytes,
        "cuda_graph_estimate": e.cuda_graph_bytes,
    }
    units = {"kv_blocks": "blocks", "kv_tokens": "tokens", "max_concurrency": "x"}
    terms = []
    for name, (value, line) in log.logged.items():
        owner = OWNERS.get(name, OWNERS["cuda_graph"] if name.startswith("cuda_graph") else "")
        if name == "non_torch" and accounting == "v0-0.6":
            owner = OWNERS["non_torch_v06"]
        low, high, slack = _term_range(name, e)
        unit = units.get(name, "bytes")
        terms.append(Term(name, value, predicted.get(name), unit, owner, line, low, high, slack))

    inferred: dict[str, Any] = {
        "engine": engine,
        "release": release,
        "accounting": accounting,
        "release_modelled": modelled.name,
        "model": model_key,
        "model_name": s.get("model_name"),
        "dtype": dtype,
        "kv_cache_dtype": kv_dtype,
        "quantization": quant,
        "max_model_len": e.max_model_len,
        "max_num_seqs": e.max_num_seqs,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "gpu_memory_utilization": util,
        "gpu_memory_bytes": int(total),
        "gpu": g.key if g else None,
        "tensor_parallel_size": e.tensor_parallel_size,
        "pipeline_parallel_size": e.pipeline_parallel_size,
        "enforce_eager": kw["enforce_eager"],
    }
    if "device_baseline_bytes" in kw:
        inferred["device_baseline_bytes"] = kw["device_baseline_bytes"]
    stated = ("max_model_len", "max_num_seqs", "max_num_batched_tokens")
    defaulted = [k for k in stated if kw[k] is None]
    if defaulted:
        notes.append(f"not stated, vLLM's default for {accounting}: {', '.join(defaulted)}")
    notes.insert(
        0,
        f"modelled vLLM's {accounting} accounting (estimator.engines.vllm.estimate_vllm version={accounting!r}) "
        + (
            f"of release {modelled.name} (vllm_releases.resolve_release)"
            if fallback is None
            else f"as {modelled.name!r}: {fallback}"
        )
        + f"; the log states {engine_said}, release {release or 'not stated'}",
    )
    notes.extend(_range_notes(log, e))
    drift = [t for t in terms if t.unit == "bytes" and t.rel_error is not None and abs(t.logged or 0) >= 0.01 * GiB]
    if drift:
        worst = max(drift, key=lambda t: abs(t.difference or 0))
        notes.append(
            f"largest drift: {worst.name} ({(worst.difference or 0) / GiB:+.3f} GiB, "
            f"{100 * (worst.rel_error or 0):+.1f}%), owned by {worst.owner}"
        )
    if not e.starts:
        notes.append(f"the estimate says vLLM would refuse to start: {e.refusal}")
    return CheckResult("vllm", release, inferred, tuple(terms), tuple(notes), log.unparsed)

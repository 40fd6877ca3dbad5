"""Engine versions as inputs: vLLM releases and llama.cpp builds resolved to what the estimators model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from estimator.check import check_log
from estimator.engines import llamacpp as lc
from estimator.engines import vllm as vl
from estimator.engines.vllm_releases import BEHAVIOURS, NEWEST_RELEASE, parse_release, resolve_release
from estimator.errors import EstimatorError, UnknownNameError
from estimator.model import load_preset

GiB = 1 << 30
S3 = load_preset("llama-3.2-3b")


@pytest.mark.parametrize(
    ("text", "engine", "accounting", "graphs"),
    [
        ("0.2.0", "v0", "v0-0.6", False),
        ("0.6.4", "v0", "v0-0.6", False),  # last release of the device-wide profiler
        ("0.6.5", "v0", "v0", False),  # first with the baseline snapshot (PR #10511)
        ("v0.7.3", "v0", "v0", False),  # last release with V0 as the default engine
        ("0.8.0", "v1", "v1", False),  # V1 default from 0.8.0
        ("0.8.5", "v1", "v1", False),
        ("0.10.2", "v1", "v1", False),
        ("0.10.1rc2.dev310+g4f35be10a", "v1", "v1", False),
        ("0.11.0", "v1", "v1", False),
        ("0.20.2", "v1", "v1", False),  # last release capturing graphs outside the budget
        ("0.21.0", "v1", "v1", True),  # CUDA-graph estimate in the budget by default
        (NEWEST_RELEASE, "v1", "v1", True),
        ("0.33", "v1", "v1", True),  # after the newest the table knows: the newest behaviour
    ],
)
def test_release_resolves_to_accounting_and_flags(text, engine, accounting, graphs):
    r = resolve_release(text)
    assert (r.engine, r.accounting, r.cudagraph_in_budget) == (engine, accounting, graphs)
    assert r.name == ".".join(map(str, parse_release(text)))
    assert r.sampler_in_profile and r.gpu_memory_utilization == 0.9
    assert r.estimate_kw() == {"version": accounting, "cudagraph_in_budget": graphs, "release": r.name}
    assert any("accounting" in n for n in r.notes)


def test_engine_override_and_its_boundaries():
    assert resolve_release("0.8.5", "v0").accounting == "v0"  # VLLM_USE_V1=0
    assert resolve_release("0.10.2", "V0").accounting == "v0"
    assert resolve_release("0.7.3", "v1").accounting == "v1"  # opt-in V1
    with pytest.raises(UnknownNameError, match="no V0 engine"):
        resolve_release("0.11.0", "v0")  # V0 removed in 0.11.0


def test_accounting_names_are_kept():
    for name in ("v0", "v1", " V1 "):
        r = resolve_release(name)
        assert r.accounting == r.name == name.strip().lower() and r.cudagraph_in_budget is None and r.version is None


@pytest.mark.parametrize("bad", ["", "v2", "latest", "0.1.9", "0.8.x", "1.2.3.4.5", "0.8.5; rm"])
def test_bad_release_is_one_line_naming_flag_and_value(bad):
    with pytest.raises(UnknownNameError) as e:
        resolve_release(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--vllm-version") and repr(bad) in msg


def test_every_behaviour_cites_a_source():
    for b in BEHAVIOURS:
        assert b.source and (b.first is None or b.last is None or b.first <= b.last)


# the fields a release's CUDA-graph capture list moves (the pool, the graph count and the high ends of the range)
GRAPH_FIELDS = {
    "cuda_graph_bytes",
    "cuda_graph_high_bytes",
    "num_cuda_graphs",
    "device_used_bytes",
    "device_used_low_bytes",
    "device_used_high_bytes",
    "kv_pool_low_bytes",
    "num_gpu_blocks_low",
    "max_concurrency_low",
    "kv_cache_tokens_low",
}


def test_releases_change_only_the_graph_terms_of_their_accounting():
    """A release resolving to an accounting gives that accounting's numbers, but for the CUDA graphs it
    captures (vllm_releases "cudagraph_capture_sizes" / "cudagraph_full_decode"), counted by hand:
    0.8.5 V1: [1, 2, 4] + 8k up to 512 = 67; 0.29.0: [1, 2, 4] + 8k below 256 (31) + 16k from 256 to
    512 (17) = 51 piecewise + the 35 of them up to max_num_seqs 256 as full decode graphs = 86;
    V0: [1, 2, 4] + 8k up to 256 = 35."""
    for release, version, extra, graphs in (
        ("0.8.5", "v1", {"cudagraph_in_budget": False}, 67),
        (NEWEST_RELEASE, "v1", {}, 86),
        ("0.8.5:v0", "v0", {}, 35),
        ("0.6.4", "v0-0.6", {}, 35),
    ):
        text, _, engine = release.partition(":")
        r = resolve_release(text, engine or None)
        got = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, **r.estimate_kw())
        want = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, version=version, **extra)
        assert got.release == r.name and want.release is None
        assert got.num_cuda_graphs == graphs
        g, w = got.to_dict(), want.to_dict()
        assert {k for k in g if g[k] != w[k]} - {"release"} <= GRAPH_FIELDS
        if version != "v1" or text == NEWEST_RELEASE:  # the release's rule is the accounting's default
            assert g | {"release": None} == w


def test_four_part_hotfix_release_is_its_base():
    assert resolve_release("0.10.1.1").name == "0.10.1"


def test_estimate_report_names_the_release():
    rep = vl.estimate_report(
        S3, 24 * GiB, max_model_len=8192, smallest_set=False, **resolve_release("0.10.2").estimate_kw()
    )
    assert rep.settings["vllm_release"] == "0.10.2" and rep.settings["vllm_version"] == "v1"
    plain = vl.estimate_report(S3, 24 * GiB, max_model_len=8192, smallest_set=False, version="v0")
    assert plain.settings["vllm_release"] == "v0"


# --- llama.cpp builds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "layout"),
    [
        ("current", "current"),
        ("2025-01", "2025-01"),
        ("b5912", "2025-01"),
        ("5912", "2025-01"),
        ("b5913", "current"),  # first build with per-sequence KV streams
        ("5913", "current"),
        ("B7000", "current"),
        ("1550", "2025-01"),
        ("2024-05", "2025-01"),
        ("2025-07-15", "2025-01"),
        ("2025-07-16", "current"),  # PR #14363 merged
        ("2025-07", "2025-01"),  # a month alone is its first day
        ("2025-08", "current"),
        ("2026-03-01", "current"),
    ],
)
def test_llamacpp_build_resolves_to_layout(text, layout):
    got, why = lc.resolve_build(text)
    assert got == layout and why
    assert lc.STREAMS_BUILD == 5913


@pytest.mark.parametrize("bad", ["", "latest", "b", "2025-13", "2025-00-01", "b59131234", "2025/07"])
def test_bad_build_is_one_line_naming_flag_and_value(bad):
    with pytest.raises(UnknownNameError) as e:
        lc.resolve_build(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--llamacpp-version") and repr(bad) in msg


def test_llamacpp_build_gives_the_layouts_numbers():
    kw = dict(n_ctx=8192, parallel=4, n_ubatch=512, flash_attn=False, kv_dtype="f16")
    for build, layout in (("b5000", "2025-01"), ("b6000", "current")):
        a = lc.estimate_llamacpp(S3, "q4_k_m", version=lc.resolve_build(build)[0], **kw)
        b = lc.estimate_llamacpp(S3, "q4_k_m", version=layout, **kw)
        assert a == b


# --- the CLI -------------------------------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "estimator", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_prints_the_release_it_modelled():
    base = ("estimate", "--engine", "vllm", "--gpu", "l4-24gb", "--context", "8192")
    text = _cli(*base, "--vllm-version", "0.6.4")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith("vLLM 0.6.4 (v0-0.6 accounting)")
    out = _cli(*base, "--vllm-version", "v0.8.5", "--json")
    d = json.loads(out.stdout)
    assert (d["settings"]["vllm_release"], d["settings"]["vllm_version"]) == ("0.8.5", "v1")
    default = json.loads(_cli(*base, "--json").stdout)
    assert default["settings"]["vllm_release"] == NEWEST_RELEASE
    v1 = json.loads(_cli(*base, "--json", "--vllm-version", "v1").stdout)
    assert v1["settings"]["vllm_release"] == "v1"
    assert {k: v for k, v in v1.items() if k != "settings"} == {k: v for k, v in default.items() if k != "settings"}


def test_cli_bad_versions_are_one_line():
    bad = _cli("estimate", "--engine", "vllm", "--gpu", "l4-24gb", "--vllm-version", "0.1.0")
    assert bad.returncode != 0 and "--vllm-version" in bad.stderr and "'0.1.0'" in bad.stderr
    bad = _cli("estimate", "--engine", "llama.cpp", "--gpu", "l4-24gb", "--llamacpp-version", "soon")
    assert bad.returncode != 0 and "--llamacpp-version" in bad.stderr and "'soon'" in bad.stderr
    ok = _cli("estimate", "--engine", "llama.cpp", "--gpu", "l4-24gb", "--llamacpp-version", "b5000", "--json")
    assert ok.returncode == 0, ok.stderr
    s = json.loads(ok.stdout)["settings"]
    assert (s["llamacpp_version"], s["llamacpp_build"]) == ("2025-01", "b5000")


# --- the log checkers use the same resolvers -------------------------------------------------------


def test_checkers_use_the_resolvers():
    from pathlib import Path

    fx = Path(__file__).parent.parent / "check" / "fixtures"
    r = check_log((fx / "vllm" / "v0-0.8.2-llama-3.2-3b-t4.log").read_text(), model="llama-3.2-3b")
    assert r.inferred["release_modelled"] == "0.8.2" and r.inferred["accounting"] == "v0"
    assert "of release 0.8.2" in r.notes[0]
    for log in sorted((fx / "llamacpp").glob("*.log")):
        try:
            res = check_log(log.read_text(), model="llama-3.2-3b")
        except EstimatorError:
            continue
        b = res.inferred.get("build")
        if b is not None:
            assert res.inferred["version"] == lc.resolve_build(str(b))[0]

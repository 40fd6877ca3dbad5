"""Speed in the app: the calculator's speed cards and speed-ranked GPUs, the Engines page's
speed-vs-concurrency chart, and the pure helpers behind them."""

from __future__ import annotations

import json

import pytest

import estimator
from app import figures, state, tables
from estimator import speed as S
from estimator.engines import estimate_vllm


@pytest.fixture
def at(app_test):
    return app_test("streamlit_app.py").run()


def _metric(at, label: str):
    return next(m for m in at.metric if m.label == label)


def test_calculator_shows_speed_next_to_memory(at):
    """Default settings on the RTX 4090: three speed cards with the library's numbers."""
    assert not at.exception
    sp = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu=state.DEFAULTS[state.GPU]).speed
    assert sp is not None
    assert _metric(at, "Decode speed").value == f"{sp.decode_tok_s.point:,.0f} tok/s"
    assert _metric(at, "Prefill speed").value == f"{sp.prefill_tok_s.point:,.0f} tok/s"
    assert _metric(at, "Time to first token").value.endswith(("s", "ms"))
    # the memory cards keep their places
    assert at.metric[1].label.startswith("Fits on")


def test_calculator_speed_follows_the_gpu(at):
    before = _metric(at, "Decode speed").value
    at.selectbox(key=state.GPU).set_value("h100-sxm-80gb").run()
    assert not at.exception and _metric(at, "Decode speed").value != before


def test_custom_gpu_has_no_speed(at):
    at.selectbox(key=state.GPU).set_value(state.CUSTOM_GPU).run()
    assert not at.exception
    assert not any(m.label == "Decode speed" for m in at.metric)
    assert any("Speed needs a catalog GPU" in c.value for c in at.caption)


def test_recommended_gpus_are_ranked_by_speed(at):
    """The recommended GPUs (still the smallest that fit) carry their decode tok/s, fastest first."""
    line = next(m.value for m in at.markdown if m.value.startswith("**Recommended GPUs**"))
    assert "fastest decode first" in line
    speeds = [float(part.split("~")[1].split(" tok/s")[0].replace(",", "")) for part in line.split(";")]
    assert len(speeds) >= 1 and speeds == sorted(speeds, reverse=True)


def test_with_speed_and_recommended_text_rank_fastest_first():
    est = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu="rtx-4090-24gb")
    rows = [
        {"gpu": "rtx-3060-12gb", "name": "NVIDIA GeForce RTX 3060 12GB", "memory_bytes": 12 << 30, "headroom_bytes": 1},
        {"gpu": "h100-sxm-80gb", "name": "NVIDIA H100 SXM 80GB", "memory_bytes": 80 << 30, "headroom_bytes": 2},
    ]
    ranked = tables.with_speed(rows, est)
    assert ranked[1]["decode_tok_s"] > ranked[0]["decode_tok_s"] > 0
    text = tables.recommended_text(ranked, 40)
    assert text.index("H100") < text.index("3060")
    # without speeds (rows as compute.fitting_gpus gives them) the order is kept
    assert tables.recommended_text(rows, 40).index("3060") < tables.recommended_text(rows, 40).index("H100")


def test_concurrency_figure_has_a_line_and_band_per_engine():
    curves = {
        "vLLM": S.concurrency_curve("llama-3.1-8b", "bf16", "h100-sxm-80gb", engine="vllm", context=8192, cap=12),
        "llama.cpp": S.concurrency_curve("llama-3.1-8b", "q4_k_m", "h100-sxm-80gb", engine="llama.cpp", cap=4),
    }
    fig = figures.concurrency_figure(curves)
    names = [t.name for t in fig.data]
    assert names == [
        "vLLM range",
        "vLLM: all sequences",
        "vLLM: each sequence",
        "llama.cpp range",
        "llama.cpp: all sequences",
        "llama.cpp: each sequence",
    ]
    assert list(fig.data[1].x) == [1, 2, 4, 8, 12] and list(fig.data[4].x) == [1, 2, 4]
    assert fig.layout.xaxis.title.text == "Concurrent sequences"
    assert "tokens/s" in fig.layout.yaxis.title.text
    assert figures.concurrency_figure({}).data == ()


def _engines(app_test, gpu: str = "h100-sxm-80gb"):
    at = app_test("app/pages/engines.py")
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.1-8b",
        "quant": "bf16",
        "context": 8192,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": gpu,
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }
    return at.run()


def test_engines_page_speed_vs_concurrency(app_test):
    """The chart's vLLM line ends at the page's own vLLM estimate's KV concurrency (or max_num_seqs)."""
    at = _engines(app_test)
    assert not at.exception
    spec = next(
        json.loads(el.proto.spec)
        for el in at.get("plotly_chart")
        if json.loads(el.proto.spec)["layout"].get("title", {}).get("text") == "Speed vs concurrency"
    )
    lines = {t["name"]: t for t in spec["data"]}
    assert {"transformers: all sequences", "vLLM: all sequences", "llama.cpp: all sequences"} <= set(lines)
    gpu = estimator.get_gpu("h100-sxm-80gb")
    e = estimate_vllm(
        estimator.load_model("llama-3.1-8b"),
        gpu.memory_bytes,
        max_model_len=8192,
        max_num_seqs=256,
        gpu_name=gpu.name,
        gpu_arch=gpu.arch,
        cuda_context_bytes=estimator.overhead.cuda_context_bytes(gpu.cls),
    )
    assert lines["vLLM: all sequences"]["x"][-1] == min(int(e.max_concurrency), 256)
    assert any(m.label == "vLLM: one sequence" for m in at.metric)


def test_engines_page_speed_needs_a_catalog_gpu(app_test):
    at = app_test("app/pages/engines.py")
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.2-3b",
        "quant": "bf16",
        "context": 8192,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": None,
        "gpu_memory_bytes": 24 << 30,
        "prefill_chunk": None,
    }
    at.run()
    assert not at.exception
    assert any("Speed needs a catalog GPU" in c.value for c in at.caption)

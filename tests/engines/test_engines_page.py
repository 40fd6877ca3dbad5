"""AppTest of app/pages/engines.py: the calculator's model, weights bit width, context and GPU under
transformers, vLLM and llama.cpp; one sentence per engine; no empty or "None" cells."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app/pages/engines.py")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import state  # noqa: E402

GiB = 1 << 30


def _app(settings: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if settings is not None:
        at.session_state[state.SETTINGS] = settings
    return at.run()


def _settings(**kw) -> dict:
    s = {
        "model": "llama-3.2-3b",
        "quant": "bf16",
        "context": 8192,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": "rtx-4090-24gb",
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }
    return {**s, **kw}


def _table(at):
    return next(d.value for d in at.dataframe if "Part" in d.value.columns)


def _gib(cell: str) -> float:
    m = re.fullmatch(r"([\d,.]+) GiB", cell)
    assert m, cell
    return float(m.group(1).replace(",", ""))


def _bullets(at) -> list[str]:
    """The engine sentences, markdown escapes removed."""
    return [line.replace("\\", "") for m in at.markdown for line in m.value.splitlines() if line.startswith("- **")]


def test_page_renders_all_three_engines_without_empty_cells():
    at = _app()
    assert not at.exception
    t = _table(at)
    assert list(t.columns) == ["Part", "transformers", "vLLM", "llama.cpp"]
    assert t["Part"].iloc[0] == "Weights as loaded"
    assert not t.isna().any().any() and not t.isin(["None", ""]).any().any()
    engines = ("transformers", "vLLM", "llama.cpp")
    # memory per engine, then the "How fast" section's decode speed of one sequence per engine
    assert [m.label for m in at.metric] == [f"{e}: GPU memory used" for e in engines] + [
        f"{e}: one sequence" for e in engines
    ]
    assert all(m.value.endswith("tok/s") for m in at.metric[3:]), [m.value for m in at.metric[3:]]
    assert len(_bullets(at)) == 3


def test_same_bit_width_in_every_engine():
    """A 4-bit calculator setting loads 4-bit weights in all three: bnb NF4, vLLM in-flight
    bitsandbytes, GGUF Q4_0 (estimator.engines.same_bits)."""
    at = _app(_settings(quant="nf4"))
    row = _table(at).iloc[0]
    assert row["transformers"].startswith("4-bit") and row["vLLM"].startswith("4-bit")
    assert "bitsandbytes" in row["vLLM"] and row["llama.cpp"] == "GGUF Q4_0"
    w = _table(at).set_index("Part").loc["Weights"]
    assert all(_gib(w[e]) < 2.5 for e in ("transformers", "vLLM", "llama.cpp"))  # bf16 would be ~6 GiB


def test_follows_the_calculator_across_pages():
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key=state.MODEL).set_value("llama-3.1-8b").run()
    at.selectbox(key=state.QUANT).set_value("int8").run()
    at.selectbox(key=state.GPU).set_value("l4-24gb").run()
    at.text_input(key=state.CTX_TEXT).input("16k").run()
    at.switch_page("app/pages/engines.py").run()
    assert not at.exception
    assert at.selectbox(key="eng_model").value == "llama-3.1-8b"
    assert at.selectbox(key="eng_quant").value == "int8"
    assert at.selectbox(key="eng_gpu").value == "l4-24gb"
    assert at.number_input(key="eng_context").value == 16384
    assert "GGUF Q8_0" in _table(at).iloc[0]["llama.cpp"]
    at.selectbox(key="eng_quant").set_value("bf16").run()  # the page's own choice holds on a rerun
    assert at.selectbox(key="eng_quant").value == "bf16"


def test_transformers_column_equals_the_calculator_estimate():
    import estimator

    at = _app(_settings(quant="nf4", context=32768, batch=2, kv_dtype="fp8"))
    e = estimator.estimate("llama-3.2-3b", quant="nf4", context=32768, batch=2, kv_dtype="fp8", gpu="rtx-4090-24gb")
    assert at.metric[0].value == f"{e.device_used_bytes / GiB:.2f} GiB"


def test_context_change_moves_llamacpp_kv():
    at = _app()
    a = _table(at).set_index("Part")
    at.number_input(key="eng_context").set_value(32768).run()
    assert not at.exception
    b = _table(at).set_index("Part")
    assert _gib(b.loc["KV cache", "llama.cpp"]) == pytest.approx(4 * _gib(a.loc["KV cache", "llama.cpp"]), rel=0.02)
    # vLLM's memory does not follow the context: it takes gpu_memory_utilization of the GPU
    assert b.loc["GPU memory used", "vLLM"] == a.loc["GPU memory used", "vLLM"]


def test_vllm_sentence_gives_the_smallest_utilization():
    from estimator.engines import vllm as vl
    from estimator.gpus import get_gpu
    from estimator.model import load_preset
    from estimator.overhead import cuda_context_bytes

    at = _app()
    line = next(b for b in _bullets(at) if b.startswith("- **vLLM**"))
    u = float(re.search(r"gpu_memory_utilization (0\.\d\d)", line).group(1))
    g = get_gpu("rtx-4090-24gb")
    assert u == vl.smallest_utilization(
        load_preset("llama-3.2-3b"),
        g.memory_bytes,
        max_model_len=8192,
        max_num_seqs=256,
        version="v1",
        dtype="bf16",
        gpu_arch=g.arch,
        gpu_name=g.name,
        cuda_context_bytes=cuda_context_bytes(g.cls),
    )
    assert 0 < u < 0.9


def test_vllm_refusal_is_text_not_a_traceback():
    at = _app(_settings(model="llama-3.1-8b", gpu="t4-16gb", context=131072))
    assert not at.exception
    assert at.metric[1].value == "does not start"
    line = next(b for b in _bullets(at) if b.startswith("- **vLLM**"))
    assert "would not start" in line and "smallest catalog GPU set" in line
    assert _table(at).set_index("Part").loc["GPU memory used", "vLLM"] == "does not start"


def test_fp8_on_a_t4_is_refused_with_vllms_message():
    at = _app(_settings(quant="fp8", gpu="t4-16gb"))
    line = next(b for b in _bullets(at) if b.startswith("- **vLLM**"))
    assert "Minimum capability: 80" in line


def test_custom_gpu_from_the_calculator():
    at = _app(_settings(gpu=None, gpu_memory_bytes=10 * GiB))
    assert not at.exception
    g = at.selectbox(key="eng_gpu")
    assert g.value == state.CUSTOM_GPU and "10.00 GiB" in g.format_func(g.value)


def test_custom_model_from_the_calculator():
    from app.compute import model_key
    from estimator.model import load_preset

    key = model_key(load_preset("llama-3.2-1b"))
    at = _app(_settings(model=key))
    assert not at.exception and at.selectbox(key="eng_model").value == key


def test_executorch_panel_explains_the_fp32_crossover():
    at = _app()
    cap = next(c.value for c in at.caption if "-d fp32" in c.value)
    assert "20,127 tokens" in cap  # estimator.engines.executorch.crossover_context, 3B SpinQuant
    et = next(d.value for d in at.dataframe if "Variant" in d.value.columns)
    assert list(et["Variant"]) == ["bf16", "spinquant", "qat-lora"]


def test_page_under_navigation():
    """The page also runs as the 'Engines' page of streamlit_app.py."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("app/pages/engines.py").run()
    assert not at.exception
    assert any("Engines side by side" in t.value for t in at.title)

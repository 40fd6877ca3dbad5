"""AppTest of app/pages/engines.py: renders, and the engine selector changes the numbers shown."""

from __future__ import annotations

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


def _app() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def _metrics(at) -> list[str]:
    return [m.value for m in at.metric]


def test_page_renders_all_three_engines():
    at = _app()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["Part", "transformers", "vLLM", "llama.cpp"]
    assert "GiB" in at.metric[0].value


def test_engine_selector_changes_numbers():
    at = _app()
    shown = {}
    for eng in ("transformers", "vLLM", "llama.cpp"):
        at.radio(key="eng_engine").set_value(eng).run()
        assert not at.exception
        shown[eng] = tuple(_metrics(at))
    assert len(set(shown.values())) == 3


def test_context_change_moves_llamacpp_kv():
    at = _app()
    at.radio(key="eng_engine").set_value("llama.cpp").run()
    a = at.dataframe[0].value
    at.number_input(key="eng_context").set_value(32768).run()
    assert not at.exception
    b = at.dataframe[0].value
    kv_a = a.loc[a["Part"] == "KV cache", "llama.cpp"].item()
    kv_b = b.loc[b["Part"] == "KV cache", "llama.cpp"].item()
    assert kv_b == pytest.approx(4 * kv_a, rel=0.02)


def test_vllm_refusal_is_an_error_not_a_traceback():
    at = _app()
    at.selectbox(key="eng_model").set_value("llama-3.1-8b").run()
    at.selectbox(key="eng_gpu").set_value("t4-16gb").run()
    at.number_input(key="eng_context").set_value(131072).run()
    at.radio(key="eng_engine").set_value("vLLM").run()
    assert not at.exception
    assert any("would not start" in e.value or "out of memory" in e.value for e in at.error)


def test_reads_shared_session_defaults():
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model"] = "llama-3.2-1b"
    at.session_state["gpu"] = "l4-24gb"
    at.session_state["context"] = 4096
    at.run()
    assert not at.exception
    assert at.selectbox(key="eng_model").value == "llama-3.2-1b"
    assert at.selectbox(key="eng_gpu").value == "l4-24gb"
    assert at.number_input(key="eng_context").value == 4096


def test_page_under_navigation():
    """The page also runs as the 'Engines' page of streamlit_app.py."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("app/pages/engines.py").run()
    assert not at.exception
    assert any("Engines side by side" in t.value for t in at.title)

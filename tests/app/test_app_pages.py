"""AppTest of the validation and model pages, and navigation between pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import state

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VALIDATION = "app/pages/validation.py"


def _validation(app_test, monkeypatch, folder: str, cuda: str = "0"):
    monkeypatch.setenv("VRAM_VALIDATION_DIR", str(FIXTURES / folder))
    monkeypatch.setenv("VRAM_APP_CUDA", cuda)

    return app_test(VALIDATION).run()


def _warnings(at) -> str:
    return " ".join(w.value for w in at.warning)


def test_validation_with_no_files(app_test, monkeypatch):
    at = _validation(app_test, monkeypatch, "empty")
    assert not at.exception
    assert "No GPU measurements exist yet" in _warnings(at)
    assert len(at.get("plotly_chart")) == 0
    assert any("No result files" in i.value for i in at.info)


def test_validation_with_trace_only(app_test, monkeypatch):
    at = _validation(app_test, monkeypatch, "trace_only")
    assert not at.exception
    assert "No GPU measurements exist yet" in _warnings(at)
    assert [s.value for s in at.subheader][0].startswith("Trace results")
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["title"]["text"] == "Estimate vs measured"
    names = [t["name"] for t in spec["data"]]
    # trace: live peak, and allocated/reserved from the allocator simulation; no device counter
    assert {"Peak live tensors", "Peak allocated", "Peak reserved"} <= set(names) and "Device used" not in names


def test_validation_with_gpu_results(app_test, monkeypatch):
    at = _validation(app_test, monkeypatch, "with_gpu")
    assert not at.exception
    assert "No GPU measurements" not in _warnings(at)
    heads = [s.value for s in at.subheader]
    assert heads[:2] == ["GPU measurements", "Trace results (fake-tensor, no GPU)"]
    gpu = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in gpu["data"]} >= {"Peak allocated", "Peak reserved", "Device used"}
    errors = at.dataframe[0].value
    assert list(errors["Points"]) == [9, 9, 9, 9, 9]
    env = at.dataframe[1].value
    assert env["gpu_name"].iloc[0] == "NVIDIA H100 80GB HBM3"
    assert "Measure these settings" not in [b.label for b in at.button]


def test_validation_measure_button_only_with_cuda(app_test, monkeypatch):
    monkeypatch.setenv("VRAM_VALIDATION_DIR", str(FIXTURES / "empty"))
    monkeypatch.setenv("VRAM_APP_CUDA", "1")
    at = app_test(VALIDATION)
    monkeypatch.setenv("VRAM_APP_CUDA", "1")  # after the fixture, which sets "0"
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.2-3b",
        "quant": "nf4",
        "context": 4096,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": None,
        "gpu_memory_bytes": 24 << 30,
    }
    at.run()
    assert not at.exception
    assert at.button(key="measure_button").label == "Measure these settings"


def test_measure_command_uses_the_runtime_cli():
    from app.run_measurement import measure_command

    cmd = measure_command(
        {"model": "llama-3.2-3b", "quant": "nf4", "context": 4096, "batch": 2, "kv_dtype": "auto", "attn": "sdpa"}
    )
    assert cmd[1:4] == ["-m", "runtime", "measure"]
    assert cmd[cmd.index("--context") + 1] == "4096" and cmd[-3:] == ["--device", "cuda", "--json"]


def test_model_page(app_test):
    at = app_test("app/pages/model.py").run()
    assert not at.exception
    assert at.metric[0].value == "3.21 billion" and "3,212,749,824" in at.metric[0].delta
    assert at.metric[1].value == "112 KiB"
    arch = at.table[0].value
    assert dict(zip(arch["config.json key"], arch["Value"]))["num_key_value_heads"] == "8"
    assert "2,048, 26 layers" in _warnings(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert sum(spec["data"][0]["x"]) == 3_212_749_824


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "llama-3.1-8b"])
def test_model_page_other_presets(app_test, preset):
    at = app_test("app/pages/model.py").run()
    at.selectbox(key="model_page_preset").set_value(preset).run()
    assert not at.exception and not at.warning


def test_navigation_between_pages_keeps_settings(app_test):
    at = app_test("streamlit_app.py").run()
    at.selectbox(key=state.QUANT).set_value("nf4").run()
    at.switch_page("app/pages/model.py").run()
    assert not at.exception and at.title[0].value == "Model"
    at.switch_page("app/pages/validation.py").run()
    assert not at.exception and at.title[0].value == "Validation"
    at.switch_page("app/pages/calculator.py").run()
    assert not at.exception
    assert at.selectbox(key=state.QUANT).value == "nf4"


def test_measure_button_runs_subprocess_and_shows_result(app_test, monkeypatch):
    """With CUDA reported, the button runs the (here: fake) runtime and shows measured next to estimate."""
    import sys

    import app.run_measurement

    fake = {"weights_bytes": 123, "peak_allocated_bytes": 456, "device_used_bytes": 789}
    script = f"import json; print('loading model'); print(json.dumps({fake!r}))"
    monkeypatch.setattr(app.run_measurement, "measure_command", lambda s: [sys.executable, "-c", script])
    monkeypatch.setenv("VRAM_VALIDATION_DIR", str(FIXTURES / "empty"))
    at = app_test(VALIDATION)
    monkeypatch.setenv("VRAM_APP_CUDA", "1")
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.2-3b",
        "quant": "bf16",
        "context": 1024,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": "h100-sxm-80gb",
        "gpu_memory_bytes": None,
    }
    at.run()
    at.button(key="measure_button").click().run()
    assert not at.exception
    table = at.dataframe[-1].value
    row = table.set_index("counter").loc["peak_allocated_bytes"]
    assert row["measured"] == 456 and row["estimate"] > 0


def _markdown_values(at) -> list[str]:
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title", "header"):
        out += [str(e.value) for e in at.get(kind)]
    return out


def test_validation_page_survives_hostile_result_files(app_test, monkeypatch, tmp_path):
    """Bad JSONL lines (NaN, bools and floats as counters, lists, deep nesting, non-UTF-8) are skipped
    and listed with file:line; file names and values that look like Markdown stay plain text."""
    good = {
        "settings": {
            "model": "llama-3.2-3b",
            "quant": "bf16",
            "context": 1024,
            "batch": 1,
            "device": "[y](javascript:alert(2))",
        },
        "status": "ok",
        "weights_bytes": 6425500160,
    }
    unknown = {**good, "settings": {**good["settings"], "model": "[z](javascript:alert(3))"}}
    lines = [
        json.dumps(good).encode(),
        json.dumps(unknown).encode(),
        b'{"settings": {}, "weights_bytes": NaN}',
        b'{"settings": {}, "weights_bytes": true}',
        b'{"settings": {}, "weights_bytes": 2.5}',
        b'{"settings": [], "phases": {}}',
        b'{"settings": {}, "phases": [1]}',
        b"[1, 2]",
        b"[" * 50_000 + b"]" * 50_000,
        b"\xff\xfe\xfd",
    ]
    name = "[x](javascript:alert(1)).jsonl"
    (tmp_path / name).write_bytes(b"\n".join(lines))
    monkeypatch.setenv("VRAM_VALIDATION_DIR", str(tmp_path))
    at = app_test(VALIDATION).run()
    assert not at.exception
    assert not any("](javascript" in v for v in _markdown_values(at))
    skipped = at.expander[-1]
    assert skipped.label == "8 lines skipped"
    text = "\n".join(t.value for t in at.text)
    for i in range(3, 11):
        assert f"{name}:{i}: " in text
    assert any(f"{name}:2" in w.value.replace("\\", "") and "cannot estimate" in w.value for w in at.warning)


def test_engines_context_stops_at_the_window(app_test):
    """The engines page's context starts from the calculator's, within the model's window."""
    at = app_test("app/pages/engines.py")
    # e.g. from an uploaded config with a 1M window, then the 3B preset chosen on this page
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.2-3b",
        "quant": "bf16",
        "context": 1 << 20,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": "rtx-4090-24gb",
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }
    at.run()
    assert not at.exception
    ctx = at.number_input(key="eng_context")
    assert ctx.value == 131072 and ctx.max == 131072


def test_model_page_follows_the_calculators_model(app_test):
    at = app_test("streamlit_app.py").run()
    at.selectbox(key=state.MODEL).set_value("llama-3.1-8b").run()
    at.switch_page("app/pages/model.py").run()
    assert not at.exception and at.selectbox(key="model_page_preset").value == "llama-3.1-8b"
    at.selectbox(key="model_page_preset").set_value("llama-3.2-1b").run()  # the page's own choice holds
    assert at.selectbox(key="model_page_preset").value == "llama-3.2-1b"


def test_validation_shows_the_public_engine_logs(app_test):
    from estimator.engines import public

    at = app_test("app/pages/validation.py").run()
    assert not at.exception
    df = next(d.value for d in at.dataframe if "Within tolerance" in d.value.columns)
    assert len(df) == len(public.rows()) and not df.isna().any().any()
    assert set(df["Within tolerance"]) <= {"yes", "no", "not derivable"}
    yes = (df["Within tolerance"] == "yes").sum()
    assert yes == sum(r["within"] is True for r in public.compare()) and yes >= 20
    assert all(df["Source"].str.len() > 0)


def test_validation_shows_the_calibration(app_test):
    """The calibration section: one row per reproduced measurement, the summary line the library
    computes, and the covered count a recount of the table."""
    from estimator import calibration

    rep = calibration.report()
    at = app_test("app/pages/validation.py").run()
    assert not at.exception
    df = next(d.value for d in at.dataframe if "Range / tolerance" in d.value.columns)
    assert len(df) == len(rep["rows"]) and not df.isna().any().any()
    assert set(df["Covered"]) <= {"yes", "no", "not estimated"}
    assert (df["Covered"] == "yes").sum() == rep["summary"]["covered"]
    assert any(calibration.summary_line(rep) in m.value.replace("\\", "") for m in at.markdown)

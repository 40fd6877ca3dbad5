"""AppTest of the calculator page: default render, widgets by key, chart specs, bad uploads."""

from __future__ import annotations

import json
import math

import pytest

import estimator
from app import state
from estimator.units import GiB, format_gib


def _chart(at, title: str) -> dict:
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        if spec["layout"]["title"]["text"] == title:
            return spec
    raise AssertionError(f"no chart titled {title!r}")


def _open_tab(at, label: str):
    """Switch the calculator's detail tab (only the open tab renders its content)."""
    at.session_state[state.DETAILS_TAB] = label
    return at.run()


def _headline(at) -> str:
    return at.metric[0].value


@pytest.fixture
def at(app_test):
    return app_test("streamlit_app.py").run()


def test_default_render(at):
    """Default: Llama 3.2 3B, bf16, 8K, batch 1 on an RTX 4090, no exception, numbers from the estimator."""
    assert not at.exception and not at.error
    est = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu=state.DEFAULTS[state.GPU])
    assert _headline(at) == format_gib(est.device_used_bytes)
    assert at.metric[1].value == "Yes"
    mc = estimator.max_context("llama-3.2-3b", "bf16", gpu=state.DEFAULTS[state.GPU])
    assert at.metric[2].value == f"{mc:,} tokens"
    assert at.session_state[state.SETTINGS]["context"] == 8192
    assert at.query_params["ctx"] == "8192" and at.query_params["quant"] == "bf16"
    assert len(at.get("plotly_chart")) == 2


def test_typed_context_changes_headline_and_slider(at):
    before = _headline(at)
    at.text_input(key=state.CTX_TEXT).set_value("32k").run()
    assert not at.exception
    assert at.session_state[state.CONTEXT] == 32768
    assert at.select_slider(key=state.CTX_SLIDER).value == 32768
    est = estimator.estimate("llama-3.2-3b", "bf16", 32768, 1, gpu=state.DEFAULTS[state.GPU])
    assert _headline(at) == format_gib(est.device_used_bytes) != before
    assert at.query_params["ctx"] == "32768"


def test_typed_context_plain_number_snaps_slider(at):
    at.text_input(key=state.CTX_TEXT).set_value("100000").run()
    assert at.session_state[state.CONTEXT] == 100000
    assert at.select_slider(key=state.CTX_SLIDER).value == 98304


@pytest.mark.parametrize("text", ["abc", "0", "-5", "2M", "1.3"])
def test_bad_typed_context_shows_error_and_keeps_value(at, text):
    before = _headline(at)
    at.text_input(key=state.CTX_TEXT).set_value(text).run()
    assert not at.exception
    assert len(at.error) == 1 and "context" in at.error[0].value
    assert at.session_state[state.CONTEXT] == 8192 and _headline(at) == before


def test_slider_updates_text_field(at):
    at.select_slider(key=state.CTX_SLIDER).set_value(65536).run()
    assert at.text_input(key=state.CTX_TEXT).value == "64K"
    assert at.session_state[state.CONTEXT] == 65536


def test_quant_kv_batch_attn_change_numbers(at):
    base = estimator.estimate(gpu="rtx-4090-24gb").device_used_bytes
    at.selectbox(key=state.QUANT).set_value("nf4").run()
    nf4 = estimator.estimate(quant="nf4", gpu="rtx-4090-24gb").device_used_bytes
    assert _headline(at) == format_gib(nf4) and nf4 < base
    at.selectbox(key=state.KV_DTYPE).set_value("int4").run()
    at.number_input(key=state.BATCH).set_value(4).run()
    at.radio(key=state.ATTN).set_value("eager").run()
    assert not at.exception
    est = estimator.estimate(quant="nf4", kv_dtype="int4", batch=4, attn="eager", gpu="rtx-4090-24gb")
    assert _headline(at) == format_gib(est.device_used_bytes)
    assert at.query_params["batch"] == "4" and at.query_params["attn"] == "eager"


def test_gpu_choice_and_custom_memory(at):
    at.selectbox(key=state.GPU).set_value("gtx-1650-4gb").run()
    assert at.metric[1].value == "No"
    at.selectbox(key=state.GPU).set_value(state.CUSTOM_GPU).run()
    at.number_input(key=state.GPU_MEM_GIB).set_value(80.0).run()
    assert not at.exception and at.metric[1].value == "Yes"
    assert at.query_params["gpu"] == "custom" and at.query_params["mem"] == "80"
    spec = _chart(at, "Where the memory goes")
    assert spec["layout"]["shapes"][0]["x0"] == pytest.approx(80.0)


def test_context_chart_spec(at):
    """The memory-vs-context chart: one line per quant over 64 contexts, log x, capacity line."""
    spec = _chart(at, "Memory vs context")
    assert len(spec["data"]) == len(estimator.TRANSFORMERS_QUANTS)
    assert spec["layout"]["xaxis"]["type"] == "log"
    bf16 = next(t for t in spec["data"] if t["name"] == "BF16")
    assert len(bf16["x"]) == 64 and bf16["line"]["width"] == 4
    cap = estimator.get_gpu("rtx-4090-24gb").memory_bytes / GiB
    assert any(s["y0"] == pytest.approx(cap) for s in spec["layout"]["shapes"])


def test_breakdown_chart_spec_sums_to_headline(at):
    spec = _chart(at, "Where the memory goes")
    total = sum(t["x"][0] for t in spec["data"])
    est = estimator.estimate(gpu="rtx-4090-24gb")
    assert total == pytest.approx(est.device_used_bytes / GiB)


def test_query_string_reproduces_view(app_test):
    at = app_test("streamlit_app.py")
    at.query_params.update(
        {
            "quant": "int8",
            "ctx": "32k",
            "batch": "2",
            "gpu": "l4-24gb",
            "kv": "fp8",
            "attn": "sdpa",
            "model": "llama-3.2-1b",
        }
    )
    at.run()
    assert not at.exception
    est = estimator.estimate("llama-3.2-1b", "int8", 32768, 2, kv_dtype="fp8", gpu="l4-24gb")
    assert _headline(at) == format_gib(est.device_used_bytes)
    assert at.text_input(key=state.CTX_TEXT).value == "32K"


def test_bad_query_string_falls_back_to_defaults(app_test):
    at = app_test("streamlit_app.py")
    at.query_params.update({"quant": "q9", "ctx": "lots", "batch": "-1", "gpu": "toaster", "mem": "x"})
    at.run()
    assert not at.exception and not at.error
    assert at.session_state[state.SETTINGS]["quant"] == "bf16"


def _custom(at):
    at.selectbox(key=state.MODEL).set_value(state.CUSTOM_MODEL).run()
    return at


def test_custom_model_waits_for_a_config(at):
    _custom(at)
    assert not at.exception and not at.error
    assert "config.json" in at.info[0].value


def test_upload_valid_config(at):
    cfg = estimator.model.preset_config("llama-3.2-1b")
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("my-model.json", json.dumps(cfg).encode(), "application/json")
    )
    at.run()
    assert not at.exception and not at.error
    est = estimator.estimate("llama-3.2-1b", gpu="rtx-4090-24gb")
    assert _headline(at) == format_gib(est.device_used_bytes)
    assert at.query_params["model"] == state.CUSTOM_MODEL  # the upload itself cannot be in the URL


def test_paste_valid_config(at):
    cfg = estimator.model.preset_config("llama-3.2-3b")
    _custom(at).text_area(key=state.CONFIG_PASTE).set_value(json.dumps(cfg)).run()
    assert not at.exception and not at.error
    assert _headline(at) == format_gib(estimator.estimate(gpu="rtx-4090-24gb").device_used_bytes)


def _bad_configs():
    good = estimator.model.preset_config("llama-3.2-3b")
    missing = {k: v for k, v in good.items() if k != "num_hidden_layers"}
    return [
        pytest.param(b"this is not json {", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"[1, 2, 3]", id="json-list"),
        pytest.param(json.dumps(missing).encode(), id="missing-key"),
        pytest.param(json.dumps({**good, "hidden_size": 10**12}).encode(), id="huge-hidden"),
        pytest.param(json.dumps({**good, "num_hidden_layers": 10**9}).encode(), id="huge-layers"),
        # valid for the library (<= 4,096 layers) but over the app's per-session work cap (state.MAX_APP_LAYERS)
        pytest.param(json.dumps({**good, "num_hidden_layers": 257}).encode(), id="layers-over-app-cap"),
        pytest.param(json.dumps({**good, "vocab_size": -5}).encode(), id="negative"),
        pytest.param(json.dumps({**good, "hidden_size": "big"}).encode(), id="wrong-type"),
        pytest.param(json.dumps({**good, "num_local_experts": 8}).encode(), id="moe"),
        pytest.param(b"{" + b" " * (10 * 1024 * 1024) + b"}", id="10MB"),
    ]


@pytest.mark.parametrize("data", _bad_configs())
def test_malformed_upload_shows_error_not_traceback(at, data):
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(("config.json", data, "application/json"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("Could not read this config.json")
    assert len(at.metric) == 0


def test_app_layer_cap_names_the_field_and_value(at):
    cfg = {**estimator.model.preset_config("llama-3.2-3b"), "num_hidden_layers": 4096}
    _custom(at).text_area(key=state.CONFIG_PASTE).set_value(json.dumps(cfg)).run()
    assert not at.exception
    assert "num\\_hidden\\_layers must be at most 256" in at.error[0].value and "4,096" in at.error[0].value
    ok = {**cfg, "num_hidden_layers": state.MAX_APP_LAYERS}
    _custom(at).text_area(key=state.CONFIG_PASTE).set_value(json.dumps(ok)).run()
    assert not at.exception and not at.error


def test_malformed_paste_shows_error(at):
    _custom(at).text_area(key=state.CONFIG_PASTE).set_value('{"model_type": "llama"').run()
    assert not at.exception and "not valid JSON" in at.error[0].value


def test_export_buttons(at):
    """JSON of the estimate and CSV of the sweep are offered for download."""
    _open_tab(at, "Export")
    assert not at.exception
    dl = at.get("download_button")
    assert [d.proto.label for d in dl] == ["Estimate (JSON)", "Sweep (CSV)"]
    assert dl[0].proto.url.endswith(".json") and dl[1].proto.url.endswith(".csv")


def test_quantization_tab_table(at):
    """The quantization table at the chosen context: one row per quant, numbers from the estimator."""
    _open_tab(at, "Quantizations")
    assert not at.exception
    df = at.dataframe[0].value
    assert len(df) == len(estimator.TRANSFORMERS_QUANTS)
    row = df.set_index("Quantization").loc["bnb NF4"]
    est = estimator.estimate(quant="nf4", gpu="rtx-4090-24gb")
    assert row["Total (device used)"] == pytest.approx(est.device_used_bytes / GiB)
    assert row["Largest context"] == estimator.max_context(quant="nf4", gpu="rtx-4090-24gb")
    assert len(at.get("plotly_chart")) == 1  # the hidden chart tab did not render


def test_gpu_tab_table(at):
    _open_tab(at, "GPUs")
    assert not at.exception
    df = at.dataframe[0].value
    # every catalog card once (an alias entry, the B200 under its 192 GB name, is not repeated), by memory
    aliases = [g for g in estimator.gpu_catalog() if g.memory_source.startswith("Alias of")]
    assert len(df) == len(estimator.gpu_catalog()) - len(aliases) and len(aliases) == 1
    assert list(df["Memory"]) == sorted(df["Memory"])
    from app.inputs import gpu_label

    h100 = df.set_index("GPU").loc[gpu_label("h100-sxm-80gb")]  # the sidebar's name for the card
    assert h100["Fits"] == True  # noqa: E712 (numpy bool)
    assert h100["bf16"] == estimator.max_context(quant="bf16", gpu="h100-sxm-80gb")


def test_how_is_this_computed_tab(at):
    _open_tab(at, "Method")
    assert not at.exception
    text = " ".join(t.value.to_string() for t in at.table)  # the formulas (and the simple-rule table)
    assert "114,688 B/token" in text and "28 layers" in text


def test_upload_largest_accepted_config_renders(at):
    """A config at the app's bounds (the estimator's size bounds, layers at state.MAX_APP_LAYERS) is
    accepted and renders (no hang, no overflow)."""
    good = estimator.model.preset_config("llama-3.2-3b")
    big = {
        **good,
        "hidden_size": 1 << 20,
        "num_hidden_layers": state.MAX_APP_LAYERS,
        "vocab_size": 1 << 24,
        "intermediate_size": 1 << 22,
        "num_attention_heads": 8192,
        "num_key_value_heads": 8192,
        "head_dim": 128,
    }
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("big.json", json.dumps(big).encode(), "application/json")
    )
    at.run(timeout=120)
    assert not at.exception and not at.error
    assert at.metric[1].value == "No" and at.metric[2].value == "none"


def test_largest_context_at_the_search_limit(at):
    """On a huge custom GPU the largest context is the model's window, and the page says the whole
    window fits (the solver stops at max_position_embeddings)."""
    at.selectbox(key=state.GPU).set_value(state.CUSTOM_GPU).run()
    at.number_input(key=state.GPU_MEM_GIB).set_value(4096.0).run()
    assert not at.exception
    window = estimator.load_preset("llama-3.2-3b").max_position_embeddings
    assert window == 131072
    assert at.metric[2].value == "131,072 tokens"
    assert "the whole window fits" in at.metric[2].delta


def test_largest_context_below_the_window_names_the_window(at):
    """On the default RTX 4090 the largest context is below the window: no 'whole window' claim."""
    assert "the whole window fits" not in at.metric[2].delta
    assert "131,072-token window" in at.metric[2].delta


def test_largest_context_card_says_what_fits_for_certain(at):
    """The card's help gives the largest context whose range's high end fits (estimator.max_context
    bound="high"), below the point answer on the RTX 4090; on a huge GPU the range agrees."""
    certain = estimator.max_context(quant="bf16", gpu="rtx-4090-24gb", bound="high")
    point = estimator.max_context(quant="bf16", gpu="rtx-4090-24gb")
    assert 0 < certain < point
    assert f"up to {certain:,} tokens" in at.metric[2].help and f"{point:,} the verdict is Tight" in at.metric[2].help
    at.selectbox(key=state.GPU).set_value(state.CUSTOM_GPU).run()
    at.number_input(key=state.GPU_MEM_GIB).set_value(4096.0).run()
    assert "The range agrees" in at.metric[2].help


def _markdown_values(at) -> list[str]:
    """Source text of every element that Streamlit renders as Markdown."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title", "header"):
        out += [str(e.value) for e in at.get(kind)]
    return out


def test_typed_context_beyond_the_window_shows_error_naming_it(at):
    """The context is the window: a typed context over max_position_embeddings is refused."""
    before = _headline(at)
    at.text_input(key=state.CTX_TEXT).set_value("200k").run()
    assert not at.exception
    assert len(at.error) == 1
    assert "window" in at.error[0].value and "131,072" in at.error[0].value
    assert at.session_state[state.CONTEXT] == 8192 and _headline(at) == before
    at.text_input(key=state.CTX_TEXT).set_value("128k").run()  # exactly the window: accepted
    assert not at.exception and not at.error
    assert at.session_state[state.CONTEXT] == 131072


@pytest.mark.parametrize("text", ["32", "1", "131073", "9" * 300, "٣٢٠٠", "8k²", "[x](javascript:alert(1))"])
def test_typed_context_out_of_range_or_hostile(at, text):
    at.text_input(key=state.CTX_TEXT).set_value(text).run()
    assert not at.exception
    assert len(at.error) == 1 and "context" in at.error[0].value
    assert at.session_state[state.CONTEXT] == 8192
    assert not any("](javascript" in v for v in _markdown_values(at))


def test_context_slider_stops_at_the_window(at):
    opts = at.select_slider(key=state.CTX_SLIDER).options
    assert opts[-1] == "128K" and len(opts) == len(state.CONTEXT_STOPS)


def _short_window_config(window: int = 4096) -> bytes:
    cfg = estimator.model.preset_config("llama-3.2-1b")
    return json.dumps({**cfg, "max_position_embeddings": window}).encode()


def test_uploaded_config_window_bounds_the_context(at):
    """A config with a 4K window: the 8K context moves to 4K, the slider, the typed field and the
    chart stop at 4K, and a typed 8K names the window."""
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("short.json", _short_window_config(4096), "application/json")
    )
    at.run()
    assert not at.exception and not at.error
    assert at.session_state[state.CONTEXT] == 4096
    assert at.select_slider(key=state.CTX_SLIDER).options[-1] == "4K"
    assert any("4,096" in i.value and "window" in i.value for i in at.info)
    assert at.metric[2].value == "4,096 tokens" and "the whole window fits" in at.metric[2].delta
    xs = [x for t in _chart(at, "Memory vs context")["data"] for x in t["x"]]
    assert max(xs) == 4096 and min(xs) > state.NEW_TOKENS
    at.text_input(key=state.CTX_TEXT).set_value("8k").run()
    assert not at.exception
    assert len(at.error) == 1 and "window" in at.error[0].value and "4,096" in at.error[0].value
    assert at.session_state[state.CONTEXT] == 4096


def test_uploaded_config_with_a_window_too_short_for_any_context(at):
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("tiny.json", _short_window_config(16), "application/json")
    )
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "window" in at.error[0].value
    assert len(at.metric) == 0


HOSTILE_QUERY = [
    {"ctx": "9" * 300},
    {"ctx": "1" + "0" * 400},
    {"ctx": "²"},
    {"ctx": "٣"},
    {"ctx": "٣٢٧٦٨"},
    {"ctx": "１０２４"},
    {"ctx": "8k²"},
    {"ctx": "1e5"},
    {"ctx": "nan"},
    {"ctx": "0x2000"},
    {"ctx": "-8192"},
    {"ctx": "200k"},
    {"ctx": "32"},
    {"ctx": "\x00\n"},
    {"ctx": "x" * 100_000},
    {"batch": "٣"},
    {"batch": "9" * 300},
    {"batch": "²"},
    {"batch": "2.0"},
    {"batch": "true"},
    {"mem": "١٢"},
    {"mem": "nan"},
    {"mem": "inf"},
    {"mem": "1e400"},
    {"mem": "9" * 300},
    {"model": "x" * 100_000},
    {"gpu": "²"},
    {"quant": "[x](javascript:alert(1))"},
]


@pytest.mark.parametrize("params", HOSTILE_QUERY, ids=lambda p: f"{next(iter(p))}-{ascii(next(iter(p.values())))[:20]}")
def test_hostile_query_values_fall_back_to_defaults(app_test, params):
    """Huge integers, non-ASCII digits and garbage in the query string are ignored."""
    at = app_test("streamlit_app.py")
    at.query_params.update({"gpu": "custom", **params})
    at.run()
    assert not at.exception and not at.error
    ss = at.session_state
    assert ss[state.CONTEXT] == 8192 and ss[state.BATCH] == 1
    assert ss[state.GPU_MEM_GIB] == 24.0 and ss[state.QUANT] == "bf16" and ss[state.MODEL] == "llama-3.2-3b"
    assert at.query_params["ctx"] == "8192"


def test_query_context_within_another_presets_window(app_test):
    at = app_test("streamlit_app.py")
    at.query_params.update({"model": "llama-3.2-1b", "ctx": "131072"})
    at.run()
    assert not at.exception and not at.error
    assert at.session_state[state.CONTEXT] == 131072


def test_uploaded_file_name_is_plain_text(at):
    """A file name that is Markdown shows as text: no link in the caption."""
    cfg = estimator.model.preset_config("llama-3.2-1b")
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("[x](javascript:alert(1)).json", json.dumps(cfg).encode(), "application/json")
    )
    at.run()
    assert not at.exception and not at.error
    head = next(c.value for c in at.caption if "weights" in c.value)
    assert "](javascript" not in head and "\\[x\\]\\(javascript" in head
    assert not any("](javascript" in v for v in _markdown_values(at))


def test_config_values_in_errors_are_plain_text(at):
    cfg = {**estimator.model.preset_config("llama-3.2-1b"), "model_type": "[x](javascript:alert(1))"}
    _custom(at).file_uploader(key=state.CONFIG_UPLOAD).set_value(
        ("config.json", json.dumps(cfg).encode(), "application/json")
    )
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("Could not read this config.json")
    assert not any("](javascript" in v for v in _markdown_values(at))


def test_attention_peak_is_explained(at):
    """Eager attention at long context: the page says why activations dominate."""
    at.radio(key=state.ATTN).set_value("eager").run()
    at.text_input(key=state.CTX_TEXT).set_value("32k").run()
    assert not at.exception
    assert any("Eager attention holds the full score matrix" in i.value for i in at.info)


def _markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_recommended_gpus_are_the_smallest_that_fit(at):
    """The recommendation names catalog GPUs that fit with room to spare, smallest memory first, and
    no catalog GPU with less memory than the first one fits that way (each GPU on its own arch)."""
    from app import tables

    text = next(m for m in _markdown(at).splitlines() if m.startswith("**Recommended GPUs**")).replace("\\", "")
    cat = sorted(estimator.gpu_catalog(), key=lambda g: (g.memory_bytes, g.name))

    def answer(g):
        e = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu=g.key)
        return tables.verdict(e, g.memory_bytes)[0]

    named = [g for g in cat if tables.gpu_display_name(g.name, g.memory_bytes) in text]
    assert 1 <= len(named) <= 3 and all(answer(g) == "Yes" for g in named)
    assert all(answer(g) != "Yes" for g in cat if g.memory_bytes < named[0].memory_bytes)


def test_no_catalog_gpu_fits_says_so(at):
    at.text_input(key=state.CTX_TEXT).set_value("128k").run()
    at.number_input(key=state.BATCH).set_value(64).run()
    assert not at.exception
    assert "None of the" in _markdown(at) and "**Recommended GPUs**" not in _markdown(at)


def test_tight_fit_is_not_a_confident_yes(at):
    """The verdict is the range's (``report.fit_verdict``): "Yes" when the range's high end fits,
    "Tight" when the range straddles the memory (the estimate itself may fit or not), "No" when even
    its low end does not; the VRAM card shows the range."""
    from app import tables

    at.selectbox(key=state.GPU).set_value(state.CUSTOM_GPU).run()
    e = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1)  # generic arch, as a custom GPU
    low, point, high = e.device_used_low_bytes, e.device_used_bytes, e.device_used_high_bytes
    cents = GiB / 100  # the custom memory input has two decimals of GiB
    for mem, want in (
        (math.ceil(high / cents) / 100, "Yes"),
        (math.floor(high / cents) / 100, "Tight"),
        (math.ceil(point / cents) / 100, "Tight"),
        (math.floor(point / cents) / 100, "Tight"),
        (math.ceil(low / cents) / 100, "Tight"),
        (math.floor(low / cents) / 100, "No"),
    ):
        at.number_input(key=state.GPU_MEM_GIB).set_value(mem).run()
        assert not at.exception and at.metric[1].value == want, mem
        shown = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu_memory_bytes=int(mem * GiB))
        assert at.metric[1].value == tables.verdict(shown, int(mem * GiB))[0]
        assert f"range {tables.range_text(shown)}" in at.metric[0].delta


def _fix_buttons(at) -> dict[str, object]:
    return {b.key: b for b in at.button if str(b.key).startswith("fix_")}


def test_does_not_fit_offers_one_click_remedies_that_fit(at):
    """bf16 at 16K on an 8 GB card does not fit: each offered change alone fits (checked in
    test_remedies_each_fit_on_their_own), and clicking one applies it and turns the verdict to a fit."""
    at.selectbox(key=state.GPU).set_value("rtx-4060-8gb").run()
    at.text_input(key=state.CTX_TEXT).set_value("16k").run()
    assert at.metric[1].value == "No"
    fixes = _fix_buttons(at)
    assert {f"fix_{state.QUANT}", f"fix_{state.CONTEXT}"} <= set(fixes)
    assert all("→" in b.label and "GiB" in b.label for b in fixes.values())
    at = fixes[f"fix_{state.QUANT}"].click().run()
    assert not at.exception
    q = at.session_state[state.QUANT]
    e = estimator.estimate("llama-3.2-3b", q, 16384, 1, gpu="rtx-4060-8gb")
    assert q != "bf16" and e.fits and at.metric[1].value in ("Yes", "Tight")
    assert not _fix_buttons(at)  # it fits: nothing left to fix


def test_context_remedy_moves_the_context_widgets(at):
    at.selectbox(key=state.GPU).set_value("rtx-4060-8gb").run()
    at.text_input(key=state.CTX_TEXT).set_value("16k").run()
    at = _fix_buttons(at)[f"fix_{state.CONTEXT}"].click().run()
    mc = estimator.max_context("llama-3.2-3b", "bf16", gpu="rtx-4060-8gb")
    assert not at.exception and at.session_state[state.CONTEXT] == mc
    from app.figures import tokens_label

    assert at.text_input(key=state.CTX_TEXT).value == tokens_label(mc)
    assert at.query_params["ctx"] == str(mc) and at.metric[1].value in ("Yes", "Tight")


def test_no_single_change_fits_says_so(at):
    at.selectbox(key=state.GPU).set_value("gtx-1650-4gb").run()  # sm75: SDPA math kernel; bf16 weights > 4 GB
    assert at.metric[1].value == "No" and not _fix_buttons(at)
    assert "No single change" in _markdown(at)


def test_remedies_each_fit_on_their_own():
    """compute.remedies (pure): every change it offers fits on its own, with the bytes it shows."""
    from app import compute

    g, ctx, b = "rtx-4090-24gb", 16384, 8
    max_ctx = estimator.max_context("llama-3.2-3b", "bf16", gpu=g, batch=b)
    fixes = compute.remedies("llama-3.2-3b", "bf16", ctx, b, "auto", "sdpa", g, None, max_ctx)
    assert {state.CONTEXT, state.BATCH, state.KV_DTYPE} <= {next(iter(f["change"])) for f in fixes}
    names = {
        state.QUANT: "quant",
        state.KV_DTYPE: "kv_dtype",
        state.CONTEXT: "context",
        state.BATCH: "batch",
        state.PREFILL_CHUNK: "prefill_chunk",
    }
    for f in fixes:
        ((k, v),) = f["change"].items()
        kw = {"quant": "bf16", "context": ctx, "batch": b, "kv_dtype": "auto", names[k]: v}
        e = estimator.estimate("llama-3.2-3b", gpu=g, **kw)
        assert e.fits and e.device_used_bytes == f["device_used_bytes"], f
    assert compute.remedies("llama-3.2-3b", "bf16", 1024, 1, "auto", "sdpa", "h200-141gb", None, 131072) == []


def test_quant_choices_say_their_bits_in_plain_words(at):
    sb = at.selectbox(key=state.QUANT)
    assert sb.format_func("nf4") == "4-bit · bnb NF4" and sb.format_func("bf16") == "16-bit · BF16"
    assert sb.format_func("int8") == "8-bit · bnb LLM.int8"
    assert at.metric[0].label == "VRAM needed"


def test_keep_free_memory_shrinks_what_the_model_may_use(at):
    """Keeping memory free for the desktop: the verdict, the largest context and the recommended GPUs
    all use the GPU's memory less the kept amount; the URL carries it."""
    g = estimator.get_gpu(state.DEFAULTS[state.GPU])
    need = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu=g.key).device_used_bytes
    keep = (g.memory_bytes - need) / GiB + 0.5  # leaves 0.5 GiB less than the need
    at.number_input(key=state.KEEP_FREE_GIB).set_value(round(keep, 1)).run()
    assert not at.exception and at.metric[1].value == "No"
    assert at.query_params["free"] == f"{round(keep, 1):g}"
    usable = g.memory_bytes - int(round(keep, 1) * GiB)
    mc = estimator.max_context("llama-3.2-3b", "bf16", gpu=g.key, gpu_memory_bytes=usable)
    assert at.metric[2].value == f"{mc:,} tokens"
    assert "kept free" in at.metric[1].label


def test_keep_free_larger_than_the_gpu_is_an_error(at):
    at.selectbox(key=state.GPU).set_value("gtx-1650-4gb").run()
    at.number_input(key=state.KEEP_FREE_GIB).set_value(8.0).run()
    assert not at.exception and at.error and "Keep free" in at.error[0].value


def test_keep_free_query_parameter():
    from app.inputs import parse_query

    assert parse_query({"free": "1.5"})[state.KEEP_FREE_GIB] == 1.5
    for bad in ("-1", "65", "nan", "1e3", "١", "x" * 100):
        assert state.KEEP_FREE_GIB not in parse_query({"free": bad}), bad


def test_gpu_tab_with_more_kept_free_than_small_cards_hold(at):
    at.number_input(key=state.KEEP_FREE_GIB).set_value(8.0).run()
    at = _open_tab(at, "GPUs")
    assert not at.exception and not at.error
    rows = at.dataframe[0].value
    small = rows[rows["Memory"] <= 8.0]
    assert len(small) and not small["Fits"].any()  # a card with no memory left fits nothing


def test_pre_sm80_math_fallback_is_explained_and_chunking_fixes_it(at):
    """Tesla T4 (sm75), nf4 at 8K: SDPA's math kernel holds the fp32 score matrix, so it does not fit
    16 GB; the note gives the mechanism and its source; prefill chunks are offered and fit."""
    at.selectbox(key=state.GPU).set_value("t4-16gb").run()
    at.selectbox(key=state.QUANT).set_value("nf4").run()
    assert at.metric[1].value == "No"
    note = " ".join(i.value for i in at.info)
    assert "math kernel" in note and "enable_gqa" in note and "sdp_utils.cpp" in note
    at = _fix_buttons(at)[f"fix_{state.PREFILL_CHUNK}"].click().run()
    chunk = at.session_state[state.PREFILL_CHUNK]
    e = estimator.estimate("llama-3.2-3b", "nf4", 8192, 1, gpu="t4-16gb", prefill_chunk=chunk)
    assert not at.exception and e.fits and at.metric[1].value in ("Yes", "Tight")
    assert _headline(at) == format_gib(e.device_used_bytes) and at.query_params["chunk"] == str(chunk)


def test_prefill_chunk_query_parameter():
    from app.inputs import parse_query

    assert parse_query({"chunk": "1024"})[state.PREFILL_CHUNK] == 1024
    for bad in ("1000", "-1", "１０２４", "99999999", "x"):
        assert state.PREFILL_CHUNK not in parse_query({"chunk": bad}), bad


def test_headline_gives_gib_and_the_gb_cards_are_sold_in(at):
    from app import tables

    e = estimator.estimate("llama-3.2-3b", "bf16", 8192, 1, gpu=state.DEFAULTS[state.GPU])
    need = e.device_used_bytes
    assert _headline(at) == format_gib(need)
    assert at.metric[0].delta == f"= {need / 1e9:.2f} GB · range {tables.range_text(e)}"
    assert tables.range_text(e) in at.metric[0].help
    assert f"{100 * need / e.gpu_memory_bytes:.0f}% of RTX 4090" in at.metric[0].help


def test_custom_model_link_asks_for_the_config_again(app_test):
    at = app_test("streamlit_app.py")
    at.query_params["model"] = "custom"
    at.run()
    assert not at.exception and at.selectbox(key=state.MODEL).value == state.CUSTOM_MODEL
    assert any("a link cannot carry the file" in i.value for i in at.info)


def test_one_estimate_one_number_in_every_tab(at):
    """The seed question (3B, 4-bit, 8K): the headline, the quantization table's total, the simple-rule
    table's sum and the prefill row of the phases table all show the same 2-decimal GiB number."""
    at.selectbox(key=state.QUANT).set_value("nf4").run()
    head = _headline(at)
    rule = next(t.value for t in at.table if "Term" in t.value.columns)
    assert f"{rule['GiB'].iloc[-1]} GiB" == head
    _open_tab(at, "Quantizations")
    total = at.dataframe[0].value.set_index("Quantization").loc["bnb NF4", "Total (device used)"]
    assert f"{total:.2f} GiB" == head
    _open_tab(at, "Method")
    phases = next(d.value for d in at.dataframe if "Phase" in d.value.columns)
    assert f"{phases['Device used'].max():.2f} GiB" == head

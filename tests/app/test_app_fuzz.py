"""Fuzz the calculator through AppTest: random query strings and typed contexts never raise.

Every query parameter the app reads (``app.state.QUERY_KEYS``) gets valid values, huge integers,
non-ASCII digits and garbage; a bad value is ignored (the default stays). A typed context is
accepted within the model's window or refused with an ``st.error``; never a traceback.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estimator
from app import state
from app.compute import gpu_keys

ROOT_APP = "streamlit_app.py"

_junk = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=8),  # '٣', '²', '１'
    st.integers(10**19, 10**400).map(str),  # huge integers
    st.integers(-(10**6), 0).map(str),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "1e400",
            "1e5",
            "0x10",
            "²",
            "٣",
            "١٢٨k",
            "8k²",
            "１０２４",
            "[x](javascript:alert(1))",
            "<b>x</b>",
            "$x$",
            "\x00",
            " ",
            "9" * 300,
        ]
    ),
)
_tokens = st.one_of(
    st.integers(state.MIN_CONTEXT, 131072).map(str),
    st.integers(1, 128).map(lambda k: f"{k}k"),
    st.integers(1, 2**41).map(str),
    _junk,
)
QUERY = {
    "model": st.one_of(st.sampled_from(estimator.PRESETS), _junk),
    "quant": st.one_of(st.sampled_from(estimator.TRANSFORMERS_QUANTS), _junk),
    "kv": st.one_of(st.sampled_from(estimator.KV_DTYPES), _junk),
    "ctx": _tokens,
    "batch": st.one_of(st.integers(-5, 2000).map(str), _junk),
    "attn": st.one_of(st.sampled_from(["sdpa", "eager"]), _junk),
    "gpu": st.one_of(st.sampled_from([*gpu_keys(), state.CUSTOM_GPU]), _junk),
    "mem": st.one_of(st.floats(0, 5000).map(lambda x: f"{x:g}"), _junk),
}


def test_fuzz_covers_every_query_key():
    assert set(QUERY) == set(state.QUERY_KEYS)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(params=st.fixed_dictionaries({}, optional=QUERY), typed=_tokens)
def test_random_query_and_typed_context_never_raise(app_test, params, typed):
    at = app_test(ROOT_APP)
    at.query_params.update(params)
    at.run()
    assert not at.exception
    assert not at.error  # a bad query value is ignored, not an error
    ss = at.session_state
    window = estimator.load_preset(ss[state.MODEL]).max_position_embeddings
    assert state.MIN_CONTEXT <= ss[state.CONTEXT] <= window
    before = ss[state.CONTEXT]

    at.text_input(key=state.CTX_TEXT).set_value(typed).run()
    assert not at.exception
    ss = at.session_state
    if ss[state.CTX_ERROR]:
        assert ss[state.CONTEXT] == before
        assert len(at.error) == 1 and "context" in at.error[0].value
    else:
        assert not at.error
        assert state.MIN_CONTEXT <= ss[state.CONTEXT] <= window
        assert at.query_params["ctx"] == str(ss[state.CONTEXT])


@pytest.mark.parametrize("typed", ["١٢٨k", "²", "9" * 300, "128k", "131073"])
def test_typed_unicode_and_boundary_contexts(app_test, typed):
    at = app_test(ROOT_APP).run()
    at.text_input(key=state.CTX_TEXT).set_value(typed).run()
    assert not at.exception
    if typed == "128k":
        assert not at.error and at.session_state[state.CONTEXT] == 131072
    else:
        assert len(at.error) == 1 and at.session_state[state.CONTEXT] == 8192

"""Fuzz the runtime's settings and CLI argument checks: bad input is a SettingsError (exit 2,
one line naming the field), never another exception or a traceback."""

from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.__main__ import main
from runtime.settings import DEFAULTS, SettingsError, make_settings

TEXT = st.one_of(
    st.sampled_from(
        [
            "8192",
            "8K",
            "0",
            "-1",
            "²",
            "٣",
            "1" * 400,
            "nan",
            "",
            "8k\n",
            "bf16",
            "nf4",
            "cuda",
            "cpu",
            "trace",
            "sdpa",
            "eager",
            "random",
            "llama-3.2-1b",
            "../x",
        ]
    ),
    st.text(max_size=8),
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 1 << 21),
    st.integers(10**30, 10**40),
    st.floats(allow_nan=True),
    TEXT,
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(DEFAULTS)), VALUES, max_size=4))
def test_make_settings_returns_or_names_the_field(kw):
    try:
        s = make_settings(**kw)
    except SettingsError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        return
    assert 1 <= s["new_tokens"] + 1 <= s["context"]


OPTIONS = [
    "--quant",
    "--context",
    "--batch",
    "--kv-dtype",
    "--attn",
    "--new-tokens",
    "--device",
    "--weights",
    "--bnb-compute-dtype",
    "--logits",
    "--prefill-chunk",
    "--model",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), TEXT), min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_measure_cli_bad_input_is_one_line(pairs):
    """Only argument sets that fail validation are run (a valid one would start a measurement)."""
    kw = {o[2:].replace("-", "_"): v for o, v in pairs}
    try:
        make_settings(**{"device": "trace", **kw})
        return  # valid: measuring it is the other tests' job
    except SettingsError:
        pass
    argv = ["measure", "--device", "trace", *[x for p in pairs for x in p]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())

"""AppTest of the "Check a log" page: a pasted log gives a table of logged vs predicted; bad input is
an st.error with one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import estimator
from estimator.report import compare_record, estimate_arguments

ROOT = Path(__file__).resolve().parents[2]
PAGE = "app/pages/check.py"


def test_empty_page_asks_for_a_log(app_test):
    at = app_test(PAGE).run()
    assert not at.exception and any("Paste or upload" in i.value for i in at.info)


def test_runtime_jsonl_is_checked_point_by_point(app_test):
    import json

    lines = (ROOT / "validation" / "trace" / "sweep.jsonl").read_text().splitlines()[:2]
    at = app_test(PAGE).run()
    at.text_area(key="check_paste").input("\n".join(lines)).run()
    assert not at.exception and not at.error
    df = at.dataframe[0].value
    rec = json.loads(lines[0])
    want = compare_record(rec, estimator.estimate(**estimate_arguments(rec)))
    assert len(df) == 2 * len(want)
    w = df.iloc[0]
    assert w["Logged"] == f"{want['weights_bytes']['measured'] / 2**30:,.3f} GiB" and w["Error"] == "+0.0%"
    assert not df.isin(["", "None"]).any().any()


def test_unrecognised_text_is_one_error_line(app_test):
    at = app_test(PAGE).run()
    at.text_area(key="check_paste").input("hello\nworld").run()
    assert not at.exception
    assert len(at.error) == 1 and "no vLLM, llama.cpp" in at.error[0].value.replace("\\", "")


def test_page_is_in_the_navigation(app_test):
    at = app_test("streamlit_app.py").run()
    at.switch_page(PAGE).run()
    assert not at.exception and at.title[0].value == "Check a log"

"""Streamlit front end of the estimator: pages, widgets, figures and tables.

Only ``app/pages/*`` and ``app/inputs.py`` import Streamlit's widgets; ``figures``, ``tables`` and
``results`` (measured result files and their comparison) are pure functions of estimator output, tested without Streamlit.
"""

import gc

_frozen = False


def freeze_imports_once() -> None:
    """Once per process, after the first script run has imported everything (modules, plotly's
    validators, the estimator's data), move every object alive into the collector's permanent
    generation (``gc.freeze``): no later collection traverses them (see runner.postScriptGC in
    .streamlit/config.toml). A module flag, not ``gc.get_freeze_count()``: that walks the frozen
    list (17 ms a call here)."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True

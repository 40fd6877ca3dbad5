"""GPU memory calculator for LLM inference: `streamlit run streamlit_app.py`."""

from pathlib import Path

import streamlit as st

from app import freeze_imports_once

PAGES = Path(__file__).parent / "app" / "pages"

st.set_page_config(page_title="LLM GPU memory calculator", page_icon=":material/memory:", layout="wide")
# On a phone the sidebar (every input) starts collapsed behind a bare "»": name it.
st.html(
    "<style>[data-testid='stExpandSidebarButton']::after{content:'Settings';font-size:1rem;"
    "margin-left:0.3rem;font-weight:600}</style>"
)
pages = [
    st.Page(PAGES / "calculator.py", title="Calculator", icon=":material/calculate:", default=True),
    st.Page(PAGES / "validation.py", title="Validation", icon=":material/fact_check:"),
    st.Page(PAGES / "model.py", title="Model", icon=":material/account_tree:"),
    st.Page(PAGES / "engines.py", title="Engines", icon=":material/compare_arrows:"),
    st.Page(PAGES / "check.py", title="Check a log", icon=":material/troubleshoot:"),
]
st.navigation(pages).run()
freeze_imports_once()  # the first run's objects leave the garbage collector's work

"""Streamlit front end of the estimator: pages, widgets, figures and tables.

Only ``app/pages/*`` and ``app/inputs.py`` import Streamlit's widgets; ``figures``, ``tables`` and
``measurements`` are pure functions of estimator output, tested without Streamlit.
"""

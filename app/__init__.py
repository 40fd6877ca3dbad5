"""Streamlit front end of the estimator: pages, widgets, figures and tables.

Only ``app/pages/*`` and ``app/inputs.py`` import Streamlit's widgets; ``figures``, ``tables`` and
``results`` (measured result files and their comparison) are pure functions of estimator output, tested without Streamlit.
"""

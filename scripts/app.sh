#!/usr/bin/env bash
# One command: set up the estimator and the app on a fresh machine (no GPU, no torch), then start it.
# Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh app
exec .venv/bin/python -m streamlit run streamlit_app.py --browser.gatherUsageStats false "$@"

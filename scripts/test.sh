#!/usr/bin/env bash
# One command: set everything up on a fresh machine, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m ruff check --quiet .      # lint (pyproject.toml [tool.ruff.lint])
.venv/bin/python -m ruff format --check --quiet .   # format
.venv/bin/python -m mypy                       # types: strict on estimator/ (pyproject.toml [tool.mypy])
exec .venv/bin/python -m pytest "$@"

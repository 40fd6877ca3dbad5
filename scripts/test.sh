#!/usr/bin/env bash
# One command: set everything up on a fresh machine, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m ruff check --quiet .   # lint gate (pyproject.toml [tool.ruff.lint])
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Create .venv and install what a part of the project needs. Idempotent; safe to re-run.
#   bash scripts/setup.sh app    -> estimator + Streamlit app (no torch)
#   bash scripts/setup.sh test   -> everything the test suite needs (CPU torch, transformers,
#                                   bitsandbytes, app, engines, pytest, Playwright + Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-app}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
case "$what" in
  app)
    pip_install -e ".[app]"
    ;;
  test)
    # Torch first, pinned: a plain "torch" requirement with no torch installed would pull a
    # multi-GB CUDA build. On a GPU machine install the torch that matches its CUDA first.
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
      pip_install "torch==${TORCH_VERSION:-2.13.0}"
    fi
    pip_install -e ".[app,runtime,engines,test]"
    # Headless Chromium for the end-to-end browser test (Debian package; never `playwright install`).
    if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "note: could not install chromium; the browser test will be skipped" >&2
    fi
    ;;
  *)
    echo "usage: bash scripts/setup.sh app|test" >&2
    exit 2
    ;;
esac

"""Shared fixtures of the app tests: repo root on sys.path, AppTest factory, result fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def app_test(monkeypatch):
    """``app_test(path)`` -> an AppTest of a script under the repo root, with no CUDA check."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VRAM_APP_CUDA", "0")

    def make(path: str = "streamlit_app.py", timeout: float = 60) -> AppTest:
        return AppTest.from_file(str(ROOT / path), default_timeout=timeout)

    return make

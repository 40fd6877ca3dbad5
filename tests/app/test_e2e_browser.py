"""End-to-end: a real headless Chromium (Debian's, driven by Playwright) against `streamlit run`.

Starts the server on 127.0.0.1 at a free port, changes the context in the typed field, checks
that the headline number changes, and saves screenshots to artifacts/ (and docs/screenshots/
for the README when UPDATE_SCREENSHOTS=1). Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
# refreshed under docs/screenshots/ with UPDATE_SCREENSHOTS=1
README_SHOTS = {"calculator.png", "engines.png", "phone-settings-open.png"}
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`streamlit run streamlit_app.py` on 127.0.0.1; yields its base URL, always stopped."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-e2e.log", "w")  # noqa: SIM115 (closed in finally)
    env = {
        **os.environ,
        "VRAM_APP_CUDA": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "streamlit_app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def _headline(page) -> str:
    return page.locator('[data-testid="stMetricValue"]').first.inner_text()


def _wait_charts(page, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}", timeout=60_000)
    page.wait_for_timeout(700)


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and name in README_SHOTS:
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        vw = page.viewport_size or {"width": 1440, "height": 1300}
        page.screenshot(
            path=str(DOCS_SHOTS / name), clip={"x": 0, "y": 0, "width": vw["width"], "height": min(vw["height"], 1300)}
        )


def test_browser_context_changes_headline(server, browser):
    """Typing a new context in the real browser changes the headline memory number."""
    page = browser.new_page(viewport={"width": 1440, "height": 1700})
    page.goto(server, wait_until="networkidle")
    page.get_by_text("Will it fit?").wait_for(timeout=60_000)
    _wait_charts(page, 2)
    before = _headline(page)
    assert "GiB" in before
    _shot(page, "calculator.png")

    field = page.get_by_label("Exact context", exact=True).and_(page.locator("input"))
    field.fill("64k")
    field.press("Enter")
    page.wait_for_function(
        "before => { const el = document.querySelector('[data-testid=\"stMetricValue\"]');"
        " return el && el.innerText !== before; }",
        arg=before,
        timeout=30_000,
    )
    after = _headline(page)
    assert after != before and "GiB" in after
    assert "ctx=65536" in page.url
    _wait_charts(page, 2)
    _shot(page, "calculator-64k.png")
    page.close()


def test_browser_other_pages_render(server, browser):
    """The validation and model pages render in the browser without an exception box."""
    page = browser.new_page(viewport={"width": 1440, "height": 1700})
    for path, text, shot in (
        ("/validation", "Validation", "validation.png"),
        ("/model", "Where the parameters are", "model.png"),
        ("/engines", "Why the numbers differ", "engines.png"),
        ("/check", "Paste or upload a log", "check.png"),
    ):
        page.goto(server + path, wait_until="networkidle")
        page.get_by_text(text).first.wait_for(timeout=60_000)
        page.wait_for_timeout(800)
        assert page.locator('[data-testid="stException"]').count() == 0
        _shot(page, shot)
    page.close()


# The verdict card's value, found by its label (during a rerun the metric list can briefly hold
# other cards, so a position is not enough).
_VERDICT_JS = (
    "() => { for (const m of document.querySelectorAll('[data-testid=\"stMetric\"]')) {"
    " const l = m.querySelector('[data-testid=\"stMetricLabel\"]');"
    " const v = m.querySelector('[data-testid=\"stMetricValue\"]');"
    " if (l && v && l.innerText.includes('Fits on')) return v.innerText.trim(); } return null; }"
)


def _verdict(page) -> str:
    return page.evaluate(_VERDICT_JS)


def _open(browser, url: str, phone: bool):
    page = browser.new_page(
        viewport={"width": 390, "height": 844} if phone else {"width": 1440, "height": 1700},
        is_mobile=phone,
        has_touch=phone,
    )
    page.goto(url, wait_until="networkidle")
    page.get_by_text("Will it fit?").wait_for(timeout=60_000)
    page.locator('[data-testid="stMetricValue"]').nth(1).wait_for(timeout=60_000)
    return page


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_browser_newcomer_questions(server, browser, phone):
    """The newcomer's questions, asked through the page address on a desktop and a phone viewport:
    4-bit at 8K on an 8 GB laptop GPU (the verdict is the estimator's), and bf16 at 128K on an
    RTX 4090 (does not fit; the recommended GPUs are named)."""
    import estimator
    from app import tables

    tag = "phone" if phone else "desktop"
    page = _open(browser, f"{server}/?quant=nf4&ctx=8192&gpu=rtx-4060-laptop-8gb", phone)
    e = estimator.estimate("llama-3.2-3b", "nf4", 8192, 1, gpu="rtx-4060-laptop-8gb")
    assert _verdict(page) == tables.verdict(e, e.gpu_memory_bytes)[0]
    assert page.locator('[data-testid="stException"]').count() == 0
    _shot(page, f"newcomer-laptop-{tag}.png")
    page.close()

    page = _open(browser, f"{server}/?quant=bf16&ctx=131072&gpu=rtx-4090-24gb", phone)
    assert _verdict(page) == "No"
    rec = page.locator("p", has_text="Recommended GPUs").first
    rec.wait_for(timeout=30_000)
    from app import compute

    best = compute.fitting_gpus("llama-3.2-3b", "bf16", 131072, 1, "auto", "sdpa")
    from app.tables import gpu_display_name

    # the smallest card that fits, named as in the sidebar
    assert best and gpu_display_name(best[0]["name"], best[0]["memory_bytes"]) in rec.inner_text()
    _shot(page, f"newcomer-128k-{tag}.png")
    page.close()


def test_browser_does_not_fit_to_one_click_remedy(server, browser):
    """Tesla T4, 4-bit, 8K: 'No' (SDPA's math kernel on sm75); one click on the chunked-prefill
    remedy and the verdict turns to a fit."""
    import re

    page = _open(browser, f"{server}/?quant=nf4&ctx=8192&gpu=t4-16gb", phone=False)
    assert _verdict(page) == "No"
    page.get_by_role("button", name=re.compile("prefill in chunks")).click()
    page.wait_for_function(f"() => ['Yes', 'Tight'].includes(({_VERDICT_JS})())", timeout=30_000)
    assert _verdict(page) in ("Yes", "Tight") and "chunk=" in page.url
    _shot(page, "remedy-t4.png")
    page.close()


def test_browser_phone_reaches_settings_and_every_tab(server, browser):
    """At 390 px the collapsed sidebar's button says "Settings" and opens the inputs; the five detail
    tabs fit the width (none scrolled off-screen), and the Export tab opens its downloads."""
    page = _open(browser, server + "/", phone=True)
    button = page.locator('[data-testid="stExpandSidebarButton"]')
    label = button.evaluate("e => getComputedStyle(e, '::after').content")
    assert label == '"Settings"'
    tabs = page.locator('[data-testid="stTab"]')
    assert tabs.count() == 5
    for i in range(5):
        box = tabs.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (tabs.nth(i).inner_text(), box)
    tabs.nth(4).click()
    page.get_by_text("Estimate (JSON)").wait_for(timeout=30_000)
    button.click()
    page.locator('[data-testid="stSidebar"]').get_by_text("Weight quantization").first.wait_for(
        state="visible", timeout=30_000
    )
    assert page.locator('[data-testid="stException"]').count() == 0
    page.wait_for_timeout(1000)  # the sidebar slides in
    _shot(page, "phone-settings-open.png")
    page.close()

"""Server cost per interaction, measured in real browsers (Playwright + headless Chromium).

Starts the calculator (``streamlit run``) or targets a running one (``--url``), drives N concurrent
browser sessions through a realistic script (open the page, change model, quantization, context and
GPU, open each tab, download the estimate) for ``--rounds`` rounds, and reports per interaction
kind: the server's CPU seconds per interaction and the latency as a user sees it (action to the
end of the rerun it caused), p50 / p95 / max, and errors.

    .venv/bin/python benchmarks/bench_load.py --sessions 1 --rounds 3      # cost per interaction
    .venv/bin/python benchmarks/bench_load.py --sessions 20 --rounds 2     # latency under load
    .venv/bin/python benchmarks/bench_load.py --url https://calc.example.org --sessions 10

How it measures:
- Latency: before each action the page installs a MutationObserver on Streamlit's
  ``[data-testid=stApp]`` ``data-test-script-state`` attribute; the interaction ends when the state
  has been "running" and is "notRunning" again with no stale element left (``data-stale=true``).
  A page load ends when the headline card and the first chart are drawn.
- Server CPU: user + system time of the server process (``/proc/PID/stat``; all its threads)
  before and after. With one session the interactions run one at a time, so each one's CPU is
  exactly its own; with many, CPU per interaction is the total over the run divided by the number
  of interactions of all kinds (reported as ``all``), since concurrent reruns cannot be told apart.
- Separation on a small machine: when the benchmark starts the server itself, the server is pinned
  to CPU 0 and this process (and so the browsers it launches) to the other CPUs
  (``os.sched_setaffinity``), so the browsers do not steal the server's core; the JSON records the
  CPUs each side had. With ``--url`` only latency is measured (server CPU is not visible), unless
  ``--server-pid`` names a local server process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TICKS = os.sysconf("SC_CLK_TCK")

# MutationObserver: records that a rerun started after the action (state -> "running").
_ARM_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__benchSawRun = false;
  if (window.__benchObs) window.__benchObs.disconnect();
  window.__benchObs = new MutationObserver(() => {
    if (app.getAttribute('data-test-script-state') === 'running') window.__benchSawRun = true;
  });
  window.__benchObs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
_DONE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return window.__benchSawRun && app.getAttribute('data-test-script-state') === 'notRunning'
    && !document.querySelector('[data-stale="true"]');
}"""
_LOADED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-script-state') === 'notRunning'
    && document.querySelectorAll('[data-testid="stMetricValue"]').length > 0
    && document.querySelectorAll('.js-plotly-plot .main-svg').length > 0;
}"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of stat(5))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, cpus: set[int] | None) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "streamlit_app.py",
        "--server.headless=true",
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
    ]
    env = {**os.environ, "VRAM_APP_CUDA": "0"}

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=1).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start within 60 s")


# --- one session's script ------------------------------------------------------------------------


def _select(page: Any, label: str, text: str) -> None:
    box = page.locator(f'[data-testid="stSelectbox"] input[aria-label="{label}"]')
    box.click()
    page.get_by_role("option", name=text, exact=False).first.click()


def script(page: Any, round_: int) -> list[tuple[str, Any]]:
    """The interactions of one round, each (kind, action). Alternate values per round so that every
    action changes something (a real change, a real rerun)."""
    even = round_ % 2 == 0
    tabs = ["Quantizations", "GPUs", "Method", "Export", "Context chart"]
    steps: list[tuple[str, Any]] = [
        ("model", lambda: _select(page, "Model", "Llama 3.1 8B" if even else "Llama 3.2 3B")),
        ("quant", lambda: _select(page, "Weight quantization", "NF4" if even else "BF16")),
        ("context", lambda: _fill(page, "Exact context", "32k" if even else "8k")),
        ("gpu", lambda: _select(page, "GPU", "RTX 4090" if even else "RTX 3060")),
    ]
    for t in tabs:
        steps.append(("tab", lambda t=t: page.get_by_role("tab", name=t).click()))
        if t == "Export":
            steps.append(("export", lambda: page.get_by_role("button", name="Estimate (JSON)").click()))
    return steps


def _fill(page: Any, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True).and_(page.locator("input"))
    field.fill(value)
    field.press("Enter")


def run_session(
    browser: Any, url: str, rounds: int, out: list[dict[str, Any]], errors: list[str], start: threading.Barrier
) -> None:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    try:
        start.wait()
        t0 = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(_LOADED_JS, timeout=120_000, polling=50)
        out.append({"kind": "load", "s": time.perf_counter() - t0, "t": t0})
        for r in range(rounds):
            for kind, action in script(page, r):
                page.evaluate(_ARM_JS)
                t0 = time.perf_counter()
                try:
                    action()
                    page.wait_for_function(_DONE_JS, timeout=60_000, polling=20)
                except Exception as e:  # a timeout or a missing element: counted, the session goes on
                    errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                    continue
                out.append({"kind": kind, "s": time.perf_counter() - t0, "t": t0})
    except Exception as e:
        errors.append(f"session: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    finally:
        ctx.close()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    kinds: dict[str, list[float]] = {}
    for s in samples:
        kinds.setdefault(s["kind"], []).append(s["s"])
        if s["kind"] != "load":
            kinds.setdefault("update", []).append(s["s"])
    return {
        k: {"n": len(v), "p50_s": statistics.median(v), "p95_s": _pct(v, 0.95), "max_s": max(v)}
        for k, v in sorted(kinds.items())
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running calculator (default: start one here)")
    p.add_argument("--server-pid", type=int, help="with --url: a local server process whose CPU to count")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the result here too")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if len(cpus) > 1 and not a.url else None
    proc = None
    if a.url:
        url, pid = a.url.rstrip("/"), a.server_pid
    else:
        port = _free_port()
        proc = start_server(port, server_cpus)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
        if server_cpus:
            os.sched_setaffinity(0, set(cpus[1:]))  # the browsers inherit this
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            )
            # one warm-up session: imports, caches and the first script run are not a user's cost
            run_session(browser, url, 1, [], [], threading.Barrier(1))
            per_session: list[list[dict[str, Any]]] = [[] for _ in range(a.sessions)]
            barrier = threading.Barrier(a.sessions)
            cpu0 = cpu_seconds(pid) if pid else None
            rss0 = rss_bytes(pid) if pid else None
            if a.sessions == 1:
                run_one(browser, url, a.rounds, per_session[0], errors, pid)
            else:
                # Playwright's sync API is bound to its thread: one browser per session thread
                threads = []
                for i in range(a.sessions):
                    t = threading.Thread(
                        target=_threaded_session, args=(url, a.rounds, per_session[i], errors, barrier)
                    )
                    threads.append(t)
                    t.start()
                for t in threads:
                    t.join()
            cpu1 = cpu_seconds(pid) if pid else None
            rss1 = rss_bytes(pid) if pid else None
            browser.close()
            samples = [s for ss in per_session for s in ss]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    result: dict[str, Any] = {
        "url": url if a.url else "local",
        "sessions": a.sessions,
        "rounds": a.rounds,
        "interactions": len(samples),
        "errors": errors,
        "latency": summarise(samples),
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "browser_cpus": sorted(os.sched_getaffinity(0)),
        "machine_cpus": os.cpu_count(),
    }
    if cpu0 is not None and cpu1 is not None:
        result["server_cpu_s_total"] = round(cpu1 - cpu0, 3)
        result["server_cpu_s_per_interaction"] = round((cpu1 - cpu0) / max(1, len(samples)), 4)
        cpu_by_kind: dict[str, list[float]] = {}
        for s in samples:
            if "cpu_s" in s:
                cpu_by_kind.setdefault(s["kind"], []).append(s["cpu_s"])
        result["server_cpu_s"] = {
            k: {"n": len(v), "median": round(statistics.median(v), 4), "max": round(max(v), 4)}
            for k, v in sorted(cpu_by_kind.items())
        }
        result["server_rss_bytes"] = {"before": rss0, "after": rss1}
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 1 if errors else 0


def run_one(browser: Any, url: str, rounds: int, out: list[dict[str, Any]], errors: list[str], pid: int | None) -> None:
    """One session, one interaction at a time, with the server CPU of each (the server is idle
    between them: nothing else talks to it)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = ctx.new_page()

    def settle() -> float | None:
        # the server finishes its rerun before the browser draws it; wait out the last messages
        time.sleep(0.3)
        return cpu_seconds(pid) if pid else None

    try:
        c0 = cpu_seconds(pid) if pid else None
        t0 = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(_LOADED_JS, timeout=120_000, polling=50)
        dt = time.perf_counter() - t0
        c1 = settle()
        out.append({"kind": "load", "s": dt, "t": t0, **({"cpu_s": c1 - c0} if c0 is not None and c1 else {})})
        for r in range(rounds):
            for kind, action in script(page, r):
                page.evaluate(_ARM_JS)
                c0 = cpu_seconds(pid) if pid else None
                t0 = time.perf_counter()
                try:
                    action()
                    page.wait_for_function(_DONE_JS, timeout=60_000, polling=20)
                except Exception as e:
                    errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                    continue
                dt = time.perf_counter() - t0
                c1 = settle()
                out.append({"kind": kind, "s": dt, "t": t0, **({"cpu_s": c1 - c0} if c0 is not None and c1 else {})})
    finally:
        ctx.close()


def _threaded_session(
    url: str, rounds: int, out: list[dict[str, Any]], errors: list[str], barrier: threading.Barrier
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            run_session(browser, url, rounds, out, errors, barrier)
        finally:
            browser.close()


if __name__ == "__main__":
    raise SystemExit(main())

"""Server cost per interaction, measured in real browsers (Playwright + headless Chromium).

Starts the calculator (``streamlit run``) or targets a running one (``--url``), drives N concurrent
browser sessions through a realistic script (open the page, change model, quantization, context and
GPU, open each tab, download the estimate) for ``--rounds`` rounds, and reports per interaction
kind: the server's CPU seconds per interaction and the latency as a user sees it (action to the
end of the rerun it caused), p50 / p95 / max, and errors.

    .venv/bin/python benchmarks/bench_load.py --sessions 1 --rounds 3      # cost per interaction
    .venv/bin/python benchmarks/bench_load.py --sessions 20 --rounds 1 --think-s 2   # under load
    .venv/bin/python benchmarks/bench_load.py --url https://calc.example.org --sessions 10

How it measures:
- Latency: before each action the page installs a MutationObserver on Streamlit's
  ``[data-testid=stApp]`` ``data-test-script-state`` attribute; the interaction ends when the state
  has been "running" and is "notRunning" again with no stale element left (``data-stale=true``).
  A page load ends when the headline card and the first chart are drawn.
- Server CPU: user + system time of the server process (``/proc/PID/stat``; all its threads, in
  clock ticks of 10 ms) before and after. With one session the interactions run one at a time, so
  each one's CPU is its own (``server_cpu_s`` per kind); with many, only the total over the run and
  its mean per interaction, since concurrent reruns cannot be told apart.
- Many sessions run in one Chromium (a browser context each), started ``--ramp-s`` apart, each
  pausing ``--think-s`` before every action; a session's latency includes its page's own
  rendering, so on a small machine the browsers' core limits it too (the JSON says which CPUs each
  side had).
- Separation on a small machine: when the benchmark starts the server itself, the server is pinned
  to CPU 0 and this process (and so the browsers it launches) to the other CPUs
  (``os.sched_setaffinity``), so the browsers do not steal the server's core; the JSON records the
  CPUs each side had. With ``--url`` only latency is measured (server CPU is not visible), unless
  ``--server-pid`` names a local server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
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


async def _select(page: Any, label: str, text: str) -> None:
    box = page.locator(f'[data-testid="stSelectbox"] input[aria-label="{label}"]')
    await box.click()
    await box.press_sequentially(text)  # the list is virtualised: filter it so the option is drawn
    await page.get_by_role("option", name=text, exact=False).first.click()


async def _fill(page: Any, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True).and_(page.locator("input"))
    await field.fill(value)
    await field.press("Enter")


def script(page: Any, round_: int) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """The interactions of one round, each (kind, action). Values alternate per round so that every
    action changes something (a real change, a real rerun)."""
    even = round_ % 2 == 0
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("model", lambda: _select(page, "Model", "Llama 3.1 8B" if even else "Llama 3.2 3B")),
        ("quant", lambda: _select(page, "Weight quantization", "NF4" if even else "BF16")),
        ("context", lambda: _fill(page, "Exact context", "32k" if even else "8k")),
        ("gpu", lambda: _select(page, "GPU", "RTX 3060" if even else "RTX 4090")),
    ]
    for t in ("Quantizations", "GPUs", "Method", "Export", "Context chart"):
        steps.append(("tab", lambda t=t: page.get_by_role("tab", name=t).click()))
        if t == "Export":
            steps.append(("export", lambda: page.get_by_role("button", name="Estimate (JSON)").click()))
    return steps


def _err(kind: str, e: BaseException) -> str:
    return f"{kind}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


async def session(
    browser: Any,
    url: str,
    rounds: int,
    out: list[dict[str, Any]],
    errors: list[str],
    *,
    pid: int | None = None,
    think_s: float = 0.0,
    delay_s: float = 0.0,
) -> None:
    """One browser session: load, then ``rounds`` rounds of the script. With ``pid`` (one session
    alone on the server) each interaction also records the server CPU it cost: the server is idle
    between interactions, so the difference of its CPU time is that interaction's own."""
    await asyncio.sleep(delay_s)
    ctx = await browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = await ctx.new_page()

    async def record(kind: str, t0: float, c0: float | None) -> None:
        dt = time.perf_counter() - t0
        row: dict[str, Any] = {"kind": kind, "s": dt}
        if pid is not None and c0 is not None:
            await asyncio.sleep(0.3)  # the server sends the last messages before it goes idle
            row["cpu_s"] = cpu_seconds(pid) - c0
        out.append(row)

    try:
        c0 = cpu_seconds(pid) if pid else None
        t0 = time.perf_counter()
        await page.goto(url, wait_until="domcontentloaded", timeout=180_000)
        await page.wait_for_function(_LOADED_JS, timeout=180_000, polling=50)
        await record("load", t0, c0)
        for r in range(rounds):
            for kind, action in script(page, r):
                await asyncio.sleep(think_s)
                await page.evaluate(_ARM_JS)
                c0 = cpu_seconds(pid) if pid else None
                t0 = time.perf_counter()
                try:
                    await action()
                    await page.wait_for_function(_DONE_JS, timeout=60_000, polling=20)
                except Exception as e:  # a timeout or a missing element: counted, the session goes on
                    errors.append(_err(kind, e))
                    continue
                await record(kind, t0, c0)
    except Exception as e:
        errors.append(_err("session", e))
    finally:
        await ctx.close()


# --- the wire client: Streamlit's own websocket protocol, no browser ------------------------------

# The same script by widget label: (kind, label, value type, value per round parity). Selectboxes take
# the option as displayed (their format_func), the tabs their label, the download button a trigger.
WIRE_SCRIPT: tuple[tuple[str, str, str, tuple[Any, Any]], ...] = (
    ("model", "Model", "string_value", ("Llama 3.1 8B", "Llama 3.2 3B")),
    ("quant", "Weight quantization", "string_value", ("4-bit · bnb NF4", "16-bit · BF16")),
    ("context", "Exact context", "string_value", ("32k", "8k")),
    ("gpu", "GPU", "string_value", ("RTX 3060 · 12 GB (12 GiB)", "RTX 4090 · 24 GB (23.64 GiB)")),
    ("tab", "details_tab", "string_value", ("Quantizations", "Quantizations")),
    ("tab", "details_tab", "string_value", ("GPUs", "GPUs")),
    ("tab", "details_tab", "string_value", ("Method", "Method")),
    ("tab", "details_tab", "string_value", ("Export", "Export")),
    ("export", "dl_json", "trigger_value", (True, True)),
    ("tab", "details_tab", "string_value", ("Context chart", "Context chart")),
)


def _widget_ids(msg: Any, out: dict[str, str]) -> None:
    """Every widget id in a delta, by its label (or, for unlabelled ones, the key it ends with)."""
    for f, v in msg.ListFields():
        if f.name == "id" and isinstance(v, str) and v.startswith("$$ID"):
            out[getattr(msg, "label", "") or v.rsplit("-", 1)[-1]] = v
            out[v.rsplit("-", 1)[-1]] = v
        elif f.type == f.TYPE_MESSAGE:
            for x in v if isinstance(v, Sequence) else [v]:
                _widget_ids(x, out)


async def wire_session(
    url: str,
    rounds: int,
    out: list[dict[str, Any]],
    errors: list[str],
    *,
    pid: int | None = None,
    think_s: float = 0.0,
    delay_s: float = 0.0,
) -> None:
    """One session over the websocket (as the browser's own client would): each interaction sends
    the changed widget's state and waits for ``script_finished``. Latency is the server's (no page
    rendering); a page load here is the first run only (no static assets)."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    await asyncio.sleep(delay_s)
    ids: dict[str, str] = {}
    ws_url = url.replace("http", "ws", 1) + "/_stcore/stream"
    async with websockets.connect(ws_url, subprotocols=["streamlit"], max_size=None) as ws:  # type: ignore[list-item]

        async def rerun(kind: str, state: tuple[str, str, Any] | None) -> None:
            bm = BackMsg()
            bm.rerun_script.query_string = ""
            bm.rerun_script.page_script_hash = ""
            if state is not None:
                w = bm.rerun_script.widget_states.widgets.add()
                w.id = state[0]
                setattr(w, state[1], state[2])
            c0 = cpu_seconds(pid) if pid else None
            t0 = time.perf_counter()
            await ws.send(bm.SerializeToString())
            while True:
                fm = ForwardMsg()
                fm.ParseFromString(await asyncio.wait_for(ws.recv(), 60))
                kind_ = fm.WhichOneof("type")
                if kind_ == "delta":
                    _widget_ids(fm.delta, ids)
                elif kind_ == "script_finished":
                    break
            row: dict[str, Any] = {"kind": kind, "s": time.perf_counter() - t0}
            if c0 is not None and pid is not None:
                await asyncio.sleep(0.05)
                row["cpu_s"] = cpu_seconds(pid) - c0
            out.append(row)

        try:
            await rerun("load", None)
            for r in range(rounds):
                for kind, label, field, values in WIRE_SCRIPT:
                    await asyncio.sleep(think_s)
                    wid = ids.get(label)
                    if wid is None:
                        errors.append(f"{kind}: no widget {label!r} on the page")
                        continue
                    await rerun(kind, (wid, field, values[r % 2]))
        except Exception as e:
            errors.append(_err("session", e))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summarise(samples: list[dict[str, Any]], field: str = "s") -> dict[str, dict[str, float]]:
    """Per interaction kind (and "update": every kind but the page load): n, p50, p95, max of
    ``field`` (latency "s" or server CPU "cpu_s")."""
    kinds: dict[str, list[float]] = {}
    for s in samples:
        if field not in s:
            continue
        kinds.setdefault(s["kind"], []).append(s[field])
        if s["kind"] != "load":
            kinds.setdefault("update", []).append(s[field])
    return {
        k: {"n": len(v), "p50": round(statistics.median(v), 4), "p95": round(_pct(v, 0.95), 4), "max": round(max(v), 4)}
        for k, v in sorted(kinds.items())
    }


async def run(a: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    samples: list[list[dict[str, Any]]] = [[] for _ in range(a.sessions)]
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        # one warm-up session: the process's first imports and the first script run are not a user's cost
        await session(browser, url, 1, [], [])
        cpu0, rss0 = (cpu_seconds(pid), rss_bytes(pid)) if pid else (None, None)
        t0 = time.perf_counter()
        one = a.sessions == 1  # one session alone: each interaction's own server CPU
        kw = {"think_s": a.think_s}
        if a.client == "browser":
            jobs = [
                session(
                    browser, url, a.rounds, samples[i], errors, pid=pid if one else None, delay_s=i * a.ramp_s, **kw
                )
                for i in range(a.sessions)
            ]
        else:
            jobs = [
                wire_session(url, a.rounds, samples[i], errors, pid=pid if one else None, delay_s=i * a.ramp_s, **kw)
                for i in range(a.sessions)
            ]
        await asyncio.gather(*jobs)
        wall = time.perf_counter() - t0
        cpu1, rss1 = (cpu_seconds(pid), rss_bytes(pid)) if pid else (None, None)
        await browser.close()
    flat = [s for ss in samples for s in ss]
    result: dict[str, Any] = {
        "url": url,
        "client": a.client,
        "sessions": a.sessions,
        "rounds": a.rounds,
        "think_s": a.think_s,
        "ramp_s": a.ramp_s,
        "interactions": len(flat),
        "wall_s": round(wall, 1),
        "errors": errors,
        "latency_s": summarise(flat),
    }
    if cpu0 is not None and cpu1 is not None:
        result["server_cpu_s_total"] = round(cpu1 - cpu0, 3)
        result["server_cpu_s_per_interaction"] = round((cpu1 - cpu0) / max(1, len(flat)), 4)
        result["server_cpu_utilisation"] = round((cpu1 - cpu0) / wall, 3)
        if one:
            result["server_cpu_s"] = summarise(flat, "cpu_s")
        result["server_rss_bytes"] = {"before": rss0, "after": rss1}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", help="a running calculator (default: start one here)")
    p.add_argument("--server-pid", type=int, help="with --url: a local server process whose CPU to count")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--think-s", type=float, default=0.0, help="pause before each interaction (a user reading)")
    p.add_argument("--ramp-s", type=float, default=0.5, help="start the sessions this far apart")
    p.add_argument(
        "--client",
        choices=("browser", "wire"),
        default="browser",
        help="browser: Chromium pages (user-seen latency, static assets included); wire: Streamlit's "
        "websocket protocol without a browser (server latency; many sessions on a small machine)",
    )
    p.add_argument("--json", type=Path, help="write the result here too")
    a = p.parse_args(argv)
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
    try:
        result = asyncio.run(run(a, url, pid))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    result["server_cpus"] = sorted(server_cpus) if server_cpus else None
    result["browser_cpus"] = sorted(os.sched_getaffinity(0))
    result["machine_cpus"] = os.cpu_count()
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

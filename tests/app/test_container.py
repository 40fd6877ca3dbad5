"""The container recipe (Dockerfile, compose.yaml, deploy/nginx.conf), checked statically here;
built and health-checked for real where a container runtime answers (`docker info`), else skipped.

Static checks read the files as text: what each must hold for the promises in the README
(slim base, the `app` extra only, non-root, health check on /_stcore/health, replicas behind a proxy
that keeps a browser on one replica, websocket upgrade)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "compose.yaml").read_text()
NGINX = (ROOT / "deploy" / "nginx.conf").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            word, _, rest = ln.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


INSTR = instructions(DOCKERFILE)


def args(word: str) -> list[str]:
    return [a for w, a in INSTR if w == word]


def test_slim_base_and_only_the_app_extra():
    assert args("FROM") == ["python:3.11-slim"]
    runs = " ".join(args("RUN"))
    assert re.search(r"pip install (-e )?\"?\.\[app\]\"?", runs), runs
    for heavy in ("torch", "transformers", "bitsandbytes", "runtime", "[test", "engines]"):
        assert heavy not in runs, heavy


def test_runs_as_a_non_root_user_after_installing():
    users = args("USER")
    assert users and users[-1] not in ("root", "0")
    words = [w for w, _ in INSTR]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")


def test_health_check_on_streamlit_health_endpoint():
    (hc,) = args("HEALTHCHECK")
    assert "/_stcore/health" in hc and "8501" in hc
    assert "8501" in args("EXPOSE")


def test_copies_what_the_app_reads_and_starts_it_headless():
    copied = " ".join(args("COPY"))
    for part in ("estimator", "app", "streamlit_app.py", ".streamlit", "validation", "pyproject.toml"):
        assert part in copied, part
    (cmd,) = args("CMD")
    for flag in ("streamlit", "run", "streamlit_app.py", "--server.address=0.0.0.0", "--server.headless=true"):
        assert flag in cmd, flag


def test_dockerignore_keeps_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for p in (".git", ".venv", "tests", "artifacts"):
        assert p in ignored


def test_compose_has_replicas_behind_the_proxy():
    assert re.search(r"replicas:\s*([2-9]|\d\d+)", COMPOSE)
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf" in COMPOSE
    assert "condition: service_healthy" in COMPOSE


def test_nginx_keeps_a_browser_on_one_replica_and_upgrades_websockets():
    assert re.search(r"upstream calculator \{\s*hash \$replica_key consistent;", NGINX)
    assert "map $cookie_calc_replica $replica_key" in NGINX
    assert 'Set-Cookie "calc_replica=$request_id' in NGINX
    assert "proxy_set_header Upgrade $http_upgrade;" in NGINX
    assert "proxy_http_version 1.1;" in NGINX
    # the proxy must accept what the app accepts (1 MiB config, 2 MiB log) and no more than it needs
    m = re.search(r"client_max_body_size (\d+)m;", NGINX)
    assert m and 2 < int(m.group(1)) <= 8


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_ok(), reason="no container runtime answers `docker info` here")
def test_image_builds_and_reports_healthy():
    tag = f"llm-vram-estimator-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1800)
    cid = subprocess.run(["docker", "run", "-d", tag], check=True, capture_output=True, text=True).stdout.strip()
    try:
        status = ""
        for _ in range(60):
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid], capture_output=True, text=True
            ).stdout.strip()
            if status in ("healthy", "unhealthy"):
                break
            time.sleep(2)
        assert status == "healthy"
        user = subprocess.run(["docker", "exec", cid, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user != "0"
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_nginx_caches_the_hashed_front_end_assets():
    """Streamlit's /static/ assets are immutable under their hashed names: the proxy serves them, so a
    first page load costs a replica only the page run (README "Serving", benchmarks/bench_load.py)."""
    block = NGINX[NGINX.index("location /static/") :]
    block = block[: block.index("}")]
    assert "proxy_cache calc_static;" in block and "proxy_cache_key $uri;" in block
    assert re.search(r"proxy_cache_path \S+ .*keys_zone=calc_static:", NGINX)

# The browser calculator in a slim image: the estimator and the `app` extra only (no torch, no
# GPU), run as a non-root user, with a health check on Streamlit's own endpoint.
#   docker build -t llm-vram-estimator .
#   docker run --rm -p 8501:8501 llm-vram-estimator        # http://localhost:8501
# Several replicas behind a proxy with sticky sessions: compose.yaml (README, "Serving").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/app
# What the app reads at run time: the estimator and its data, the pages, the committed validation
# results (Validation page) and the Streamlit config (theme, 1 MiB upload cap).
COPY pyproject.toml README.md ./
COPY estimator ./estimator
COPY app ./app
COPY streamlit_app.py ./
COPY .streamlit ./.streamlit
COPY validation ./validation
RUN pip install -e ".[app]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin calc

USER calc
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["python", "-m", "streamlit", "run", "streamlit_app.py", \
     "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true", \
     "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"]

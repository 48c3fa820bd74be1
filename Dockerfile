# The adbandit service alone: `pip install .[serve]` (FastAPI, uvicorn, numpy, scipy, polars…; no Ray,
# MLflow or test tools) in a slim Python image, run as a non-root user, state in a volume.
#
#   docker build -t adbandit .
#   docker run -p 8000:8000 -v adbandit-state:/var/lib/adbandit adbandit        # or: docker compose up
#
# PYTHON_IMAGE: any Debian-based image with Python >= 3.11 and its venv module (default the official
# slim one; a machine without Docker Hub builds from a local one: --build-arg PYTHON_IMAGE=…).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adbandit adbandit
COPY bandit bandit
COPY serving serving
COPY simulator simulator
COPY experiments experiments
RUN python3 -m venv /opt/adbandit \
 && /opt/adbandit/bin/pip install --upgrade pip \
 && /opt/adbandit/bin/pip install ".[serve]" \
 && /opt/adbandit/bin/adbandit --version

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/adbandit/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ADBANDIT_STATE_DIR=/var/lib/adbandit
RUN groupadd --system --gid 10001 adbandit \
 && useradd --system --uid 10001 --gid adbandit --home-dir /var/lib/adbandit --no-create-home adbandit \
 && mkdir -p /var/lib/adbandit && chown adbandit:adbandit /var/lib/adbandit
COPY --from=build /opt/adbandit /opt/adbandit
USER adbandit:adbandit
WORKDIR /var/lib/adbandit
# Event log, snapshots, history, outcome archive and the decision key: keep them across containers.
VOLUME ["/var/lib/adbandit"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["adbandit", "serve", "--host", "0.0.0.0", "--port", "8000", "--state-dir", "/var/lib/adbandit"]

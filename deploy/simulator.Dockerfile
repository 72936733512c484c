# The simulator: a simulated OpenAI-compatible hoster on 9100, for demos and tests.
#   docker build -f deploy/simulator.Dockerfile -t computeshare-simulator:0.1.0 .
# The base is pinned by tag here for readability; production builds pin it by digest
# (python:3.11.7-slim-bookworm@sha256:...) so that a re-pushed tag cannot change what we ship.

FROM python:3.11.7-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, read from pyproject alone: this layer is rebuilt when they change, not on every code edit.
# Every dependency ships a wheel or is pure Python, so the builder needs no compiler.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && /opt/venv/bin/pip install --requirement requirements.txt
COPY libs ./libs
COPY services ./services
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11.7-slim-bookworm
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can verify it, and volume ownership is predictable.
RUN groupadd --system --gid 10001 computeshare \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin computeshare
COPY --from=builder /opt/venv /opt/venv
# No .pyc writes at run time: the root filesystem is read-only in Kubernetes (pip compiled them at install).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CS_SIMULATOR_HOST=0.0.0.0 \
    CS_SIMULATOR_PORT=9100
USER 10001:10001
EXPOSE 9100
STOPSIGNAL SIGTERM
# It has no dependencies: serving /healthz is being ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
CMD ["python", "-m", "services.simulator"]

# The ingress: the OpenAI-compatible HTTP API on 8080; /metrics on 9090 (CS_METRICS_PORT).
#   docker build -f deploy/ingress.Dockerfile -t computeshare-ingress:0.1.0 .
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
    CS_INGRESS_HOST=0.0.0.0 \
    CS_INGRESS_PORT=8080
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# Ready = connected to NATS and routing; Docker's health gates `depends_on` in compose.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
CMD ["python", "-m", "services.ingress"]

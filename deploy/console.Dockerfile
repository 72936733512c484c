# The console: web pages for accounts, hosters and the public network under /console on 8090; /metrics on
# 9090 (CS_METRICS_PORT).
#   docker build -f deploy/console.Dockerfile -t computeshare-console:0.1.0 .
# The bases are pinned by tag here for readability; production builds pin them by digest.

FROM python:3.11.7-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, read from pyproject alone: this layer is rebuilt when they change, not on every code edit.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && /opt/venv/bin/pip install --requirement requirements.txt
COPY libs ./libs
COPY services ./services
RUN /opt/venv/bin/pip install --no-deps .

# Chart.js exactly as services/console/package-lock.json pins it (served by the console itself: no CDN).
FROM node:20.18.1-bookworm-slim AS assets
WORKDIR /assets
COPY services/console/package.json services/console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11.7-slim-bookworm
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can verify it, and volume ownership is predictable.
RUN groupadd --system --gid 10001 computeshare \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin computeshare
COPY --from=builder /opt/venv /opt/venv
COPY --from=assets /assets/node_modules/chart.js/dist/chart.umd.min.js /opt/console/node_modules/chart.js/dist/
# No .pyc writes at run time: the root filesystem is read-only in Kubernetes (pip compiled them at install).
# The session secret (CS_CONSOLE_SESSION_SECRET) comes from the environment at run time, never the image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CS_CONSOLE_HOST=0.0.0.0 \
    CS_CONSOLE_PORT=8090 \
    CS_CONSOLE_VENDOR_DIR=/opt/console/node_modules
USER 10001:10001
EXPOSE 8090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/readyz', timeout=2)"]
CMD ["python", "-m", "services.console"]

# syntax=docker/dockerfile:1
# Portal image: build stage (Python venv + vendored npm assets), slim non-root runtime stage.
#   docker build -t portal .
#   docker run --rm -e MIGRATION_DATABASE_URL=... -e DATABASE_URL=... portal \
#       sh -c "portal db upgrade && portal runtime-role"   # migrations as the owner, never at start-up
#   docker run -p 8000:8000 portal                 # web (gunicorn)
#   docker run --rm portal portal worker           # background worker

ARG PYTHON_VERSION=3.11
ARG NODE_VERSION=20

# --- Front-end assets: what `make assets` does, from package-lock.json -------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
RUN set -eux; \
    v=/src/vendor; mkdir -p "$v/swagger-ui" "$v/chartjs"; \
    cp node_modules/htmx.org/dist/htmx.min.js "$v/htmx.min.js"; \
    cp node_modules/swagger-ui-dist/swagger-ui.css node_modules/swagger-ui-dist/LICENSE \
       node_modules/swagger-ui-dist/NOTICE node_modules/swagger-ui-dist/swagger-ui-bundle.js \
       "$v/swagger-ui/"; \
    cp node_modules/chart.js/LICENSE.md "$v/chartjs/"; \
    sed '/^\/\/# sourceMappingURL=/d' node_modules/chart.js/dist/chart.umd.min.js \
       > "$v/chartjs/chart.umd.min.js"

# --- Python build: the package and its dependencies in /opt/venv -------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY portal ./portal
COPY --from=assets /src/vendor ./portal/static/vendor
RUN pip install --upgrade pip && pip install .

# --- Runtime ------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTAL_ENV=production \
    PORTAL_BIND=0.0.0.0:8000 \
    PORTAL_WORKER_HTTP_HOST=0.0.0.0 \
    WEB_CONCURRENCY=2 \
    PORTAL_THREADS=4 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/portal-metrics
RUN groupadd --system --gid 10001 portal \
    && useradd --system --uid 10001 --gid portal --home-dir /app --shell /usr/sbin/nologin portal \
    && mkdir -p /tmp/portal-metrics && chown portal:portal /tmp/portal-metrics
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# gunicorn.conf.py and the Alembic migrations (`portal db upgrade`) are read from /app.
COPY gunicorn.conf.py ./
COPY migrations ./migrations
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "portal:create_app()"]

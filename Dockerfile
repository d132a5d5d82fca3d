# syntax=docker/dockerfile:1
#
# metrics-watchdog container image.
#
#   docker build -t metrics-watchdog:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg VCS_REF="$(git rev-parse HEAD)" \
#     --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm -p 8080:8080 -v watchdog-state:/var/lib/watchdog \
#     -e WATCHDOG_PROMETHEUS_URL=http://prometheus:9090 metrics-watchdog:0.1.0
#
# Two stages: the builder installs the project into a virtualenv at /opt/venv (pip, wheels and
# any build tooling stay behind); the runtime stage copies only that venv. Both stages use the
# same base image, so the venv's interpreter symlink (/opt/venv/bin/python ->
# /usr/local/bin/python3.11) resolves in the runtime stage too. Pin the base by digest
# (python:3.11-slim-bookworm@sha256:...) for reproducible production builds.
# The install step is the one CI runs (`pip install .`): the image gets what CI tested.
# Linted in CI by scripts/lint-deploy.sh (hadolint); no Docker engine runs there.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` reads (see .dockerignore, an allow-list): the metadata first, then
# the package, so that a change to the code alone does not invalidate the base layers.
COPY pyproject.toml README.md ./
COPY watchdog/ ./watchdog/
# pip compiles the .pyc files at install time, which matters: the runtime's root filesystem is
# read-only in Kubernetes, so Python could not write __pycache__ there later. The daemon runs
# with PYTHONOPTIMIZE=2 (below), which reads the .opt-2.pyc files: compiled here too.
RUN pip install --no-cache-dir . \
 && python -OO -m compileall -q -j 0 /opt/venv/lib \
 && watchdog --version

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG VCS_URL=""
ARG BUILD_DATE=""

LABEL org.opencontainers.image.title="metrics-watchdog" \
      org.opencontainers.image.description="Watches a service after it ships: evaluates Prometheus-compatible rules, rolls back, notifies." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${VCS_URL}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm"

# A fixed, non-root uid/gid (10001): Kubernetes' runAsNonRoot can only verify a numeric USER,
# and the manifests in deploy/ set runAsUser/fsGroup 10001 to match. No login shell, no home.
# /var/lib/watchdog (the state volume) is the only directory the user owns; the rules and the
# secrets directories stay root-owned and read-only to it.
RUN groupadd --system --gid 10001 watchdog \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/watchdog --shell /usr/sbin/nologin watchdog \
 && mkdir -p /etc/watchdog/rules /etc/watchdog/secrets /var/lib/watchdog \
 && chown 10001:10001 /var/lib/watchdog \
 && chmod 0750 /var/lib/watchdog

COPY --from=builder /opt/venv /opt/venv
# The example rules, so that the image runs out of the box; mount your own folder (or a
# Kubernetes ConfigMap) over /etc/watchdog/rules to replace them.
COPY rules/ /etc/watchdog/rules/

# PYTHONOPTIMIZE=2 leaves out docstrings (and asserts, which the code uses only to narrow
# types): 2.6 MiB less resident memory in every process (bench/daemon.py --memory);
# tests/test_daemon_process.py runs the daemon so too (its SIGHUP test).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    WATCHDOG_RULES_DIR=/etc/watchdog/rules \
    WATCHDOG_DATA_DIR=/var/lib/watchdog \
    WATCHDOG_STATE_URL=sqlite:////var/lib/watchdog/state.db \
    WATCHDOG_HTTP_LISTEN=0.0.0.0:8080 \
    WATCHDOG_LOG_FORMAT=json

# Alert instances, incidents, action runs and the notification outbox live in one SQLite file:
# keep it on a volume so that a new container resumes where the old one stopped (no action
# repeated, no notification lost). Back it up with `sqlite3 state.db ".backup copy.db"`.
VOLUME ["/var/lib/watchdog"]

USER 10001:10001
WORKDIR /var/lib/watchdog

EXPOSE 8080

# No curl in the slim image: ask /healthz with the interpreter that is already there. The port
# follows WATCHDOG_HTTP_LISTEN if it is overridden. A non-2xx answer or no answer raises, and
# the uncaught exception exits 1 (= unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('WATCHDOG_HTTP_LISTEN', ':8080').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# The daemon runs as PID 1, so it must install its own SIGTERM (graceful stop) and SIGHUP (reload
# the rules) handlers: the kernel ignores a signal that PID 1 has no handler for.
ENTRYPOINT ["watchdog", "run"]

# syntax=docker/dockerfile:1
# cometd-bridge production image.
#
# Stage 1 builds the project wheel and installs it with its dependencies into a
# self-contained virtualenv; stage 2 copies only that virtualenv onto a clean slim
# Python, so no compiler, pip cache, source tree or wheel files reach the runtime.
# Both stages use the same base so the venv's interpreter paths stay valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (see .dockerignore): metadata first, then the package.
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install /wheels/*.whl

FROM ${PYTHON_IMAGE} AS runtime
# Set by CI: docker build --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD)
# --build-arg SOURCE=https://... (a pre-FROM ARG must be re-declared to be used in a stage).
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="cometd-bridge" \
      org.opencontainers.image.description="Forwards CometD (Bayeux) streams into RabbitMQ: nothing lost, fast, observable." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# tini is PID 1: it forwards SIGTERM to the bridge (which drains on it) and reaps
# zombies. The version is pinned to the one in the base image's Debian release.
# The base's own pip/setuptools/wheel are build tools the runtime never uses: removed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.* \
 && rm -rf /var/lib/apt/lists/* \
 && python -m pip uninstall --yes --quiet pip setuptools wheel

# Numeric uid/gid so Kubernetes' runAsNonRoot can verify the user without /etc/passwd.
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cometd-bridge \
      --no-create-home --shell /usr/sbin/nologin bridge \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/cometd-bridge

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HTTP_PORT=8080 \
    BRIDGE_STATE_DIR=/var/lib/cometd-bridge \
    BRIDGE_LOG_FORMAT=json

USER 10001:10001
WORKDIR /var/lib/cometd-bridge
# Replay positions live here; mount a volume to keep them across restarts.
VOLUME ["/var/lib/cometd-bridge"]
EXPOSE 8080

# No curl in the image: the interpreter we ship does the probe. Honours a changed port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_HTTP_PORT', '8080'), timeout=2)"]

# The bridge drains on SIGTERM within BRIDGE_SHUTDOWN_TIMEOUT (20 s); give the runtime
# a longer stop timeout than that (compose stop_grace_period, k8s grace period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "cometd-bridge"]
CMD ["run"]

# mailtrap-sync: the daemon (`run`, the default) or any other command of the CLI.
#   docker build -t mailtrap-sync .
#   podman build --format docker -t mailtrap-sync .    # podman/buildah: see the HEALTHCHECK note
#   docker run --rm -v mailtrap-sync-data:/data -v "$PWD/mailtrap-sync.toml:/config/mailtrap-sync.toml:ro" \
#     -e MAILTRAP_API_TOKEN -p 127.0.0.1:9108:9108 mailtrap-sync
# See docs/deployment.md. scripts/container-test builds this file and smoke-tests the image.
#
# Reproducible: every Python package comes from the hashed locks (requirements.lock for what runs,
# requirements-build.lock for the setuptools that builds the wheel); nothing is resolved here.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- builder: build the project's wheel and install it, with its locked dependencies, into /opt/venv
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore

# /opt/build holds the build tools (pip, the locked setuptools) and stays in this stage. The
# runtime venv gets no pip of its own: the build venv's pip installs into it.
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/python -m pip install --quiet --require-hashes -r requirements-build.lock \
 && python -m venv --without-pip /opt/venv \
 && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --quiet \
        --require-hashes --no-deps --only-binary :all: -r requirements.lock

# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN /opt/build/bin/python -m pip wheel --quiet --no-deps --no-build-isolation \
        --wheel-dir /tmp/wheels . \
 && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --quiet --no-deps \
        --no-warn-script-location /tmp/wheels/mailtrap_sync-*.whl \
 && /opt/build/bin/python -m pip --python /opt/venv/bin/python check \
 && /opt/venv/bin/mailtrap-sync --version

# ---- final: the interpreter, the venv and nothing else (no compilers, no pip, no source tree) ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="mailtrap-sync" \
      org.opencontainers.image.description="Keeps Mailtrap marketing contacts in step with a CRM or SQL database." \
      org.opencontainers.image.licenses="LicenseRef-Proprietary"

# The base image's pip (and ensurepip's bundled copy) go: the final image has no installer.
# uid/gid 10001: above the range distributions hand out, so it never matches a host account.
RUN set -eu; \
    site="$(python -c 'import os, pip; print(os.path.dirname(os.path.dirname(pip.__file__)))')"; \
    rm -rf "$site"/pip "$site"/pip-*.dist-info "$site"/pip-*.egg-info \
        "$(python -c 'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))')" \
        /usr/local/bin/pip /usr/local/bin/pip3* /usr/bin/pip /usr/bin/pip3*; \
    if python -c 'import pip' 2>/dev/null; then echo "pip is still importable" >&2; exit 1; fi; \
    groupadd --system --gid 10001 mailtrap-sync; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin mailtrap-sync; \
    mkdir -p /data /config; \
    chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

# Logs: JSON lines on stderr whenever it is not a terminal (`docker run -t` gives the console form).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAILTRAP_SYNC_CONFIG=/config/mailtrap-sync.toml \
    MAILTRAP_SYNC_STATE_URL=sqlite:////data/mailtrap-sync.db \
    MAILTRAP_SYNC_WEB_LISTEN=0.0.0.0:9108

WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 9108

# Only the daemon (`run`) serves /healthz; one-off commands exit long before the first probe.
# The port follows MAILTRAP_SYNC_WEB_LISTEN; http.client because slim has no curl and urllib
# would honour an HTTP(S)_PROXY meant for the Mailtrap API.
# HEALTHCHECK is part of the Docker image format only: `docker build` keeps it; podman/buildah
# drop it unless building with `--format docker` (their default OCI format has no such field).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import http.client as h, os, sys; port = int(os.environ.get('MAILTRAP_SYNC_WEB_LISTEN', ':9108').rpartition(':')[2]); c = h.HTTPConnection('127.0.0.1', port, timeout=4); c.request('GET', '/healthz'); sys.exit(c.getresponse().status != 200)"]

ENTRYPOINT ["mailtrap-sync"]
CMD ["run"]

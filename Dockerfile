# syntax=docker/dockerfile:1
#
# itwin-worker image.
#   docker build -t itwin-worker .
#   docker run --rm -p 8080:8080 -e ITWIN_WORKER_AMQP_URL=amqp://... itwin-worker
#
# Every runtime dependency comes from requirements.lock, pinned and hash-checked; the only
# thing fetched unpinned is the project's build backend (setuptools>=69, pyproject.toml), into
# uv's throwaway build environment. Only the finished virtualenv (/opt/venv) reaches the final image;
# uv, pip caches and build backends stay behind. .ci/deploy-checks repeats these install steps
# outside Docker, so keep the two in step (it also checks that the uv pin below matches
# .ci/tools.lock).

############################
# Stage 1: build the venv  #
############################
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

# uv is a build tool only: it goes into the builder's system Python, never into /opt/venv,
# which is created without pip/setuptools since the runtime needs neither.
RUN pip install --no-cache-dir uv==0.13.9 \
    && python -m venv --without-pip /opt/venv

WORKDIR /src

# Dependencies first, so this layer is cached until the lock changes.
COPY requirements.lock ./
RUN uv pip install --python /opt/venv/bin/python --require-hashes -r requirements.lock

# Then the project itself, without dependencies (they are all in the lock).
COPY pyproject.toml README.md ./
COPY service ./service
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
    && /opt/venv/bin/itwin-worker --help > /dev/null

############################
# Stage 2: runtime         #
############################
FROM python:3.11-slim AS runtime

# Fixed numeric IDs so Kubernetes' runAsNonRoot/runAsUser (10001) matches the image.
RUN groupadd --system --gid 10001 itwin \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin itwin

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /tmp

EXPOSE 8080

# No curl in slim images: probe /healthz with the standard library. Follows
# ITWIN_WORKER_HTTP_PORT if it is overridden at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ITWIN_WORKER_HTTP_PORT', '8080'), timeout=4)"]

# Exec form: the worker is PID 1 and receives SIGTERM itself. PID 1 gets no default signal
# dispositions from the kernel, so the worker must handle SIGTERM/SIGINT explicitly.
ENTRYPOINT ["itwin-worker"]
CMD ["run"]

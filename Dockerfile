# syntax=docker/dockerfile:1
# Hatchery: the unified server (or one component: `hatchery serve generator`) on port 8000.
#
#   docker build -t hatchery .                                   # CPU torch (default)
#   docker build -t hatchery:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 \
#     --build-arg TORCH_VERSION=2.6.0 .                          # CUDA wheels (bundle the runtime)
#   docker run -p 8000:8000 hatchery                             # add --gpus all for CUDA
#
# PYTHON_IMAGE picks another base (e.g. an nvidia/cuda image with Python 3.11 installed).

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Optional extras of the hatchery package; "ray" makes the image a Ray head/worker too (the
# compose `ray` profile). Set EXTRAS="" for a smaller image without the Ray executor.
ARG EXTRAS=ray

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, from the chosen index, in its own layer: it is by far the largest and changes least.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY core ./core
COPY test_api ./test_api
COPY generator_api ./generator_api
COPY benchmark_api ./benchmark_api
COPY unified_api ./unified_api
COPY clients ./clients
COPY hatchery_cli ./hatchery_cli
RUN pip install ".${EXTRAS:+[${EXTRAS}]}"

COPY config.example.yaml ./

RUN useradd --create-home --uid 10001 hatchery \
    && mkdir -p /app/data /app/models \
    && chown hatchery:hatchery /app/data /app/models
# Only the shipped model (.dockerignore keeps local models and data out of the context),
# owned by the server's user: a named volume mounted on /app/models starts as a copy of this
# directory (owner included), so models created at run time are written to the volume.
COPY --chown=hatchery:hatchery models/bdh-shakespeare ./models/bdh-shakespeare
USER hatchery
VOLUME ["/app/data", "/app/models"]

# Inside a container the server must listen beyond loopback, so it refuses to start with auth
# off: give HATCHERY_AUTH__ENABLED=true and HATCHERY_AUTH__API_KEYS='["<key>"]' (or, on a
# private network only, HATCHERY_SERVER__ALLOW_INSECURE=true).
# The fused decode kernel is compiled on first use; its cache lives in the data volume.
ENV HATCHERY_SERVER__HOST=0.0.0.0 \
    HATCHERY_SERVER__PORT=8000 \
    HATCHERY_MODEL__MODELS_DIR=/app/models \
    NUMBA_CACHE_DIR=/app/data/numba-cache
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HATCHERY_SERVER__PORT', '8000'), timeout=4)" || exit 1

# Exec form: the server is PID 1 and gets SIGTERM directly (graceful, bounded shutdown).
CMD ["hatchery", "serve", "all"]

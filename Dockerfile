# COVID-19 CXR infection segmentation service: serving dependencies only (no torch).
#   CPU:  docker build --target cpu -t covidseg:cpu .      (the default target; docker compose build does this)
#   GPU:  docker build --target gpu -t covidseg:gpu .
#   batch job (Ray): docker build --target batch -t covidseg:batch .
# Every image is a runtime stage over one base stage (the Python image, the service user and its spool): the
# virtual environment its builder stage made, then the model and the code. The GPU one takes CUDA 13 and cuDNN 9
# from pip (the "gpu" extra: onnxruntime-gpu[cuda,cudnn]), so the host needs only the NVIDIA driver and toolkit.
# Behind a proxy or without internet (README, "Building behind a proxy or without internet"): a site base image
# with the site's CA as PYTHON_IMAGE, pip's index settings as build arguments, or wheels in wheelhouse/ and
# PIP_NO_INDEX=1. Those settings and the wheels stay in the builder stages, never in an image shipped.
# Builds with BuildKit (docker compose build) and with the classic builder alike; the classic builder builds every
# stage up to its target, so name the target (cpu first, then batch, then gpu).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 ORT_DISABLE_TELEMETRY=1 \
    PATH=/srv/.venv/bin:$PATH
WORKDIR /srv
# The node's spool and the bridge's state folder, the service user's own (a volume mounted on either starts with
# that owner and mode); the service user has no home for the per-user defaults.
RUN useradd --system --uid 10001 --no-create-home covidseg \
    && install -d -m 700 -o covidseg /spool /state
ENV COVIDSEG_NODE_SPOOL_DIR=/spool
EXPOSE 8000 11112 9101
# Every 10 s, so that a container is healthy about 10 s after its start (depends_on: service_healthy waits on it):
# --start-interval would allow a slower interval after start-up, but engines before Docker 25 refuse the flag.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
ARG PYTHON_IMAGE
# The service's version (pyproject.toml); each image adds the model it serves by default (covidseg.model.*, from
# its card in models/). tests/test_deploy.py keeps them true.
LABEL org.opencontainers.image.title="covidseg" \
      org.opencontainers.image.description="COVID-19 lung-infection segmentation for chest X-rays (research and decision support; not a diagnostic device)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
CMD ["python", "-m", "app"]

# The builder: a virtual environment under /srv/.venv, from the same Python image as base (not from base itself,
# whose settings and labels may change without invalidating the layers of dependencies); wheelhouse/ is where pip
# looks first. pip's settings are build arguments of the builder stages only (an index mirror, a trusted host, no
# index at all), declared in each: the classic builder does not pass a stage's arguments on to the stages built
# on it.
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY wheelhouse /wheelhouse
# The project's metadata, and an empty package where its code goes: the runtime stages copy the code to /srv/app,
# which the editable install points at. So an environment depends on pyproject.toml alone (and the wheelhouse),
# and a change of code or README reuses it from the cache instead of installing every dependency again.
COPY pyproject.toml ./
RUN python -m venv .venv && mkdir app && touch app/__init__.py README.md

# Each builder installs the project with its extra as the README's quick start does.
FROM build AS cpu-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/wheelhouse
RUN .venv/bin/pip install -e ".[cpu]"

FROM base AS cpu
COPY --from=cpu-build /srv/.venv /srv/.venv
COPY models ./models
COPY app ./app
# on CPU the service loads the int8 model unless COVIDSEG_MODEL_PATH says otherwise
LABEL covidseg.model.name="covidseg-unet-r34-int8" covidseg.model.version="2.1.1" \
      covidseg.model.sha256="4ec552d53dab3a2f4c0e33f84b496200b706f99e89f4a39415b488a553f87412"
USER covidseg

# The batch job (python -m app.batch; also the head and workers of a Ray cluster, KubeRay's or
# deploy/docker/ray-cluster.yml's): the CPU image with Ray.
FROM build AS batch-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/wheelhouse
RUN .venv/bin/pip install -e ".[cpu,batch]"

FROM base AS batch
COPY --from=batch-build /srv/.venv /srv/.venv
COPY models ./models
COPY app ./app
# Ray's session files, its object store and matplotlib's cache are in /tmp and /dev/shm, which compose mounts
# writable (the root is read-only)
ENV MPLCONFIGDIR=/tmp/matplotlib
RUN install -d -m 700 -o covidseg /results
LABEL covidseg.model.name="covidseg-unet-r34-int8" covidseg.model.version="2.1.1" \
      covidseg.model.sha256="4ec552d53dab3a2f4c0e33f84b496200b706f99e89f4a39415b488a553f87412"
HEALTHCHECK NONE
USER covidseg
CMD ["python", "-m", "app.batch", "--help"]

FROM build AS gpu-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/wheelhouse
RUN .venv/bin/pip install -e ".[gpu]"

FROM base AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=gpu-build /srv/.venv /srv/.venv
COPY models ./models
COPY app ./app
# on CUDA the service loads the fp32 model (on a host without a usable GPU it falls back to CPU and int8)
LABEL covidseg.model.name="covidseg-unet-r34" covidseg.model.version="2.1.1" \
      covidseg.model.sha256="cd567816bb9d862999867528cb0a0e920170bbde3ddbf65e1a9a5e3cb723c3c2"
USER covidseg

# Default target: the CPU image.
FROM cpu

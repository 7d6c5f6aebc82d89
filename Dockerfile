# COVID-19 CXR infection segmentation service: serving dependencies only (no torch).
#   CPU:  docker build -t covidseg .
#   GPU:  docker build --target gpu -t covidseg:gpu .
#   batch job (Ray): docker build --target batch -t covidseg:batch .
# Both images share one base stage (the Python image, the project files, the service user and its
# spool) and differ only in the runtime extra. The GPU one takes CUDA 13 and cuDNN 9 from pip (the
# "gpu" extra: onnxruntime-gpu[cuda,cudnn]), so the host needs only the NVIDIA driver and toolkit.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 ORT_DISABLE_TELEMETRY=1 \
    PATH=/srv/.venv/bin:$PATH
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN python -m venv .venv \
    && useradd --system --uid 10001 --no-create-home covidseg \
    && install -d -m 700 -o covidseg /spool
# The node's spool in the image (the service user has no home for the per-user default); mount a volume here.
ENV COVIDSEG_NODE_SPOOL_DIR=/spool
EXPOSE 8000 11112 9101
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["python", "-m", "app"]

FROM base AS cpu
RUN .venv/bin/pip install -e ".[cpu]"
USER covidseg

FROM base AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN .venv/bin/pip install -e ".[gpu]"
USER covidseg

# The batch job (python -m app.batch; also the head and workers of a KubeRay RayJob): the CPU image with Ray.
FROM base AS batch
RUN .venv/bin/pip install -e ".[cpu,batch]" && install -d -m 700 -o covidseg /results
HEALTHCHECK NONE
USER covidseg
CMD ["python", "-m", "app.batch", "--help"]

# Default target: the CPU image.
FROM cpu

# COVID-19 CXR infection segmentation service: serving dependencies only (no torch).
#   CPU:  docker build -t covidseg .
#   GPU:  docker build --target gpu -t covidseg:gpu .
ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/srv/.venv/bin:$PATH
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN python -m venv .venv && .venv/bin/pip install -e . \
    && useradd --system --uid 10001 --no-create-home covidseg \
    && install -d -m 700 -o covidseg /spool
USER covidseg
EXPOSE 8000 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["python", "-m", "app"]

FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/srv/.venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
# Same install as the CPU image, then the CUDA build of ONNX Runtime in place of the CPU one.
RUN python3 -m venv .venv && .venv/bin/pip install -e . \
    && .venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu \
    && useradd --system --uid 10001 --no-create-home covidseg \
    && install -d -m 700 -o covidseg /spool
USER covidseg
EXPOSE 8000 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["python", "-m", "app"]

# Default target: the CPU image.
FROM cpu

# Worker / dashboard / CLI image for the hyperparameter search service.
#
# The official PyTorch CUDA runtime image already ships python, pip, torch and
# torchvision, so `pip install .` below only pulls the light dependencies
# (optuna, sqlalchemy, psycopg2-binary, optuna-dashboard, boto3, ...). The same image
# runs on CPU-only hosts; GPUs are attached by docker-compose.gpu.yml.
#
#   docker build -t hpsearch .
#   docker build --build-arg BASE_IMAGE=<other torch image> -t hpsearch .
#
# CPU-only hosts need not pull the ~6 GB CUDA image: start from a plain Python image and
# take PyTorch's CPU wheels (~0.8 GB in all):
#   docker build --build-arg BASE_IMAGE=python:3.11-slim --build-arg TORCH_CPU=1 -t hpsearch:cpu .
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG TORCH_CPU=0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEARCH_DATA_DIR=/data \
    SEARCH_ARTIFACTS=/artifacts

WORKDIR /opt/hpsearch

# Project metadata first, sources after; .dockerignore keeps tests, data,
# artifacts and local env files out of the build context.
COPY . .
RUN if [ "$TORCH_CPU" = 1 ]; then \
        pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX" torch torchvision; \
    fi \
 && pip install --no-cache-dir . \
 && python -c "import torch, torchvision, optuna, optuna_dashboard, psycopg2, search.cli" \
 && mkdir -p /data /artifacts

WORKDIR /workspace
ENTRYPOINT ["search"]
CMD ["--help"]

# Headline classifier images, built from the repo's own pins (constraints.txt).
#
#   docker build -t headline-classifier .                          # API (the default, last stage)
#   docker build --target train -t headline-classifier-train .     # training job
#   (or `make docker-build` / `make docker-build-train`)
#
# CPU torch by default. For a CUDA build pass a CUDA wheel index:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# PyTorch's CUDA wheels bring the CUDA runtime as pip packages (nvidia-*), so the slim base
# still works; the host needs the NVIDIA driver and container toolkit (`--gpus all`). A
# different BASE_IMAGE (e.g. an nvidia/cuda runtime image) must provide Python >= 3.11 as
# `python` on PATH, because both stages build and run the venv with the base's interpreter.
#
# Layers: torch (large, changes only with constraints.txt) is installed before the source is
# copied, so code changes rebuild only the small last layers.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- base: interpreter and environment shared by every stage -----------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- builder: a venv with pinned torch and the project's runtime dependencies ------------
FROM base AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYPI_INDEX_URL=https://pypi.org/simple
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
# torch first and pinned (constraints.txt: torch==2.13.0, which also matches the +cpu/+cuXXX
# wheels). Torch's own dependencies come from PyPI at the pinned versions; the wheel index's
# local-label build (2.13.0+cpu) sorts above PyPI's 2.13.0, so the CPU build wins.
RUN pip install -c constraints.txt torch==2.13.0 \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url "${PYPI_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY training ./training
COPY service ./service

# Non-editable installs: the runtime images get the packages in site-packages, not the source.
FROM builder AS builder-serve
RUN pip install -c constraints.txt ".[serve]"

FROM builder AS builder-train
RUN pip install -c constraints.txt ".[train]"

# --- app-base: the non-root user and the artifacts folder both final images share --------
FROM base AS app-base
# One fixed uid for both images, so the training job can write new versions into the volume
# the API reads (a bind mount must be writable by uid 10001).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
    && install -d -o app -g app /app /app/artifacts
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HC_ARTIFACTS_DIR=/app/artifacts
WORKDIR /app

# --- train: `python -m training ...`, writing DIR/<version>/ into the artifacts volume ----
FROM app-base AS train
COPY --from=builder-train /opt/venv /opt/venv
# Headless plots; stopwords (only with --stopwords) download to ~/nltk_data unless
# NLTK_DATA points to a mounted copy.
ENV MPLBACKEND=Agg
USER app
VOLUME ["/app/artifacts"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["--artifacts-dir", "/app/artifacts"]

# --- api (default target): the inference service -----------------------------------------
FROM app-base AS api
COPY --from=builder-serve /opt/venv /opt/venv
COPY scripts/healthcheck.py /app/healthcheck.py
# The committed default model is the image's default; a named volume mounted on
# /app/artifacts starts as a copy of it (Docker seeds empty named volumes from the image).
COPY --chown=app:app artifacts/ /app/artifacts/
ENV HC_HOST=0.0.0.0 \
    HC_PORT=8000
USER app
EXPOSE 8000
VOLUME ["/app/artifacts"]
# Ready = model loaded and warmed up; 503 while loading or draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# Exec form: python is PID 1 and receives SIGTERM itself, so it drains in-flight requests
# (HC_SHUTDOWN_TIMEOUT_S) before exiting. Settings come from HC_* env vars or flags.
ENTRYPOINT ["python", "-m", "service"]

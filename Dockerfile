# The API image: the inference service and the artifact contract, nothing of the trainer.
# (The training image is training/Dockerfile. Each file holds only the stages its image needs,
# so the classic builder, which builds every stage up to --target, never builds the other one.)
#
#   docker build -t headline-classifier .                                  # or `make docker-build`
#   docker build -f training/Dockerfile -t headline-classifier-train .     # or `make docker-build-train`
#
# CPU torch by default, and only CPU torch: torch comes from TORCH_INDEX_URL alone (no PyPI
# fallback), and scripts/check_torch.py fails the build unless it is the '+cpu' build with no
# nvidia-* packages. For a CUDA image:
#   docker build --build-arg TORCH_VARIANT=cuda \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# PyTorch's CUDA wheels bring the CUDA runtime as pip packages (nvidia-*), so the slim base still
# works; the host needs the NVIDIA driver and container toolkit (`--gpus all`).
# PYPI_INDEX_URL (a PyPI mirror) is used by every other pip install.
#
# Layers, from rarely to often changing: torch (changes with constraints.txt), the third-party
# dependencies (pyproject.toml), the project code. The lines up to the torch install are the same
# as in training/Dockerfile, so both images share that cached layer.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- base: interpreter and environment shared by every stage -----------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- torch: a venv with the pinned torch build and its own dependencies ------------------
FROM base AS torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VARIANT=cpu
ARG PYPI_INDEX_URL=https://pypi.org/simple
ENV PIP_INDEX_URL=${PYPI_INDEX_URL} \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY constraints.txt ./
COPY scripts/check_torch.py ./scripts/
# torch from TORCH_INDEX_URL only (--no-deps: nothing else may come from there), then its
# dependencies from PYPI_INDEX_URL, then the check that this is the build we asked for.
RUN pip install --no-deps --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" \
    && pip install -c constraints.txt "torch==2.13.0" \
    && python scripts/check_torch.py "${TORCH_VARIANT}"

# --- builder: the serving dependencies, then the project (contract + service only) -------
FROM torch AS builder
COPY pyproject.toml ./
COPY scripts/requirements.py ./scripts/
RUN python scripts/requirements.py serve > requirements-serve.txt \
    && pip install -c constraints.txt -r requirements-serve.txt
COPY README.md ./
COPY contract ./contract
COPY service ./service
COPY scoring ./scoring
# Non-editable, no deps (all installed above), built with the venv's setuptools (a torch
# dependency): the image gets the packages in site-packages.
# Then trim what serving never runs: pip and setuptools, torch's C++ headers (only for
# compiling extensions) and its C++ test binaries and protoc (torch/test, torch/bin).
RUN pip install --no-deps --no-build-isolation . \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && rm -rf "$site/torch/include" "$site/torch/test" \
    && find "$site/torch/bin" -maxdepth 1 -type f ! -name torch_shm_manager -delete \
    && pip uninstall -q -y pip setuptools \
    && python -c 'import service.api.app, contract.artifact, torch.nn'

# --- api: the inference service, non-root ------------------------------------------------
FROM base AS api
# One fixed uid in both images, so the training job can write new versions into the volume
# the API reads (a bind mount must be writable by uid 10001).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
    && install -d -o app -g app /app /app/artifacts
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HC_ARTIFACTS_DIR=/app/artifacts
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY scripts/healthcheck.py /app/healthcheck.py
# The committed default model. A named volume mounted on /app/artifacts starts as a copy of
# it (Docker seeds an empty named volume from the image); the train image carries the same
# copy, so whichever container first mounts a fresh volume seeds it with the default model.
COPY --chown=app:app artifacts/ /app/artifacts/
ENV HC_HOST=0.0.0.0 \
    HC_PORT=8000
USER app
EXPOSE 8000
VOLUME ["/app/artifacts"]
# Ready = model loaded and warmed up; 503 while loading or draining. Probed every 3 s so the
# container turns healthy at most ~3 s after it is ready (Docker runs the first probe one
# interval after start; --start-interval needs Docker >= 25). A probe costs ~40 ms of CPU.
HEALTHCHECK --interval=3s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# Exec form: python is PID 1 and receives SIGTERM itself, so it drains in-flight requests
# (HC_SHUTDOWN_TIMEOUT_S) before exiting 0. Settings come from HC_* env vars or flags.
ENTRYPOINT ["python", "-m", "service"]

# clipserve serving image, NVIDIA GPU: as serve-cpu, with onnxruntime-gpu (CUDA and TensorRT
# execution providers) in place of onnxruntime. No torch. Build from the repository root:
#
#   docker build -f deploy/docker/serve-cuda.Dockerfile -t clipserve:cuda .
#
# BASE_IMAGE must carry the CUDA 12 runtime and cuDNN 9 that the pinned onnxruntime-gpu was
# built for, plus Ubuntu/Debian apt (python3 is installed from it). Run with `--gpus all`
# (Docker) or an `nvidia.com/gpu` limit (Kubernetes); --providers auto picks CUDA when present.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX=
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse \
    PIP_NO_INDEX=${PIP_NO_INDEX}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/docker/wheelhouse/ /wheelhouse/
COPY deploy/docker/requirements-serve-gpu.txt /src/deploy/docker/
RUN python3 -m venv /opt/clipserve \
    && /opt/clipserve/bin/pip install --requirement /src/deploy/docker/requirements-serve-gpu.txt
COPY pyproject.toml README.md /src/
COPY training/ /src/training/
COPY serving/ /src/serving/
COPY index/ /src/index/
COPY proto/ /src/proto/
COPY cli/ /src/cli/
# --no-deps: keeps onnxruntime (CPU) out; onnxruntime-gpu provides the same module.
RUN /opt/clipserve/bin/pip install --no-deps /src \
    && /opt/clipserve/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"

FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/clipserve --create-home clipserve \
    && mkdir -p /models /index \
    && chown clipserve:clipserve /index
COPY --from=build /opt/clipserve /opt/clipserve
COPY deploy/docker/healthcheck.py /opt/clipserve/bin/clipserve-healthcheck
ENV PATH=/opt/clipserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLIPSERVE_HOST=0.0.0.0 \
    CLIPSERVE_PORT=50051 \
    CLIPSERVE_BUNDLE=/models/bundle \
    CLIPSERVE_INDEX_PATH=/index
USER 10001:10001
WORKDIR /var/lib/clipserve
EXPOSE 50051 9090
VOLUME ["/index"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["clipserve-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["clipserve", "serve"]

# clipserve training image: torch + open_clip + ONNX export (`clipserve train|eval|export|mine`),
# launched with torchrun for multi-GPU / multi-node runs (docs/training-distributed.md).
# Build from the repository root:
#
#   docker build -f deploy/docker/train.Dockerfile -t clipserve:train .
#
# torch's CUDA wheels bring their own CUDA libraries, so a plain python base works on GPU nodes
# (the node's NVIDIA driver is mounted by the container runtime).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse \
    PIP_NO_INDEX=${PIP_NO_INDEX}
COPY deploy/docker/wheelhouse/ /wheelhouse/
COPY deploy/docker/requirements-train.txt /src/deploy/docker/
RUN python3 -m venv /opt/clipserve \
    && /opt/clipserve/bin/pip install --requirement /src/deploy/docker/requirements-train.txt
COPY pyproject.toml README.md /src/
COPY training/ /src/training/
COPY serving/ /src/serving/
COPY index/ /src/index/
COPY proto/ /src/proto/
COPY cli/ /src/cli/
RUN /opt/clipserve/bin/pip install --no-deps /src \
    && /opt/clipserve/bin/python -c "import torch, open_clip, clipserve.training.train"

FROM ${BASE_IMAGE}
COPY --from=build /opt/clipserve /opt/clipserve
COPY configs/ /opt/clipserve/configs/
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/clipserve --create-home clipserve \
    && mkdir -p /data /runs \
    && chown clipserve:clipserve /runs
ENV PATH=/opt/clipserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE
USER 10001:10001
WORKDIR /var/lib/clipserve
# No server here; a trivial check that the toolchain imports keeps `docker ps` honest.
HEALTHCHECK NONE
ENTRYPOINT ["clipserve"]
CMD ["--help"]

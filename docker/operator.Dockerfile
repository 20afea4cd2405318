# syntax=docker/dockerfile:1
# The operator image: `densenet-operator run` (kopf) on python:3.11-slim, non-root.
#
#   docker build -f docker/operator.Dockerfile -t densenet-operator:0.1.0 .
#
# It installs the project with its `operator` extra only (pyproject.toml, the same extra the
# tests install): kopf and the Kubernetes clients, no torch.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The wheel carries both packages (pyproject.toml, tool.hatch.build.targets.wheel).
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# "./[operator]" is `.[operator]`: the project in this directory, with its operator extra.
RUN pip install --no-cache-dir "./[operator]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid/gid 65532, as distroless' nonroot: the chart runs the pod as 65532 with runAsNonRoot.
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
       --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080
ENTRYPOINT ["densenet-operator"]
CMD ["run"]

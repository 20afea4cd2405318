# syntax=docker/dockerfile:1
# The trainer image: `densenet-train launch` (torchrun over the DenseNet training entry point).
#
# Ascend (the default): one image per Ascend family, each on the CANN base image with that
# family's operator kernels (Python 3.11); torch, torchvision and torch_npu come pinned from the
# `npu` extra (EXTRAS=trainer,npu). The families, their CANN and their pins are written once, in
# operator/densenet_contract/cann.py (a test keeps this file and pyproject.toml in step):
#
#   ASCEND_FAMILY=910    Atlas 800 (Ascend 910)               products 910
#   ASCEND_FAMILY=910b   Atlas 800T A2 (910B), 8 or 16 chips   products 910b, 910b-16
#   ASCEND_FAMILY=a3     Atlas 900 A3, A3 SuperPoD             products a3, a3-superpod
#
#   docker build -f docker/trainer.Dockerfile -t densenet-trainer:0.1.0-910b \
#     --build-arg ASCEND_FAMILY=910b .
#
# On x86_64 hosts torch_npu wants torch's CPU build, which PyPI does not serve (its x86_64
# torch is the CUDA build): pass an index that serves the `+cpu` wheels (PyTorch's CPU wheel
# index, or your mirror of it) as PIP_EXTRA_INDEX_URL. aarch64 needs none (PyPI's torch is
# the CPU build there).
#
# The nodes' CANN driver must suit the image's CANN; the pods run as the nodes' HwHiAiUser
# (the chart's trainer.hwHiAiUser); RUN_AS_UID/RUN_AS_GID only set the image's default user.
#
# NVIDIA GPUs: a PyTorch CUDA runtime base (Python 3.11, torch preinstalled) without the npu
# extra, declaring no Ascend family or CANN:
#
#   docker build -f docker/trainer.Dockerfile -t densenet-trainer:0.1.0 \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#     --build-arg EXTRAS=trainer --build-arg ASCEND_FAMILY=none --build-arg CANN_VERSION=none .
#
# Any base works that has Python >= 3.11 as `python3` (pyproject.toml: requires-python) and
# `useradd`. What is installed comes from pyproject.toml's extras alone, the ones the tests
# install.
ARG ASCEND_FAMILY=910
ARG BASE_IMAGE=ascendai/cann:8.3.rc1-${ASCEND_FAMILY}-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}

# What the image declares about itself (the trainer prints it beside what it loads).
ARG ASCEND_FAMILY
ARG CANN_VERSION=8.3.RC1
LABEL dev.densenet.trainer.ascend-family="${ASCEND_FAMILY}" \
      dev.densenet.trainer.cann-version="${CANN_VERSION}"
# trainer: torch, torchvision, the status reporter's Kubernetes client. npu: torch_npu, and
# the exact torch pair for the CANN above.
ARG EXTRAS=trainer,npu
# pip reads it from the environment: an extra index for torch's +cpu wheels (x86_64 + npu).
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DENSENET_ASCEND_FAMILY=${ASCEND_FAMILY} \
    DENSENET_CANN_VERSION=${CANN_VERSION}

USER 0:0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The sources are bind-mounted for the install only: the image holds the installed package,
# not a copy of the repository.
RUN --mount=type=bind,source=.,target=/src,rw \
    python3 -m pip install --no-cache-dir "/src[${EXTRAS}]"

# The default user: HwHiAiUser's ids as Huawei documents them (1000:1000). The devices belong to
# the nodes' HwHiAiUser, whose ids a cluster may have otherwise: the operator runs Ascend pods
# as those (runAsUser/runAsGroup), so HOME is writable whoever the pod runs as.
ARG RUN_AS_UID=1000
ARG RUN_AS_GID=1000
RUN getent group "${RUN_AS_GID}" >/dev/null || groupadd --gid "${RUN_AS_GID}" trainer; \
    getent passwd "${RUN_AS_UID}" >/dev/null \
      || useradd --uid "${RUN_AS_UID}" --gid "${RUN_AS_GID}" --create-home \
         --home-dir /home/trainer --shell /bin/bash trainer; \
    mkdir -p /home/trainer && chmod 1777 /home/trainer
ENV HOME=/home/trainer

USER ${RUN_AS_UID}:${RUN_AS_GID}
WORKDIR /tmp
EXPOSE 29500
ENTRYPOINT ["densenet-train"]
CMD ["launch"]

# syntax=docker/dockerfile:1
# The trainer image: `densenet-train launch` (torchrun over the DenseNet training entry point).
#
# Ascend (the default): a CANN base with Python 3.11; torch and torch_npu come from the `npu`
# extra (EXTRAS=trainer,npu). Pick the CANN release that matches the NPU driver of the nodes:
#
#   docker build -f docker/trainer.Dockerfile -t densenet-trainer:0.1.0 .
#
# NVIDIA GPUs: a PyTorch CUDA runtime base (Python 3.11, torch preinstalled) without the npu
# extra:
#
#   docker build -f docker/trainer.Dockerfile -t densenet-trainer:0.1.0-cuda \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#     --build-arg EXTRAS=trainer .
#
# Any base works that has Python >= 3.11 as `python3` (pyproject.toml: requires-python) and
# `useradd`. An ascend/pytorch-style base with torch_npu preinstalled works with either EXTRAS;
# pip keeps the torch it finds when it satisfies pyproject.toml.
#
# What is installed comes from pyproject.toml's extras alone, the ones the tests install.
ARG BASE_IMAGE=ascendai/cann:8.3.rc1-910b-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}

# trainer: torch, torchvision, the status reporter's Kubernetes client. npu: torch_npu.
ARG EXTRAS=trainer,npu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 0:0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The sources are bind-mounted for the install only: the image holds the installed package,
# not a copy of the repository.
RUN --mount=type=bind,source=.,target=/src,rw \
    python3 -m pip install --no-cache-dir "/src[${EXTRAS}]"

# Non-root, uid/gid 1000: on Ascend nodes the devices (/dev/davinci*) belong to the driver's
# HwHiAiUser user and group, uid/gid 1000 by convention (CANN images may ship that user:
# it is reused when the base has one).
RUN getent group 1000 >/dev/null || groupadd --gid 1000 trainer; \
    getent passwd 1000 >/dev/null \
      || useradd --uid 1000 --gid 1000 --create-home --home-dir /home/trainer \
         --shell /bin/bash trainer

USER 1000:1000
WORKDIR /tmp
EXPOSE 29500
ENTRYPOINT ["densenet-train"]
CMD ["launch"]

"""Which torch_npu runs on which CANN, and the trainer image built for each Ascend family.

Standard library only: the operator (no torch) picks a job's image and its rank-table
settings from here, the trainer reads the pair its image declares, and tests tie
pyproject.toml's `npu` pins and docker/trainer.Dockerfile's defaults to these tables.

Sources, read on GitHub's mirrors of Huawei's repositories:
- `COMPATIBILITY`: Ascend/pytorch (torch_npu) `COMPATIBILITY.md`, branch master at bcfb2c8e
  (2026-08-10), the table of active releases: torch_npu version, its release branch, the torch
  it is built for, and the one CANN release it pairs with.
- `IMAGE_PAIRS`: Ascend/cann-container-image, branch master at c5a67b3a (2026-07-07),
  `cann/8.3.rc1-{910,910b,a3}-ubuntu22.04-py3.11/Dockerfile`: one CANN image per chip family,
  each installing its own operator-kernel package (Ascend-cann-kernels-910,
  Ascend-cann-kernels-910b, Atlas-A3-cann-kernels). A3 has kernels and an image of its own.
- `HOST_IP_SINCE_CANN`: Ascend/mind-cluster commit d4274e65 (2025-09-30, "add host_ip to the
  ranktable"), first released in MindCluster v7.2.RC1 (2025-10-23), the release line of CANN
  8.3.RC1 (torch_npu's `v*-7.2.0` branches pair with CANN 8.3.RC1 above). Older HCCL reads a
  valid `host_ip` as "the NICs are on the host", so ascend-operator writes it from then on.
- `HWHIAIUSER_UID`/`HWHIAIUSER_GID`: MindCluster's docs (docs/en/scheduling/developer_guide/
  installation_deployment/manual_installation/01_preparing_for_installation.md, and the
  image recipes of docs/en/scheduling/references/common_operations.md): HwHiAiUser, the
  driver's and CANN's running user, is to have uid and gid 1000 on every node and in every
  container ("check with getent passwd"; where 1000 was taken before the driver was installed,
  it has other ids, hence a per-cluster setting).

torch: torch_npu 2.4-2.8 on x86_64 need torch's `+cpu` wheels, which PyPI does not serve (its
x86_64 torch is the CUDA build); on aarch64 PyPI's torch is the CPU build. The trainer image
takes an extra pip index from its builder for that (docker/trainer.Dockerfile,
PIP_EXTRA_INDEX_URL): `torch==2.8.0` matches `2.8.0+cpu`, and pip prefers the local version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args


@dataclass(frozen=True)
class TorchNpuRelease:
    """One row of torch_npu's COMPATIBILITY table."""

    torch_npu: str
    branch: str  # the release branch of Ascend/pytorch
    torch: str
    cann: str


COMPATIBILITY: tuple[TorchNpuRelease, ...] = tuple(
    TorchNpuRelease(*row)
    for row in (
        ("2.12.0", "v2.12.0-26.1.0", "2.12.0", "9.1.0"),
        ("2.11.0", "v2.11.0-26.1.0", "2.11.0", "9.1.0"),
        ("2.10.0.post4", "v2.10.0-26.1.0", "2.10.0", "9.1.0"),
        ("2.9.0.post6", "v2.9.0-26.1.0", "2.9.0", "9.1.0"),
        ("2.7.1.post8", "v2.7.1-26.1.0", "2.7.1", "9.1.0"),
        ("2.9.0.post2", "v2.9.0-26.0.0", "2.9.0", "9.0.0"),
        ("2.8.0.post4", "v2.8.0-26.0.0", "2.8.0", "9.0.0"),
        ("2.7.1.post4", "v2.7.1-26.0.0", "2.7.1", "9.0.0"),
        ("2.9.0", "v2.9.0-7.3.0", "2.9.0", "8.5.0"),
        ("2.8.0.post2", "v2.8.0-7.3.0", "2.8.0", "8.5.0"),
        ("2.7.1.post2", "v2.7.1-7.3.0", "2.7.1", "8.5.0"),
        ("2.6.0.post5", "v2.6.0-7.3.0", "2.6.0", "8.5.0"),
        ("2.8.0", "v2.8.0-7.2.0", "2.8.0", "8.3.RC1"),
        ("2.7.1", "v2.7.1-7.2.0", "2.7.1", "8.3.RC1"),
        ("2.6.0.post3", "v2.6.0-7.2.0", "2.6.0", "8.3.RC1"),
        ("2.1.0.post17", "v2.1.0-7.2.0", "2.1.0", "8.3.RC1"),
        ("2.6.0", "v2.6.0-7.1.0", "2.6.0", "8.2.RC1"),
        ("2.5.1.post1", "v2.5.1-7.1.0", "2.5.1", "8.2.RC1"),
        ("2.1.0.post13", "v2.1.0-7.1.0", "2.1.0", "8.2.RC1"),
        ("2.5.1", "v2.5.1-7.0.0", "2.5.1", "8.1.RC1"),
        ("2.4.0.post4", "v2.4.0-7.0.0", "2.4.0", "8.1.RC1"),
        ("2.3.1.post6", "v2.3.1-7.0.0", "2.3.1", "8.1.RC1"),
        ("2.1.0.post12", "v2.1.0-7.0.0", "2.1.0", "8.1.RC1"),
        ("2.4.0.post2", "v2.4.0-6.0.0", "2.4.0", "8.0.0"),
        ("2.3.1.post4", "v2.3.1-6.0.0", "2.3.1", "8.0.0"),
        ("2.1.0.post10", "v2.1.0-6.0.0", "2.1.0", "8.0.0"),
    )
)


def torch_npu_for(cann: str) -> tuple[TorchNpuRelease, ...]:
    """The torch_npu releases that pair with `cann` (e.g. "8.3.RC1")."""
    return tuple(release for release in COMPATIBILITY if release.cann == cann)


def pairs(cann: str, torch_npu: str, torch: str) -> bool:
    """Whether torch_npu `torch_npu` built for torch `torch` runs on CANN `cann`."""
    return any(r.torch_npu == torch_npu and r.torch == torch for r in torch_npu_for(cann))


_CANN_VERSION = re.compile(r"(\d+)\.(\d+)\.(?:RC(\d+)|(\d+))", re.IGNORECASE)


def cann_version_key(cann: str) -> tuple[int, int, int, int]:
    """A sortable key of a CANN version: 8.3.RC1 < 8.3.RC2 < 8.5.0 < 9.0.0 (a release
    candidate sorts before the final release of its minor version)."""
    match = _CANN_VERSION.fullmatch(cann.strip())
    if not match:
        raise ValueError(f"not a CANN version (such as 8.3.RC1 or 8.5.0): {cann!r}")
    major, minor, candidate, patch = match.groups()
    if candidate is not None:
        return int(major), int(minor), 0, int(candidate)
    return int(major), int(minor), 1, int(patch)


# ---------------------------------------------------------------- rank tables

HOST_IP_SINCE_CANN = "8.3.RC1"


def rank_table_host_ip_safe(cann: str) -> bool:
    """Whether HCCL of `cann` takes a rank table's `host_ip` as information only (the NICs
    stay the devices'), so that the operator may write it as ascend-operator does."""
    return cann_version_key(cann) >= cann_version_key(HOST_IP_SINCE_CANN)


# ---------------------------------------------------------------- the trainer images

AscendFamily = Literal["910", "910b", "a3"]
ASCEND_FAMILIES: tuple[str, ...] = get_args(AscendFamily)
CANN_IMAGE_REPOSITORY = "ascendai/cann"  # cann-container-image's images, by their registry path
PYTHON_VERSION = "3.11"  # pyproject.toml: requires-python >= 3.11
CANN_IMAGE_OS = "ubuntu22.04"


@dataclass(frozen=True)
class AscendImage:
    """The trainer image of one Ascend family: its CANN base and the torch pair pinned in it."""

    family: str  # docker/trainer.Dockerfile's ASCEND_FAMILY and the image tag's suffix
    systems: str  # the hardware it is for
    kernels: str  # the CANN operator-kernel package of the base image
    cann: str
    torch: str  # pyproject.toml's `npu` extra pins these three
    torch_npu: str
    torchvision: str

    @property
    def base_image(self) -> str:
        """The CANN base image (cann-container-image's tag: lower-case version, chip, OS, Python)."""
        tag = f"{self.cann.lower()}-{self.family}-{CANN_IMAGE_OS}-py{PYTHON_VERSION}"
        return f"{CANN_IMAGE_REPOSITORY}:{tag}"

    @property
    def rank_table_host_ip(self) -> bool:
        return rank_table_host_ip_safe(self.cann)


# One CANN and one torch pair for every family: one set of pins in pyproject.toml. torch_npu
# 2.8.0 is the newest that CANN 8.3.RC1 takes; torchvision 0.23.0 is built for torch 2.8.0.
_PINNED = {"cann": "8.3.RC1", "torch": "2.8.0", "torch_npu": "2.8.0", "torchvision": "0.23.0"}
IMAGE_PAIRS: dict[str, AscendImage] = {
    image.family: image
    for image in (
        AscendImage("910", "Atlas 800 (Ascend 910)", "Ascend-cann-kernels-910", **_PINNED),
        AscendImage(
            "910b", "Atlas 800T A2 (Ascend 910B), 8 or 16 chips", "Ascend-cann-kernels-910b",
            **_PINNED,
        ),
        AscendImage(
            "a3", "Atlas 900 A3 and its SuperPoD", "Atlas-A3-cann-kernels", **_PINNED
        ),
    )
}  # fmt: skip
assert tuple(IMAGE_PAIRS) == ASCEND_FAMILIES

# device.ascend.product -> its image family (densenet_operator.ascend.products.PRODUCTS; a test checks
# that every product has one).
FAMILY_OF_PRODUCT: dict[str, str] = {
    "910": "910",
    "910b": "910b",
    "910b-16": "910b",
    "a3": "a3",
    "a3-superpod": "a3",
}


def trainer_image_tag(version: str, family: str) -> str:
    """The tag of the trainer image of `family` for the project's `version`: 0.1.0-910."""
    return f"{version}-{family}"


class ImageEnv:
    """What a trainer image declares about itself (docker/trainer.Dockerfile sets them from its
    build arguments; the trainer prints them beside the versions it actually loads)."""

    ASCEND_FAMILY = "DENSENET_ASCEND_FAMILY"
    CANN_VERSION = "DENSENET_CANN_VERSION"


IMAGE_LABEL_PREFIX = "dev.densenet.trainer."  # + ascend-family, cann-version


# ---------------------------------------------------------------- the devices' owner

# /dev/davinci* and the driver's files belong to HwHiAiUser: its uid and gid are 1000 where
# Huawei's documents are followed; a cluster whose nodes differ sets its own (the chart's
# trainer.hwHiAiUser).
HWHIAIUSER_UID = 1000
HWHIAIUSER_GID = 1000

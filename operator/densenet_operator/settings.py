"""What the operator fills in for a job that does not say: its trainer image (one per Ascend
family, one for cpu and cuda), whether its rank table carries `host_ip`, the user its Ascend
pods run as (read once from the environment the chart sets, handlers.py) and its gang backend
(discovered from the cluster). Everything else takes the typed value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from densenet_contract import cann
from densenet_operator.ascend.products import PRODUCTS

PROJECT_VERSION = "0.1.0"  # the chart's appVersion: the images' default tags
DEFAULT_TRAINER_IMAGE = f"densenet-trainer:{PROJECT_VERSION}"


class SettingsEnv:
    """The operator's environment (charts/densenet-operator/templates/deployment.yaml)."""

    TRAINER_IMAGE = "DENSENET_TRAINER_IMAGE"  # cpu and cuda jobs
    ASCEND_IMAGE_PREFIX = "DENSENET_TRAINER_IMAGE_"  # + the family, upper case: _910, _910B, _A3
    RANK_TABLE_HOST_IP = "DENSENET_RANK_TABLE_HOST_IP"  # true, false; unset: by the image's CANN
    ASCEND_RUN_AS_USER = "DENSENET_ASCEND_RUN_AS_USER"  # HwHiAiUser's uid on the nodes
    ASCEND_RUN_AS_GROUP = "DENSENET_ASCEND_RUN_AS_GROUP"  # ... and its gid

    @classmethod
    def ascend_image(cls, family: str) -> str:
        return cls.ASCEND_IMAGE_PREFIX + family.upper()


@dataclass(frozen=True)
class RunAs:
    """The uid and gid of HwHiAiUser, who owns /dev/davinci* on the nodes."""

    uid: int = cann.HWHIAIUSER_UID
    gid: int = cann.HWHIAIUSER_GID


@dataclass(frozen=True)
class TrainerDefaults:
    """The operator's defaults for a job's trainer.

    `ascend_images` maps an Ascend family (densenet_contract.cann.ASCEND_FAMILIES) to its
    image; a family missing from it takes `image`, so `TrainerDefaults(image="x")` gives every
    job "x". `rank_table_host_ip` None: from the CANN of the family's image pair."""

    image: str = DEFAULT_TRAINER_IMAGE
    ascend_images: Mapping[str, str] = field(default_factory=dict)
    rank_table_host_ip: bool | None = None
    ascend_run_as: RunAs = field(default_factory=RunAs)
    # What `scheduling.gang: auto` means, by schedulerName (None: unset); not listed: none.
    # Discovered from the cluster at start (backends.auto_gangs), not read from the env.
    auto_gangs: Mapping[str | None, str] = field(default_factory=dict)

    def image_for(self, device_type: str, product: str) -> str:
        """The image of a job without spec.image: its Ascend family's, else the plain one."""
        if device_type != "ascend":
            return self.image
        return self.ascend_images.get(cann.FAMILY_OF_PRODUCT[product], self.image)

    def rank_table_host_ip_for(self, product: str) -> bool:
        """Whether a job on `product` writes `host_ip` into its rank table by default."""
        if self.rank_table_host_ip is not None:
            return self.rank_table_host_ip
        return cann.IMAGE_PAIRS[cann.FAMILY_OF_PRODUCT[product]].rank_table_host_ip

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainerDefaults:
        """The settings in `env` (os.environ); unset: the project's images, the image pairs'
        host_ip, HwHiAiUser as Huawei documents it (1000:1000)."""
        image = env.get(SettingsEnv.TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE
        ascend_images = {
            family: env.get(SettingsEnv.ascend_image(family)) or default_ascend_image(family)
            for family in cann.ASCEND_FAMILIES
        }
        run_as = RunAs(
            uid=_integer(env, SettingsEnv.ASCEND_RUN_AS_USER, cann.HWHIAIUSER_UID),
            gid=_integer(env, SettingsEnv.ASCEND_RUN_AS_GROUP, cann.HWHIAIUSER_GID),
        )
        host_ip = _boolean(env, SettingsEnv.RANK_TABLE_HOST_IP)
        return cls(image, ascend_images, host_ip, run_as)

    def describe(self) -> str:
        """One line for the operator's start-up log."""
        images = ", ".join(f"{f}: {self.image_for('ascend', p)}" for f, p in _FAMILY_PRODUCTS)
        host_ip = ", ".join(
            f"{f}: {str(self.rank_table_host_ip_for(p)).lower()}" for f, p in _FAMILY_PRODUCTS
        )
        run_as = self.ascend_run_as
        return (
            f"trainer images: cpu/cuda {self.image}, ascend {images}; rank-table host_ip "
            f"{host_ip}; Ascend pods run as {run_as.uid}:{run_as.gid}"
        )


# Each family with one of its products, for describe().
_FAMILY_PRODUCTS = tuple(
    (family, next(p for p in PRODUCTS if cann.FAMILY_OF_PRODUCT[p] == family))
    for family in cann.ASCEND_FAMILIES
)


def default_ascend_image(family: str) -> str:
    """The chart's default image of an Ascend family: densenet-trainer:0.1.0-910."""
    return f"densenet-trainer:{cann.trainer_image_tag(PROJECT_VERSION, family)}"


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"{name} must be a uid/gid (a non-negative integer), not {value!r}")
    return int(value)


def _boolean(env: Mapping[str, str], name: str) -> bool | None:
    value = env.get(name, "").strip().lower()
    if value in ("", "null", "auto"):
        return None
    if value not in ("true", "false"):
        raise ValueError(f"{name} must be true, false or empty, not {value!r}")
    return value == "true"

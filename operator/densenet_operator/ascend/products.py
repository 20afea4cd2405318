"""The Ascend systems a job can target, as Huawei's stack knows them (MindCluster's
ascend-for-volcano `internal/npu/`, ascend-operator `pkg/ranktable`; see ../shared/REFERENCE.md,
"Ascend in 2026"). One row per product: the node label Volcano's Ascend plugin selects by, the
chips a pod may ask for, and the rank-table version HCCL needs. Beside them, the names and paths
of Huawei's stack that the pods carry (labels, annotations, the driver's host paths, the
variables the operator sets), which podtemplate.py's rules and ascend/pod.py read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from densenet_contract import Env

ProductName = Literal["910", "910b", "910b-16", "a3", "a3-superpod"]
ACCELERATOR_TYPE_LABEL = "accelerator-type"
RING_CONTROLLER_LABEL = "ring-controller.atlas"
RANK_INDEX_ANNOTATION = "hccl/rankIndex"
# The chips a scheduler chose for a pod (Volcano's Ascend plugin): "Ascend910-0,Ascend910-1".
SCHEDULED_DEVICES_ANNOTATION = "huawei.com/Ascend910"
# The driver and its logs, mounted from the node into every Ascend container (ascend/pod.py).
HOST_PATHS = {
    "ascend-driver": "/usr/local/Ascend/driver",
    "ascend-add-ons": "/usr/local/Ascend/add-ons",
    "npu-log": "/var/log/npu",
}
# The variables the operator sets in an Ascend container (ascend/pod.py); spec.env may not.
CONTAINER_ENV = (
    Env.RANK_TABLE_FILE, Env.HCCL_IF_IP, Env.HCCL_LOGIC_SUPERPOD_ID, Env.ASCEND_VISIBLE_DEVICES,
)  # fmt: skip


@dataclass(frozen=True)
class Product:
    name: str
    system: str  # what the hardware is called
    accelerator_type: str | None  # the node label's value; None: the label may be absent
    chips_per_node: int
    devices: tuple[int, ...]  # devicesPerReplica a pod of a multi-replica job may ask for
    single_replica_devices: tuple[int, ...]  # ... and of a one-replica job
    why: str  # the hardware's reason, for the refusal message
    ring_controller: str  # the pod label Huawei's samples set
    super_pod: bool = False  # A3 super pod: rank table v1.2, logical super pods of sp-block

    @property
    def rank_table_version(self) -> str:
        return "1.2" if self.super_pod else "1.0"

    def allowed(self, replicas: int) -> tuple[int, ...]:
        return self.single_replica_devices if replicas == 1 else self.devices


def _even(limit: int) -> tuple[int, ...]:
    return tuple(range(2, limit + 1, 2))


PRODUCTS: dict[str, Product] = {
    p.name: p
    for p in (
        Product("910", "Atlas 800 (Ascend 910)", None, 8, (1, 2, 4, 8), (1, 2, 4, 8),
                "a server has 8 chips in two HCCS rings of 4", "ascend-910"),
        Product("910b", "Atlas 800T A2 (Ascend 910B)", "module-910b-8", 8, tuple(range(1, 9)),
                tuple(range(1, 9)), "a server has 8 chips", "ascend-910b"),
        Product("910b-16", "Atlas 800T A2, 16 chips", "module-910b-16", 16,
                (*range(1, 9), 10, 12, 14, 16), (*range(1, 9), 10, 12, 14, 16),
                "more than 8 chips pair across the server's two halves", "ascend-910b"),
        Product("a3", "Atlas 900 A3 (16 NPUs per node)", "module-a3-16", 16, _even(16),
                (1, *_even(16)), "chips come in pairs; 1 only for a one-pod job", "ascend-910b"),
        Product("a3-superpod", "Atlas 900 A3 SuperPoD", "module-a3-16-super-pod", 16, (16,),
                (1, *_even(16)), "a pod of a distributed job takes a whole node of 16",
                "ascend-910b", super_pod=True),
    )
}  # fmt: skip
PRODUCT_NAMES: tuple[str, ...] = get_args(ProductName)
assert tuple(PRODUCTS) == PRODUCT_NAMES


def logical_super_pod(replica_index: int, block: int, chips_per_pod: int) -> int:
    """The logical super pod of a replica: replicas fill blocks of `block` NPUs in rank order
    (ascend-operator's GetLogicSuperPodId)."""
    if block <= 0 or chips_per_pod <= 0:
        return 0
    return replica_index // max(1, block // chips_per_pod)


def describe_counts(counts: tuple[int, ...]) -> str:
    return (
        ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"
        if len(counts) > 1
        else str(counts[0])
    )

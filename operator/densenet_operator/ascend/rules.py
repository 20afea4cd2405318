"""The Ascend rules of the spec, as CEL for the API server and as Python for `parse_spec`:
devicesPerReplica per product (as Volcano's Ascend plugin allows it), and the A3 super-pod
fields. `spec.TrainingSpec.RULES` includes them; `self` is the spec.
"""

from __future__ import annotations

from densenet_contract.schema import Rule
from densenet_operator.ascend.products import PRODUCTS, Product, describe_counts


def devices_rule(product: Product) -> Rule:
    """devicesPerReplica as Volcano's Ascend plugin allows it on `product`."""
    multi, single = list(product.devices), list(product.single_replica_devices)
    counts = describe_counts(product.devices)
    if single != multi:
        extra = sorted(set(single) - set(multi))
        counts += f" ({describe_counts(tuple(extra))} for a one-replica job)"
    return Rule(
        f"self.device.type != 'ascend' || self.device.ascend.product != '{product.name}' || "
        f"self.devicesPerReplica in (self.replicas == 1 ? {single} : {multi})",
        f"devicesPerReplica must be {counts} for {product.system} (device.ascend.product "
        f"{product.name}): {product.why}",
        lambda spec: (
            spec.device.type != "ascend"
            or spec.device.ascend.product != product.name
            or spec.devices_per_replica in product.allowed(spec.replicas)
        ),
        field_path=".devicesPerReplica",
    )


DEVICES_RULES = tuple(devices_rule(product) for product in PRODUCTS.values())

_SUPER_POD = "self.device.type == 'ascend' && self.device.ascend.product == 'a3-superpod'"
_BLOCK = "self.device.ascend.superPodBlock"
SUPER_POD_RULES = (
    Rule(
        f"!has({_BLOCK}) || ({_SUPER_POD})",
        "device.ascend.superPodBlock is for device.ascend.product a3-superpod only",
        lambda spec: (
            spec.device.ascend.super_pod_block is None
            or (spec.device.type == "ascend" and spec.device.ascend.product == "a3-superpod")
        ),
        field_path=".device.ascend.superPodBlock",
    ),
    Rule(
        f"!has({_BLOCK}) || (self.replicas == 1 ? {_BLOCK} == self.devicesPerReplica : "
        f"{_BLOCK} % 16 == 0 && (self.replicas * self.devicesPerReplica) % {_BLOCK} == 0)",
        "device.ascend.superPodBlock must divide the world size (replicas x devicesPerReplica) "
        "in whole nodes of 16, or equal devicesPerReplica for a one-replica job",
        lambda spec: (
            spec.device.ascend.super_pod_block is None
            or (
                spec.device.ascend.super_pod_block == spec.devices_per_replica
                if spec.replicas == 1
                else spec.device.ascend.super_pod_block % 16 == 0
                and spec.world_size % spec.device.ascend.super_pod_block == 0
            )
        ),
        field_path=".device.ascend.superPodBlock",
    ),
    Rule(
        f"!has(self.rankTable.format) || self.rankTable.format != '1.2' || ({_SUPER_POD})",
        'rankTable.format "1.2" is for A3 super pods (device.ascend.product a3-superpod)',
        lambda spec: spec.rank_table.format != "1.2" or spec.product.super_pod,
        field_path=".rankTable.format",
    ),
)

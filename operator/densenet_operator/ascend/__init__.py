"""Ascend, in one place: everything the operator knows of Huawei's stack.

- `products`: the systems a job can target (node label, allowed devices, rank-table version);
- `deviceconfig`: the device plugin's pod annotation, read with bounds;
- `hccl`: HCCL's acceptance rules for a rank table;
- `ranktable`: the rank table, built from a job's pods;
- `rules`: the spec's Ascend rules (devicesPerReplica per product, A3 super pods), CEL and Python;

The rest of the operator is device-neutral and asks these modules. This package imports
nothing at import time, so that `spec.py` can read the products without a cycle.
"""

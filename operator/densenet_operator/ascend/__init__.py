"""Ascend, in one place: everything the operator knows of Huawei's stack.

- `products`: the systems a job can target (node label, allowed devices, rank-table version);
- `deviceconfig`: the device plugin's pod annotation, read with bounds;
- `hccl`: HCCL's acceptance rules for a rank table;
- `ranktable`: the rank table and its ConfigMap, built from a job's pods;
- `rules`: the spec's Ascend rules (devicesPerReplica per product, A3 super pods), CEL and Python;
- `pod`: what an Ascend pod adds to the operator's pod (node selector, labels, annotation, env,
  the driver's mounts, the security context), merged by pods.py;
- `cli`: the `rank-table` and `check-rank-table` commands of `densenet-operator`.

The rest of the operator is device-neutral and asks these modules. This package imports
nothing at import time, so that `spec.py` can read the products without a cycle.
"""

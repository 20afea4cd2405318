#!/usr/bin/env python3
"""A local Kubernetes cluster for the tests, the demo and the benchmarks, and its CLI.

The cluster is the control plane of controlplane.py (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd and kwok-controller, built from Go modules, started by kwokctl) with the
fake Ascend nodes of fakenodes.py. `start` starts it (or reuses it when it already runs) and
waits until pods can be created; `stop` ends every process it started.

    python hack/localcluster.py up [--name densenet] [--nodes 4]   # last line: kubeconfig path
    python hack/localcluster.py status
    python hack/localcluster.py down
    python hack/localcluster.py add-node NAME / delete-node NAME

hack/cluster-up.sh and hack/cluster-down.sh run it with the project's venv (it needs psutil).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import controlplane
import fakenodes
from controlplane import DEFAULT_NAME, Cluster, ClusterError, connect, log, stop
from fakenodes import DEFAULT_NODES, add_node, delete_node
from testsupport import TimedOut, service_account_kubeconfig, wait_default_service_account

# What callers use from here: the cluster as a whole; the parts live in their own modules.
__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_NODES",
    "Cluster",
    "ClusterError",
    "add_node",
    "connect",
    "delete_node",
    "service_account_kubeconfig",
    "start",
    "status",
    "stop",
]


def start(
    name: str = DEFAULT_NAME,
    nodes: int = DEFAULT_NODES,
    *,
    bin_dir: Path | None = None,
    timeout: float = 180,
) -> Cluster:
    """Start the cluster, or reuse it when it already runs healthy; wait for nodes Ready."""
    started = time.monotonic()
    with controlplane.locked(name):
        cluster = controlplane.up(name, bin_dir=bin_dir, timeout=timeout)
        names = fakenodes.ensure_nodes(
            cluster, fakenodes.default_node_names(nodes), timeout=timeout
        )
        wait_default_service_account(cluster.kubectl, "default", timeout)
    log(f"cluster {name!r} ready in {time.monotonic() - started:.1f} s: {cluster.kubeconfig}")
    return dataclasses.replace(cluster, nodes=names)


def status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Components (pid, running), health, and each node's readiness, IP, podCIDR and NPUs."""
    info: dict[str, Any] = {
        "name": name,
        "workdir": str(controlplane.cluster_dir(name)),
        "kubeconfig": str(controlplane.kubeconfig_path(name)),
        "components": controlplane.component_status(name),
        "healthy": False,
        "nodes": {},
    }
    try:
        cluster = connect(name)
    except ClusterError:
        return info
    info["healthy"] = True
    info["nodes"] = fakenodes.node_summary(cluster)
    return info


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=os.environ.get("DENSENET_CLUSTER", DEFAULT_NAME))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the cluster; prints the kubeconfig path")
    up.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    sub.add_parser("down", help="stop the cluster and remove its state")
    sub.add_parser("status", help="components, health and nodes, as JSON")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    add = sub.add_parser("add-node", help="add a fake Ascend node")
    add.add_argument("node")
    add.add_argument("--npus", type=int, default=8)
    delete = sub.add_parser("delete-node", help="delete a node")
    delete.add_argument("node")
    delete.add_argument(
        "--gc-pods", action="store_true", help="fail and delete its pods now, not in ~45 s"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            print(start(args.name, args.nodes).kubeconfig)
        elif args.command == "down":
            stop(args.name)
        elif args.command == "status":
            info = status(args.name)
            print(json.dumps(info, indent=2))
            return 0 if info["healthy"] else 1
        elif args.command == "kubeconfig":
            print(controlplane.kubeconfig_path(args.name))
        elif args.command == "add-node":
            add_node(connect(args.name), args.node, npus=args.npus)
        elif args.command == "delete-node":
            delete_node(connect(args.name), args.node, gc_pods=args.gc_pods)
    except (ClusterError, TimedOut) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

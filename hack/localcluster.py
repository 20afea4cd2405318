#!/usr/bin/env python3
"""A local Kubernetes cluster for the tests, the demo and the benchmarks, and its CLI.

The cluster is the control plane of controlplane.py (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd and kwok-controller, built from Go modules, started by kwokctl) with the
fake Ascend nodes of fakenodes.py and the simulated Ascend device plugin of deviceplugin.py,
and, when asked, Kueue's manager with its webhooks (kueue.py).
`start` starts it (or reuses it when it already runs) and waits until pods can be created;
`stop` ends every process it started.

    python hack/localcluster.py up [--name densenet] [--nodes 4]   # last line: kubeconfig path
    python hack/localcluster.py up --products 910b=2,a3-superpod=2  # and nodes of other products
    python hack/localcluster.py up --no-device-plugin              # pods stay unannotated
    python hack/localcluster.py up --real-nodes 0                   # no real node (realnode.py)
    python hack/localcluster.py up --kueue                          # and Kueue (kueue.py)
    python hack/localcluster.py load-image ARCHIVE                  # into the real nodes
    python hack/localcluster.py status
    python hack/localcluster.py down
    python hack/localcluster.py add-node NAME [--product 910b] / delete-node NAME

hack/cluster-up.sh and hack/cluster-down.sh run it with the project's venv (it needs psutil).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import controlplane
import fakenodes
import realnode
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
    "load_image",
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
    products: Mapping[str, int] | None = None,
    device_plugin: bool | None = None,
    real_nodes: int | None = None,
    kueue: bool | None = None,
) -> Cluster:
    """Start the cluster, or reuse it when it already runs healthy; wait for nodes Ready.

    `nodes` 910 nodes (`ascend-node-<i>`), plus `products[p]` nodes of each product p
    (`ascend-<p>-<i>`, see fakenodes.PRODUCTS), plus `real_nodes` real nodes (`real-node-<i>`,
    see realnode.py; None: `realnode.default_count()`, 1 on a machine that can run one). The
    device plugin runs unless `device_plugin` is False (None: unless DENSENET_DEVICE_PLUGIN=0);
    Kueue (kueue.py) runs when `kueue` is True and is stopped when False (None: DENSENET_KUEUE
    when set, else as the running cluster had it).
    """
    started = time.monotonic()
    real_nodes = realnode.default_count() if real_nodes is None else real_nodes
    with controlplane.locked(name):
        cluster = controlplane.up(
            name, bin_dir=bin_dir, timeout=timeout, device_plugin=device_plugin,
            real_nodes=real_nodes > 0, kueue=kueue,
        )  # fmt: skip
        names = fakenodes.ensure_nodes(
            cluster, fakenodes.default_node_names(nodes), timeout=timeout
        )
        for product, count in (products or {}).items():
            names += fakenodes.ensure_product_nodes(cluster, product, count, timeout=timeout)
        site = controlplane.real_node_site(name, cluster.bin_dir)
        real = tuple(realnode.ensure_nodes(site, cluster.kubectl, real_nodes, timeout=timeout))
        wait_default_service_account(cluster.kubectl, "default", timeout)
    log(f"cluster {name!r} ready in {time.monotonic() - started:.1f} s: {cluster.kubeconfig}")
    return dataclasses.replace(cluster, nodes=names, real_nodes=real)


def load_image(cluster: Cluster, archive: Path, ref: str | None = None) -> list[str]:
    """Import an image archive (OCI or docker-archive) into every real node's containerd, where
    pods find it (imagePullPolicy IfNotPresent or Never); returns the image's names. With
    `ref`, the image's name, nodes that already have it are skipped."""
    site = controlplane.real_node_site(cluster.name, cluster.bin_dir)
    return realnode.load_image(site, archive, ref)


def status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Components and the device plugin (pid, running), health, and each node's readiness, IP,
    podCIDR, accelerator-type and NPUs."""
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
    info["real_nodes"] = realnode.status(controlplane.real_node_site(name, cluster.bin_dir))
    return info


def parse_products(text: str) -> dict[str, int]:
    """ "910b=2,a3-superpod=2" -> {"910b": 2, "a3-superpod": 2}."""
    products = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        product, _, count = item.partition("=")
        fakenodes.find_product(product)
        if not count.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected PRODUCT=COUNT")
        products[product] = int(count)
    return products


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=os.environ.get("DENSENET_CLUSTER", DEFAULT_NAME))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the cluster; prints the kubeconfig path")
    up.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="910 nodes")
    up.add_argument(
        "--products",
        type=parse_products,
        default={},
        help=f"more nodes: PRODUCT=COUNT,... ({', '.join(fakenodes.PRODUCTS)}); jobs "
        "without a nodeSelector may land on them too",
    )
    up.add_argument(
        "--no-device-plugin",
        dest="device_plugin",
        action="store_false",
        default=None,
        help="leave pods unannotated (default: DENSENET_DEVICE_PLUGIN)",
    )
    up.add_argument(
        "--real-nodes",
        type=int,
        default=None,
        help="real nodes running pods (default: DENSENET_REAL_NODES, else 1 as root with "
        "the packages of hack/setup.sh, else 0)",
    )
    up.add_argument(
        "--kueue",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run (or stop) Kueue's manager and webhooks (kueue.py; default: DENSENET_KUEUE "
        "when set, else as the running cluster has it)",
    )
    sub.add_parser("down", help="stop the cluster and remove its state")
    load = sub.add_parser("load-image", help="import an image archive into the real nodes")
    load.add_argument("archive", type=Path)
    sub.add_parser("status", help="components, health and nodes, as JSON")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    add = sub.add_parser("add-node", help="add a fake Ascend node")
    add.add_argument("node")
    add.add_argument("--product", choices=list(fakenodes.PRODUCTS), default="910")
    add.add_argument("--npus", type=int, help="chips (default: the product's)")
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
            cluster = start(
                args.name, args.nodes, products=args.products, device_plugin=args.device_plugin,
                real_nodes=args.real_nodes, kueue=args.kueue,
            )  # fmt: skip
            print(cluster.kubeconfig)
        elif args.command == "down":
            stop(args.name)
        elif args.command == "status":
            info = status(args.name)
            print(json.dumps(info, indent=2))
            return 0 if info["healthy"] else 1
        elif args.command == "load-image":
            cluster = connect(args.name)
            site = controlplane.real_node_site(args.name, cluster.bin_dir)
            print("\n".join(realnode.load_image(site, args.archive)))
        elif args.command == "kubeconfig":
            print(controlplane.kubeconfig_path(args.name))
        elif args.command == "add-node":
            add_node(connect(args.name), args.node, product=args.product, npus=args.npus)
        elif args.command == "delete-node":
            delete_node(connect(args.name), args.node, gc_pods=args.gc_pods)
    except (ClusterError, TimedOut) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

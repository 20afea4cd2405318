"""The HCCL rank table, built from a job's pods and the Ascend device plugin's annotations.

A pure function of the pods: the table is either complete and one HCCL accepts, or not
published at all (RankTableIncomplete says which pods hold it up, and why). Never a table with
a device IP of "-1", a device count that differs from the spec, or anything `hccl.findings`
finds. Formats: "1.0" (server_list, with host_ip), "1.2" (A3 super pods: super_device_id and
super_pod_list) and the legacy "0.1" (group_list), as ascend-operator writes them (MindCluster
`pkg/ranktable`). What a format needs of the annotation is checked per pod (layout_problems):
an empty device IP only in a "1.2" table of one super pod (written "", as ascend-operator
writes it), and a readable super_device_id on every device of a "1.2" table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from densenet_contract import RANK_TABLE_COMPLETED as COMPLETED
from densenet_contract import RANK_TABLE_INITIALIZING as INITIALIZING
from densenet_contract import RANK_TABLE_KEY
from densenet_contract import RANK_TABLE_NOT_REQUIRED as NOT_REQUIRED
from densenet_operator import naming
from densenet_operator.ascend import deviceconfig, hccl
from densenet_operator.ascend.deviceconfig import (
    NO_DEVICE_IP,
    SUPER_DEVICE_ID_UNREADABLE,
    Device,
    DeviceConfig,
    Refused,
)
from densenet_operator.ascend.products import logical_super_pod
from densenet_operator.podrecord import PodRecord
from densenet_operator.spec import JobRef, RankTableFormat, TrainingSpec

FORMATS: tuple[str, ...] = get_args(RankTableFormat)


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pod}: {self.reason}"


class RankTableIncomplete(Exception):
    """The pods cannot make a valid rank table yet (or at all)."""

    def __init__(self, problems: Sequence[PodProblem]):
        self.problems = list(problems)
        super().__init__("; ".join(map(str, self.problems)))

    @property
    def waiting_for(self) -> list[str]:
        return [str(problem) for problem in self.problems]


@dataclass(frozen=True)
class Server:
    pod_name: str
    pod_uid: str | None
    node_name: str | None
    replica_index: int
    host_ip: str  # the node's IP
    container_ip: str  # the pod's IP
    config: DeviceConfig
    server_id: str = ""  # chosen once every server is known (choose_server_ids)

    @property
    def devices(self) -> tuple[Device, ...]:
        return self.config.devices


def _server(pod: PodRecord, devices_per_replica: int) -> Server:
    if not pod.pod_ip:
        raise Refused("has no pod IP yet")
    config = deviceconfig.parse(pod.device_config)
    if len(config.devices) != devices_per_replica:
        raise Refused(
            f"the device plugin assigned {len(config.devices)} devices, the job asks for "
            f"{devices_per_replica}"
        )
    host_ip = config.host_ip or pod.host_ip
    if not host_ip:
        raise Refused("has no host IP yet")
    assert pod.index is not None  # collect_servers placed it by its index
    return Server(pod.name, pod.uid, pod.node_name, pod.index, host_ip, pod.pod_ip, config)


def choose_server_ids(servers: Sequence[Server]) -> list[Server]:
    """A `server_id` HCCL accepts (unique), as ascend-operator picks it: the node's IP when
    every pod has a node of its own; else the device plugin's server_id (the pod UID since
    plugin v7.3.0) when those are unique; else the pod UID."""
    nodes = [s.node_name or s.host_ip for s in servers]
    if len(set(nodes)) == len(nodes):
        return [dataclasses.replace(s, server_id=s.host_ip) for s in servers]
    annotated = [s.config.server_id for s in servers]
    if None not in annotated and len(set(annotated)) == len(annotated):
        return [dataclasses.replace(s, server_id=str(s.config.server_id)) for s in servers]
    return [dataclasses.replace(s, server_id=s.pod_uid or s.pod_name) for s in servers]


def _placed(
    pods: Iterable[PodRecord], replicas: int
) -> tuple[dict[int, PodRecord], list[PodProblem]]:
    by_index: dict[int, PodRecord] = {}
    problems: list[PodProblem] = []
    for pod in pods:
        if pod.index is None:
            problems.append(
                PodProblem(pod.name, f"has no numeric {naming.LABEL_REPLICA_INDEX} label")
            )
        elif pod.index >= replicas:
            problems.append(
                PodProblem(pod.name, f"replica index {pod.index} is beyond {replicas} replicas")
            )
        elif pod.index in by_index:
            problems.append(
                PodProblem(pod.name, f"replica index {pod.index} is taken by another pod")
            )
        else:
            by_index[pod.index] = pod
    return by_index, problems


def collect_servers(
    pods: Iterable[PodRecord],
    *,
    replicas: int,
    devices_per_replica: int,
    pod_names: Sequence[str] | None = None,
) -> list[Server]:
    """The servers in replica order, or RankTableIncomplete naming every pod that holds it up.

    `pod_names[i]` names replica i in messages when that pod does not exist yet.
    """
    by_index, problems = _placed(pods, replicas)
    servers: list[Server] = []
    for index in range(replicas):
        found = by_index.get(index)
        if found is None:
            label = pod_names[index] if pod_names else f"replica {index}"
            problems.append(PodProblem(label, "does not exist yet"))
            continue
        try:
            servers.append(_server(found, devices_per_replica))
        except Refused as problem:
            problems.append(PodProblem(found.name, str(problem)))
    if problems:
        raise RankTableIncomplete(problems)
    return choose_server_ids(servers)


@dataclass(frozen=True)
class Layout:
    """How to write the table: its format, the legacy group's name, super-pod blocks, and
    whether servers carry `host_ip`."""

    fmt: str = "1.0"
    group_name: str = naming.WORKER  # "0.1": the job's name
    super_pod_block: int = 0  # "1.2": NPUs per logical super pod (0: one for the job)
    # HCCL before late-2025 CANN reads a valid host_ip as "use the host NICs, not the NPUs'".
    host_ip: bool = True


def render(servers: Sequence[Server], layout: Layout | str = Layout()) -> dict[str, Any]:
    """The completed rank table: "1.0" (server_list), "1.2" (with super pods) or the legacy
    "0.1" (group_list). All values are strings, as HCCL expects."""
    layout = Layout(layout) if isinstance(layout, str) else layout
    if layout.fmt in ("1.0", "1.2"):
        return _render_server_list(servers, layout)
    if layout.fmt == "0.1":
        return _render_group_list(servers, layout.group_name)
    raise ValueError(f"unknown rank table format {layout.fmt!r}: expected one of {FORMATS}")


def _device_entry(device: Device, rank: int, v12: bool) -> dict[str, str]:
    entry = {"device_id": device.device_id, "device_ip": device.device_ip, "rank_id": str(rank)}
    # Only the plugin's own id: the chip's address in the super pod, never derived from
    # device_id (ascend-operator copies it, omitted when absent; hccl.findings then refuses).
    if v12 and device.super_device_id_known:
        entry["super_device_id"] = str(device.super_device_id)
    return entry


def _server_entry(server: Server, layout: Layout) -> dict[str, Any]:
    first_rank = server.replica_index * len(server.devices)
    entry: dict[str, Any] = {
        "device": [
            _device_entry(device, first_rank + position, layout.fmt == "1.2")
            for position, device in enumerate(server.devices)
        ],
        "server_id": server.server_id,
    }
    if layout.host_ip:
        entry["host_ip"] = server.host_ip
    entry["container_ip"] = server.container_ip
    return entry


def _render_server_list(servers: Sequence[Server], layout: Layout) -> dict[str, Any]:
    v12 = layout.fmt == "1.2"
    server_list = [_server_entry(server, layout) for server in servers]
    table: dict[str, Any] = {
        "status": COMPLETED,
        "version": layout.fmt,
        "server_count": str(len(servers)),
        "server_list": server_list,
    }
    if v12:
        table["super_pod_list"] = _super_pod_list(servers, layout.super_pod_block)
    return table


def _logical_super_pods(servers: Sequence[Server], block: int) -> dict[int, list[Server]]:
    """Logical super pods: servers in rank order fill blocks of `block` NPUs."""
    pods: dict[int, list[Server]] = {}
    for server in servers:
        logical = logical_super_pod(server.replica_index, block, len(server.devices))
        pods.setdefault(logical, []).append(server)
    return pods


def _super_pod_list(servers: Sequence[Server], block: int) -> list[dict[str, Any]]:
    pods = {
        logical: [server.server_id for server in members]
        for logical, members in _logical_super_pods(servers, block).items()
    }
    return [
        {"super_pod_id": str(pod), "server_list": [{"server_id": sid} for sid in ids]}
        for pod, ids in sorted(pods.items())
    ]


def _render_group_list(servers: Sequence[Server], group_name: str) -> dict[str, Any]:
    instances = [
        {
            "pod_name": server.pod_name,
            "server_id": server.server_id,
            "devices": [
                {"device_id": d.device_id, "device_ip": d.device_ip} for d in server.devices
            ],
        }
        for server in servers
    ]
    group = {
        "group_name": group_name,
        "device_count": str(sum(len(s.devices) for s in servers)),
        "instance_count": str(len(servers)),
        "instance_list": instances,
    }
    return {"status": COMPLETED, "group_count": "1", "group_list": [group]}


def _empty_ip_problem(server: Server, layout: Layout, super_pods: int) -> str | None:
    empty = [d.device_id for d in server.devices if d.device_ip == NO_DEVICE_IP]
    if not empty:
        return None
    if layout.fmt == "1.2" and super_pods <= 1:
        return None  # HCCL links A3 chips inside one super pod without device IPs
    needs = (
        f"a 1.2 table spanning {super_pods} super pods"
        if layout.fmt == "1.2"
        else f"a {layout.fmt} table"
    )
    return f"the device plugin wrote no IP for device {', '.join(empty)}: {needs} needs them"


def _super_device_id_problem(server: Server) -> str | None:
    for device in server.devices:
        if device.super_device_id == SUPER_DEVICE_ID_UNREADABLE:
            return (
                f"device {device.device_id} has super_device_id -2: the device plugin could "
                "not read it, and a 1.2 table needs it"
            )
        if device.super_device_id is None:
            return (
                f"device {device.device_id} has no super_device_id: a 1.2 table needs the "
                "device plugin's (A3 super-pod hardware)"
            )
        if device.super_device_id == str(hccl.HCCL_UNSET_U32):
            return (
                f"device {device.device_id} has super_device_id {hccl.HCCL_UNSET_U32}, "
                "which HCCL reads as not set"
            )
    return None


def layout_problems(servers: Sequence[Server], layout: Layout) -> list[PodProblem]:
    """What `layout` needs that a pod's annotation lacks, one problem per pod."""
    super_pods = len(_logical_super_pods(servers, layout.super_pod_block))
    problems = []
    for server in servers:
        reasons = [_empty_ip_problem(server, layout, super_pods)]
        if layout.fmt == "1.2":
            reasons.append(_super_device_id_problem(server))
        problems += [PodProblem(server.pod_name, r) for r in reasons if r is not None]
    return problems


def build_rank_table(
    pods: Iterable[PodRecord],
    *,
    replicas: int,
    devices_per_replica: int,
    fmt: str | Layout = "1.0",
    pod_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pods -> completed rank table that passes HCCL's rules (hccl.findings); raises
    RankTableIncomplete naming what holds it up."""
    layout = Layout(fmt) if isinstance(fmt, str) else fmt
    servers = collect_servers(
        pods, replicas=replicas, devices_per_replica=devices_per_replica, pod_names=pod_names
    )
    problems = layout_problems(servers, layout)
    if problems:
        raise RankTableIncomplete(problems)
    table = render(servers, layout)
    broken = hccl.findings(table)
    if broken:
        raise RankTableIncomplete(
            [PodProblem("the table", f"HCCL would refuse it: {b}") for b in broken]
        )
    return table


def layout_for(spec: TrainingSpec, job_name: str) -> Layout:
    return Layout(
        spec.rank_table_format, job_name, spec.super_pod_block, host_ip=spec.rank_table_host_ip
    )


def initializing_table() -> dict[str, Any]:
    return {"status": INITIALIZING}


def dumps(table: Mapping[str, Any]) -> str:
    """Stable serialization, so an unchanged table never causes a write."""
    return json.dumps(table, separators=(",", ":"))


def table_status(text: str | None) -> str:
    """The "status" of a serialized table ("initializing" when absent or unreadable)."""
    try:
        return str(json.loads(text or "{}").get("status", INITIALIZING))
    except ValueError:
        return INITIALIZING


def initial_content(spec: TrainingSpec) -> str:
    if spec.uses_rank_table:
        return dumps(initializing_table())
    return dumps(
        {
            "status": NOT_REQUIRED,
            "reason": f"device type {spec.device_type} rendezvous through MASTER_ADDR; "
            "HCCL rank tables are for Ascend",
        }
    )


def build_configmap(job: JobRef, content: str) -> dict[str, Any]:
    """ConfigMap rings-config-<job>, key hccl.json, mounted at /user/serverid/devindex/config."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.child_metadata(job, naming.rank_table_configmap_name(job.name)),
        "data": {RANK_TABLE_KEY: content},
    }

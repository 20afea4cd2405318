"""The HCCL rank table, built from a job's pods and the Ascend device plugin's annotations.

A pure function of the pods: the table is either complete and valid, or not published at all
(RankTableIncomplete says which pods hold it up, and why). Never a table with a missing IP,
a device IP of "-1", or a device count that differs from the spec.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_args

from densenet_contract import RANK_TABLE_COMPLETED as COMPLETED
from densenet_contract import RANK_TABLE_INITIALIZING as INITIALIZING
from densenet_contract import RANK_TABLE_KEY
from densenet_contract import RANK_TABLE_NOT_REQUIRED as NOT_REQUIRED
from densenet_operator import naming
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
class Device:
    device_id: str
    device_ip: str


@dataclass(frozen=True)
class Server:
    pod_name: str
    replica_index: int
    server_id: str
    container_ip: str
    devices: tuple[Device, ...]


# Bounds on what the device plugin's annotation may hold (a real one is well under 4 kB: 16
# devices of a few short strings). Anything larger, or not canonical, is refused, never copied.
MAX_ANNOTATION_BYTES = 16384
MAX_DEVICES = 64
MAX_DEVICE_ID = 1023
_DEVICE_ID = re.compile(r"[0-9]{1,4}")
_SHOWN = 64  # characters of a refused value shown in a message


def shorten(value: object, limit: int = _SHOWN) -> str:
    """`repr(value)`, cut to `limit` characters: hostile input never grows a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=65536)
def _is_ip(value: str) -> bool:
    """An IPv4 or IPv6 literal (HCCL takes both for device IPs), without a scope zone."""
    if not value.isascii() or "%" in value or len(value) > 45:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _device_id(value: object) -> str:
    """The canonical form of a device id: ASCII digits, no leading zeros ("00" is "0")."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _DEVICE_ID.fullmatch(text) or int(text) > MAX_DEVICE_ID:
        raise _Problem(f"lists a device_id that is not a number from 0 to {MAX_DEVICE_ID}: "
                       f"{shorten(value)}")  # fmt: skip
    return str(int(text))


def _read_annotation(raw: Any) -> tuple[list[Any], Any]:
    if not isinstance(raw, str) or not raw:
        raise _Problem("has no ascend-910-configuration annotation from the device plugin yet")
    if len(raw) > MAX_ANNOTATION_BYTES:
        raise _Problem(f"has an ascend-910-configuration annotation of {len(raw)} bytes, "
                       f"more than {MAX_ANNOTATION_BYTES}")  # fmt: skip
    try:
        config = json.loads(raw)
        entries = config["devices"]
    except (ValueError, KeyError, TypeError) as error:
        raise _Problem(
            f"has an unreadable ascend-910-configuration annotation ({type(error).__name__})"
        ) from None
    if not isinstance(entries, list) or len(entries) > MAX_DEVICES:
        raise _Problem(f"lists devices that are not a list of at most {MAX_DEVICES}")
    if not all(isinstance(e, dict) and "device_id" in e and "device_ip" in e for e in entries):
        raise _Problem("lists a device without device_id and device_ip")
    return entries, config.get("server_id")


def _parse_devices(raw: Any) -> tuple[tuple[Device, ...], str | None]:
    """Devices sorted by numeric device_id, plus the annotation's server_id."""
    entries, server_id = _read_annotation(raw)
    devices = [Device(_device_id(e["device_id"]), str(e["device_ip"])) for e in entries]
    ids = [d.device_id for d in devices]
    if len(set(ids)) != len(ids):
        raise _Problem(f"lists device ids more than once: {shorten(ids)}")
    for device in devices:
        if device.device_ip == "-1":
            raise _Problem(
                f"device {device.device_id} has IP -1: the device plugin could not read it"
            )
        if not _is_ip(device.device_ip):
            raise _Problem(
                f"device {device.device_id} has an invalid IP {shorten(device.device_ip)}"
            )
    server = str(server_id) if isinstance(server_id, str | int) else None
    return tuple(sorted(devices, key=lambda d: int(d.device_id))), server


class _Problem(Exception):
    pass


def _server(pod: PodRecord, devices_per_replica: int) -> Server:
    if not pod.pod_ip:
        raise _Problem("has no pod IP yet")
    devices, annotated_server = _parse_devices(pod.device_config)
    if len(devices) != devices_per_replica:
        raise _Problem(
            f"the device plugin assigned {len(devices)} devices, the job asks for {devices_per_replica}"
        )
    # The plugin's server_id is the node IP on most versions, the pod UID on some: then hostIP.
    server_id = annotated_server if annotated_server and _is_ip(annotated_server) else None
    server_id = server_id or pod.host_ip
    if not server_id:
        raise _Problem("has no host IP yet")
    assert pod.index is not None  # collect_servers placed it by its index
    return Server(pod.name, pod.index, server_id, pod.pod_ip, devices)


def device_count(pod: PodRecord) -> int | None:
    """How many devices the device plugin's annotation lists (valid or not), None without one."""
    try:
        return len(json.loads(pod.device_config or "")["devices"])
    except (TypeError, ValueError, KeyError):
        return None


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
    servers: list[Server] = []
    for index in range(replicas):
        found = by_index.get(index)
        if found is None:
            label = pod_names[index] if pod_names else f"replica {index}"
            problems.append(PodProblem(label, "does not exist yet"))
            continue
        try:
            servers.append(_server(found, devices_per_replica))
        except _Problem as problem:
            problems.append(PodProblem(found.name, str(problem)))
    if problems:
        raise RankTableIncomplete(problems)
    return servers


def render(servers: Sequence[Server], fmt: str = "1.0") -> dict[str, Any]:
    """The completed rank table in format "1.0" (server_list) or legacy "0.1" (group_list).

    All values are strings, as HCCL expects.
    """
    if fmt == "1.0":
        return _render_server_list(servers)
    if fmt == "0.1":
        return _render_group_list(servers)
    raise ValueError(f"unknown rank table format {fmt!r}: expected one of {FORMATS}")


def _render_server_list(servers: Sequence[Server]) -> dict[str, Any]:
    server_list = [
        {
            "server_id": server.server_id,
            "container_ip": server.container_ip,
            "device": [
                {
                    "device_id": device.device_id,
                    "device_ip": device.device_ip,
                    "rank_id": str(server.replica_index * len(server.devices) + position),
                }
                for position, device in enumerate(server.devices)
            ],
        }
        for server in servers
    ]
    return {
        "status": COMPLETED,
        "version": "1.0",
        "server_count": str(len(servers)),
        "server_list": server_list,
    }


def _render_group_list(servers: Sequence[Server]) -> dict[str, Any]:
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
        "group_name": naming.WORKER,
        "device_count": str(sum(len(s.devices) for s in servers)),
        "instance_count": str(len(servers)),
        "instance_list": instances,
    }
    return {"status": COMPLETED, "group_count": "1", "group_list": [group]}


def build_rank_table(
    pods: Iterable[PodRecord],
    *,
    replicas: int,
    devices_per_replica: int,
    fmt: str = "1.0",
    pod_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pods -> completed rank table; raises RankTableIncomplete if any pod is not ready for it."""
    servers = collect_servers(
        pods, replicas=replicas, devices_per_replica=devices_per_replica, pod_names=pod_names
    )
    return render(servers, fmt)


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

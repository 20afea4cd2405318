"""HCCL's own acceptance rules for a rank table, applied before any table is published.

Read from CANN HCCL's parser (`topoinfo_ranktableConcise.cc`, `topoinfo_ranktableParser.cc`,
`topoinfo_parse.cc`, `sal.cc`): every value a string; `server_list` non-empty with
`server_count` equal to its length; `server_id` non-empty, unique, at most 127 characters (any
string); `host_ip`, where present, a valid IP, and on every server or none (CheckNicDeploy-
Consistence; older HCCL reads a valid host_ip as "use the host NICs"); each `device_id` decimal
and unique in its server; each `device_ip` a valid IPv4 or IPv6 address, unique in the whole
table (one pool, whatever the version). An empty `device_ip` is accepted only on A3 inside one
super pod (GetSingleDeviceIp: 910_93, superPodNum <= 1, no HCCL_INTRA_ROCE_ENABLE), which here
means a "1.2" table whose `super_pod_list` has one entry. `rank_id` dense 0..N-1. "1.2":
`super_device_id` a decimal u32 other than 0xFFFFFFFF (SalStrToULong; HCCL's INVALID_UINT reads
as "not configured"), unique within a super pod; `super_pod_list` ids unique and non-empty,
naming every server exactly once, each super pod with the same number of servers (older HCCL's
CheckSuperPodInfo). The legacy "0.1" layout: unique `server_id`, valid unique device IPs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from densenet_operator.ascend.deviceconfig import is_ip, shorten

MAX_SERVER_ID = 127
HCCL_UNSET_U32 = 2**32 - 1  # INVALID_UINT: HCCL reads this super_device_id as "not configured"


def _non_strings(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_strings(item, f"{path}[{index}]")
    elif not isinstance(value, str):
        yield f"{path} is {type(value).__name__}, not a string"


def _u32(text: str) -> int | None:
    """`text` as HCCL's SalStrToULong reads a u32, for plain decimals only; None otherwise."""
    if not (text.isascii() and text.isdecimal()) or len(text) > len(str(HCCL_UNSET_U32)):
        return None
    number = int(text)
    return number if number <= HCCL_UNSET_U32 else None


def _ips(value: str) -> list[str]:
    return [ip for ip in value.split(",") if ip]


def _servers(table: Mapping[str, Any]) -> Iterator[str]:
    servers = table.get("server_list") or []
    if not servers:
        yield "server_list is empty"
    if table.get("server_count") != str(len(servers)):
        yield f"server_count {table.get('server_count')!r} is not {len(servers)}"
    ids = [s.get("server_id", "") for s in servers]
    for server_id in ids:
        if not server_id or len(server_id) > MAX_SERVER_ID:
            yield f"server_id {server_id!r} is empty or longer than {MAX_SERVER_ID}"
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
        yield f"server_id {duplicate} is used by more than one server"
    with_host_ip = sum("host_ip" in server for server in servers)
    if 0 < with_host_ip < len(servers):
        yield f"host_ip is on {with_host_ip} of {len(servers)} servers, not on every one or none"
    for server in servers:
        if server.get("host_ip") is not None and not is_ip(server["host_ip"]):
            yield f"server {server.get('server_id')}: host_ip {server['host_ip']!r} is not an IP"
        device_ids = [d.get("device_id", "") for d in server.get("device") or []]
        if not device_ids:
            yield f"server {server.get('server_id')} lists no device"
        if len(set(device_ids)) != len(device_ids) or not all(i.isdecimal() for i in device_ids):
            yield (
                f"server {server.get('server_id')}: device ids {shorten(device_ids)} "
                "are not distinct numbers"
            )


def _super_pods(table: Mapping[str, Any]) -> dict[str, str]:
    """server_id -> super_pod_id, from super_pod_list."""
    return {
        member.get("server_id", ""): pod.get("super_pod_id", "")
        for pod in table.get("super_pod_list") or []
        for member in pod.get("server_list") or []
    }


def _device_ips(table: Mapping[str, Any]) -> Iterator[str]:
    """Valid device IPs, each once in the whole table; empty only in one A3 super pod."""
    empty_allowed = table.get("version") == "1.2" and len(table.get("super_pod_list") or []) <= 1
    seen: set[str] = set()
    for server in table.get("server_list") or []:
        for device in server.get("device") or []:
            text = device.get("device_ip", "")
            if not text and empty_allowed:
                continue  # A3 links inside a super pod by super_device_id
            if not text:
                yield "device_ip is empty outside a 1.2 table of one super pod"
            elif not all(is_ip(ip) for ip in _ips(text)) or not _ips(text):
                yield f"device_ip {shorten(text)} is not a valid IP"
            for ip in _ips(text):
                if ip in seen:
                    yield f"device_ip {shorten(ip)} is used twice"
                seen.add(ip)


def _super_device_ids(table: Mapping[str, Any]) -> Iterator[str]:
    """In a "1.2" table: each super_device_id a u32 HCCL takes as set, unique in its super pod."""
    pod_of = _super_pods(table)
    seen: set[tuple[str, int | None]] = set()
    for server in table.get("server_list") or []:
        pod = pod_of.get(server.get("server_id", ""), "")
        for device in server.get("device") or []:
            text = device.get("super_device_id", "")
            number = _u32(text)
            if number is None or number == HCCL_UNSET_U32 or (pod, number) in seen:
                yield (
                    f"super_device_id {shorten(text)} is missing, invalid or repeated "
                    f"in super pod {shorten(pod)}"
                )
            seen.add((pod, number))


def _rank_ids(table: Mapping[str, Any]) -> Iterator[str]:
    ranks = [
        device.get("rank_id", "")
        for server in table.get("server_list") or []
        for device in server.get("device") or []
    ]
    numbers = sorted(n for r in ranks if (n := _u32(r)) is not None)
    if numbers != list(range(len(ranks))):
        yield f"rank ids are not 0..{len(ranks) - 1} each once"


def _super_pod_list(table: Mapping[str, Any]) -> Iterator[str]:
    pods = table.get("super_pod_list") or []
    ids = [p.get("super_pod_id", "") for p in pods]
    if "" in ids or len(set(ids)) != len(ids):
        yield "super_pod_id values are empty or repeated"
    members = [m.get("server_id") for p in pods for m in p.get("server_list") or []]
    servers = [s.get("server_id") for s in table.get("server_list") or []]
    if sorted(members) != sorted(servers):
        yield "super_pod_list does not name every server exactly once"
    if len({len(p.get("server_list") or []) for p in pods}) > 1:
        yield "super pods list different numbers of servers"


def _group_list(table: Mapping[str, Any]) -> Iterator[str]:
    instances = [i for g in table.get("group_list") or [] for i in g.get("instance_list") or []]
    if not instances:
        yield "group_list has no instance"
    ids = [i.get("server_id", "") for i in instances]
    if "" in ids or len(set(ids)) != len(ids):
        yield "server_id values are empty or repeated"
    ips = [d.get("device_ip", "") for i in instances for d in i.get("devices") or []]
    if not all(is_ip(ip) for ip in ips) or len(set(ips)) != len(ips):
        yield "device_ip values are invalid or repeated"


def findings(table: Mapping[str, Any]) -> list[str]:
    """What HCCL would refuse in a completed `table`; empty when it accepts it."""
    found = list(_non_strings(table, "table"))
    if found:  # HCCL reads nothing but strings: the rest cannot be checked
        return found
    try:
        if "group_list" in table:
            return list(_group_list(table))
        if table.get("version") not in ("1.0", "1.2"):
            found.append(f"version {table.get('version')!r} is neither 1.0 nor 1.2")
        found += [*_servers(table), *_device_ips(table), *_rank_ids(table)]
        if table.get("version") == "1.2":
            found += [*_super_device_ids(table), *_super_pod_list(table)]
    except (AttributeError, TypeError):
        found.append("the JSON does not have the shape of a rank table")
    return found

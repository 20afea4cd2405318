"""The Ascend device plugin's pod annotation, read with bounds and in canonical form.

`ascend.kubectl.kubernetes.io/ascend-910-configuration`, as MindCluster's ascend-device-plugin
writes it (`pkg/common/proto.go`, `Instance`): `{"pod_name", "server_id" (the pod UID since
v7.3.0, the node IP before), "host_ip" (the node's InternalIP; v7.3.0+), "super_pod_id" (a
number, -2 without super-pod hardware), "devices": [{"device_id", "device_ip",
"super_device_id"}], "rack_id", "server_index" (a string), "server_ip"}`, devices in numeric
order. Volcano writes the same for the pods it places itself. Anything out of bounds or not
canonical is refused, never copied: a broken or hostile annotation only keeps the table waiting.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_ANNOTATION_BYTES = 16384  # a real one is well under 4 kB
MAX_DEVICES = 64
MAX_DEVICE_ID = 1023
_DEVICE_ID = re.compile(r"[0-9]{1,4}")
_SHOWN = 64  # characters of a refused value shown in a message
NO_SUPER_POD = -2


class Refused(Exception):
    """Why a pod's annotation cannot make a rank table (yet)."""


@dataclass(frozen=True)
class Device:
    device_id: str  # canonical: "0", never "00"
    device_ip: str
    super_device_id: str | None = None


@dataclass(frozen=True)
class DeviceConfig:
    devices: tuple[Device, ...]  # in the plugin's order: numeric
    server_id: str | None
    host_ip: str | None
    super_pod_id: int


def shorten(value: object, limit: int = _SHOWN) -> str:
    """`repr(value)`, cut to `limit` characters: hostile input never grows a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=65536)
def is_ip(value: str) -> bool:
    """An IPv4 or IPv6 literal (HCCL takes both), without a scope zone."""
    if not value.isascii() or "%" in value or len(value) > 45:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _decimal(value: object, what: str, limit: int = MAX_DEVICE_ID) -> str:
    """The canonical form of a small non-negative number: ASCII digits, no leading zeros."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _DEVICE_ID.fullmatch(text) or int(text) > limit:
        raise Refused(f"lists a {what} that is not a number from 0 to {limit}: {shorten(value)}")
    return str(int(text))


def _load(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw:
        raise Refused("has no ascend-910-configuration annotation from the device plugin yet")
    if len(raw) > MAX_ANNOTATION_BYTES:
        raise Refused(f"has an ascend-910-configuration annotation of {len(raw)} bytes, "
                      f"more than {MAX_ANNOTATION_BYTES}")  # fmt: skip
    try:
        config = json.loads(raw)
        entries = config["devices"]
    except (ValueError, KeyError, TypeError) as error:
        raise Refused(
            f"has an unreadable ascend-910-configuration annotation ({type(error).__name__})"
        ) from None
    if not isinstance(entries, list) or len(entries) > MAX_DEVICES:
        raise Refused(f"lists devices that are not a list of at most {MAX_DEVICES}")
    if not all(isinstance(e, dict) and "device_id" in e and "device_ip" in e for e in entries):
        raise Refused("lists a device without device_id and device_ip")
    return dict(config)


def _device(entry: dict[str, Any]) -> Device:
    device_id = _decimal(entry["device_id"], "device_id")
    super_device = entry.get("super_device_id")
    super_id = (
        None if super_device in (None, "") else _decimal(super_device, "super_device_id", 2**20)
    )
    ip = entry["device_ip"]
    if ip == "-1":
        raise Refused(f"device {device_id} has IP -1: the device plugin could not read it")
    if not isinstance(ip, str) or not is_ip(ip):
        raise Refused(f"device {device_id} has an invalid IP {shorten(ip)}")
    return Device(device_id, ip, super_id)


def _optional_ip(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not is_ip(value):
        raise Refused(f"has an invalid {what} {shorten(value)}")
    return value


def parse(raw: Any) -> DeviceConfig:
    """The annotation as a DeviceConfig, or Refused saying why not."""
    config = _load(raw)
    devices = tuple(_device(e) for e in config["devices"])
    ids = [d.device_id for d in devices]
    if len(set(ids)) != len(ids):
        raise Refused(f"lists device ids more than once: {shorten(ids)}")
    server_id = config.get("server_id")
    if server_id is not None and (
        not isinstance(server_id, str | int) or len(str(server_id)) > 127
    ):
        raise Refused(f"has an invalid server_id {shorten(server_id)}")
    super_pod = config.get("super_pod_id", NO_SUPER_POD)
    if not isinstance(super_pod, int) or isinstance(super_pod, bool):
        raise Refused(f"has a super_pod_id that is not a number: {shorten(super_pod)}")
    return DeviceConfig(
        devices=tuple(sorted(devices, key=lambda d: int(d.device_id))),
        server_id=None if server_id in (None, "") else str(server_id),
        host_ip=_optional_ip(config.get("host_ip"), "host_ip"),
        super_pod_id=super_pod,
    )


def device_count(raw: Any) -> int | None:
    """How many devices an annotation lists (valid or not), None without one."""
    try:
        return len(json.loads(raw or "")["devices"])
    except (TypeError, ValueError, KeyError):
        return None

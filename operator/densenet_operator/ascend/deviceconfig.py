"""The Ascend device plugin's pod annotation, read with bounds and in canonical form.

`ascend.kubectl.kubernetes.io/ascend-910-configuration`, as MindCluster's ascend-device-plugin
writes it (`pkg/common/proto.go`, `Instance`): `{"pod_name", "server_id" (the pod UID since
v7.3.0, the node IP before), "host_ip" (the node's InternalIP; v7.3.0+), "super_pod_id" (a
number, -2 without super-pod hardware), "devices": [{"device_id", "device_ip",
"super_device_id"}], "rack_id", "server_index" (a string), "server_ip"}`, devices in numeric
order. Volcano writes the same for the pods it places itself. Anything out of bounds or not
canonical is refused, never copied: a broken or hostile annotation only keeps the table waiting.

Two values are the plugin's own markers, kept so that only the tables that need the real value
wait for it: `super_device_id` "-2" (SdIdAbnormal, `pkg/common/common.go`: the chip was missing
from the plugin's dcmi list) and an empty `device_ip` (what the plugin writes when it reads no
IP; HCCL does without one inside one A3 super pod). "-1" as a device IP (the plugin failed to
read it) is refused here: no table format can use it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

CONFIG_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"  # on each pod

MAX_ANNOTATION_BYTES = 16384  # a real one is well under 4 kB
MAX_DEVICES = 64
MAX_DEVICE_ID = 1023
# dcmi_spod_info.sdid and the plugin's NpuDevice.SuperDeviceID are uint32 (A3 ids such as
# "398754302" use the high bits).
MAX_SUPER_DEVICE_ID = 2**32 - 1
SUPER_DEVICE_ID_UNREADABLE = "-2"  # the plugin's SdIdAbnormal
NO_DEVICE_IP = ""  # the plugin read no IP for the chip
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 64  # characters of a refused value shown in a message
NO_SUPER_POD = -2
SUPER_POD_ID_RANGE = range(-(2**31), 2**31)  # the plugin's Instance.SuperPodId is an int32


class Refused(Exception):
    """Why a pod's annotation cannot make a rank table (yet)."""


@dataclass(frozen=True)
class Device:
    device_id: str  # canonical: "0", never "00"
    device_ip: str  # an IP literal, or NO_DEVICE_IP
    super_device_id: str | None = None  # canonical decimal, SUPER_DEVICE_ID_UNREADABLE or None

    @property
    def super_device_id_known(self) -> bool:
        return self.super_device_id not in (None, SUPER_DEVICE_ID_UNREADABLE)


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
    """The canonical form of a number from 0 to `limit`: ASCII digits, no leading zeros. The
    text may be no longer than `limit` written out, so a long run of zeros is refused too."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if len(text) > len(str(limit)) or not _DIGITS.fullmatch(text) or int(text) > limit:
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


def _super_device_id(value: object) -> str | None:
    """None when absent; the plugin's "-2" kept as a marker (only a 1.2 table needs the id)."""
    if value is None or value == "":
        return None
    if value == SUPER_DEVICE_ID_UNREADABLE:
        return SUPER_DEVICE_ID_UNREADABLE
    return _decimal(value, "super_device_id", MAX_SUPER_DEVICE_ID)


def _device(entry: dict[str, Any]) -> Device:
    device_id = _decimal(entry["device_id"], "device_id")
    super_id = _super_device_id(entry.get("super_device_id"))
    ip = entry["device_ip"]
    if ip == "-1":
        raise Refused(f"device {device_id} has IP -1: the device plugin could not read it")
    if not isinstance(ip, str) or not (ip == NO_DEVICE_IP or is_ip(ip)):
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
    if (
        not isinstance(super_pod, int)
        or isinstance(super_pod, bool)
        or super_pod not in SUPER_POD_ID_RANGE
    ):
        raise Refused(f"has a super_pod_id that is not a 32-bit number: {shorten(super_pod)}")
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

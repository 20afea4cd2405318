"""The device plugin's annotation, parsed: the plugin's real ranges pass in canonical form, its
markers are kept for the table formats to judge, everything else is refused with a short reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densenet_operator.ascend import deviceconfig
from densenet_operator.ascend.deviceconfig import Refused


def annotation(**device: object) -> str:
    entry = {"device_id": "0", "device_ip": "192.168.1.1", **device}
    return json.dumps({"server_id": "uid-0", "super_pod_id": 0, "devices": [entry]})


def parsed_device(**device: object) -> deviceconfig.Device:
    (parsed,) = deviceconfig.parse(annotation(**device)).devices
    return parsed


# Huawei's own A3 hccl.json examples: super_device_id uses all 32 bits.
@pytest.mark.parametrize("value", ["37748736", "126455325", "398754302", "0", "4294967295"])
def test_real_a3_super_device_ids_are_kept(value):
    assert parsed_device(super_device_id=value).super_device_id == value


@pytest.mark.parametrize(
    ("value", "canonical"), [("0037748736", "37748736"), (7, "7"), ("0000000000", "0")]
)
def test_super_device_ids_are_canonical(value, canonical):
    assert parsed_device(super_device_id=value).super_device_id == canonical


@pytest.mark.parametrize(
    "value",
    ["4294967296", "99999999999", "00000000001", "-3", "-1", -2, " 5", "5 ", "1e3", "²", True],
)
def test_super_device_ids_outside_uint32_or_not_plain_decimals_are_refused(value):
    with pytest.raises(Refused, match="super_device_id that is not a number from 0 to 4294967295"):
        parsed_device(super_device_id=value)


def test_the_plugins_unreadable_super_device_id_is_kept_as_a_marker():
    device = parsed_device(super_device_id="-2")
    assert device.super_device_id == deviceconfig.SUPER_DEVICE_ID_UNREADABLE
    assert not device.super_device_id_known


@pytest.mark.parametrize("absent", [{}, {"super_device_id": ""}, {"super_device_id": None}])
def test_an_absent_super_device_id_is_none(absent):
    device = parsed_device(**absent)
    assert device.super_device_id is None
    assert not device.super_device_id_known


def test_an_empty_device_ip_is_kept_and_minus_one_is_refused():
    assert parsed_device(device_ip="").device_ip == deviceconfig.NO_DEVICE_IP
    with pytest.raises(Refused, match="IP -1: the device plugin could not read it"):
        parsed_device(device_ip="-1")


@pytest.mark.parametrize("super_pod_id", [-2, 0, 2**31 - 1, -(2**31)])
def test_super_pod_ids_are_32_bit_numbers(super_pod_id):
    raw = json.loads(annotation())
    config = deviceconfig.parse(json.dumps({**raw, "super_pod_id": super_pod_id}))
    assert config.super_pod_id == super_pod_id


@pytest.mark.parametrize("super_pod_id", [2**31, -(2**31) - 1, 10**40, "0", 1.5, True])
def test_other_super_pod_ids_are_refused(super_pod_id):
    raw = json.loads(annotation())
    with pytest.raises(Refused, match="super_pod_id that is not a 32-bit number"):
        deviceconfig.parse(json.dumps({**raw, "super_pod_id": super_pod_id}))


@settings(max_examples=200, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**32 - 1), width=st.integers(0, 10))
def test_every_uint32_parses_to_its_canonical_decimal(value, width):
    text = str(value).zfill(width)  # leading zeros within the 10 digits of a uint32
    assert parsed_device(super_device_id=text).super_device_id == str(value)


@settings(max_examples=200, deadline=None)
@given(
    value=st.integers(min_value=2**32)
    | st.integers(max_value=-3)
    | st.text(min_size=11, alphabet="0123456789")
)
def test_out_of_range_super_device_ids_are_refused_with_a_short_reason(value):
    with pytest.raises(Refused) as refused:
        parsed_device(super_device_id=str(value))
    assert len(str(refused.value)) < 200

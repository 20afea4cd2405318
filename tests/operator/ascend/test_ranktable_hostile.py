"""What a broken or hostile device-plugin annotation can do: nothing but keep the table waiting,
with a bounded message."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densenet_operator import lifecycle
from densenet_operator.ascend import ranktable
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import make_job, make_pod


def pod_with(devices, **extra) -> PodRecord:
    annotation = json.dumps({"pod_name": "dn161-worker-0", "server_id": "10.0.0.11",
                             "devices": devices, **extra})  # fmt: skip
    return PodRecord.from_pod(make_pod(0, devices=len(devices), annotation=annotation))


def build(pod: PodRecord, devices: int = 2):
    return ranktable.build_rank_table([pod], replicas=1, devices_per_replica=devices)


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        (["0", "00"], "more than once"),  # the same device, written twice
        (["²", "1"], "not a number"),  # str.isdigit() says yes
        (["-1", "1"], "not a number"),
        (["1e3", "1"], "not a number"),
        ([" 1", "2"], "not a number"),
        ([True, "1"], "not a number"),
        (["99999", "1"], "not a number"),
    ],
)
def test_device_ids_are_canonical_numbers(ids, reason):
    devices = [{"device_id": i, "device_ip": f"192.168.1.{n}"} for n, i in enumerate(ids)]
    with pytest.raises(ranktable.RankTableIncomplete, match=reason):
        build(pod_with(devices))


def test_leading_zeros_are_normalised_in_the_table():
    devices = [{"device_id": "01", "device_ip": "192.168.1.1"},
               {"device_id": "0", "device_ip": "192.168.1.2"}]  # fmt: skip
    table = build(pod_with(devices))
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["0", "1"]


@pytest.mark.parametrize(
    "ip", ["fe80::1%eth0", "192.168.1.256", "\uff11\uff19\uff12.168.1.1", " ", "x" * 300, 7]
)
def test_device_ips_are_plain_ip_literals(ip):
    devices = [{"device_id": "0", "device_ip": ip}, {"device_id": "1", "device_ip": "10.0.0.1"}]
    with pytest.raises(ranktable.RankTableIncomplete, match="invalid IP") as error:
        build(pod_with(devices))
    assert len(str(error.value)) < 200


def test_an_empty_device_ip_is_no_ip_a_1_0_table_waits_for():
    devices = [{"device_id": "0", "device_ip": ""}, {"device_id": "1", "device_ip": "10.0.0.1"}]
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        build(pod_with(devices))
    assert error.value.waiting_for == [
        "dn161-worker-0: the device plugin wrote no IP for device 0: a 1.0 table needs them"
    ]


@pytest.mark.parametrize(
    ("super_device_id", "reason"),
    [
        ("4294967296", "not a number from 0 to 4294967295"),  # one past uint32
        ("1" * 5000, "not a number from 0 to 4294967295"),  # longer than int() reads
        ("-1", "not a number"),
        ([1], "not a number"),
    ],
)
def test_super_device_ids_out_of_range_are_refused_not_copied(super_device_id, reason):
    devices = [{"device_id": "0", "device_ip": "10.0.0.1", "super_device_id": super_device_id}]
    with pytest.raises(ranktable.RankTableIncomplete, match=reason) as error:
        build(pod_with(devices), devices=1)
    assert len(str(error.value)) < 200


def test_an_ipv6_device_ip_is_accepted():
    devices = [
        {"device_id": "0", "device_ip": "fd00::1"},
        {"device_id": "1", "device_ip": "fd00::2"},
    ]
    assert build(pod_with(devices))["status"] == "completed"


def test_a_huge_annotation_is_refused_and_never_copied_into_status():
    huge = [{"device_id": str(i), "device_ip": "1" * 250_000} for i in range(8)]
    job = make_job()
    records = [pod_with(huge)]
    plan = lifecycle.plan(job, {}, records, lifecycle_now())
    assert len(json.dumps(plan.status)) < 8_000
    assert "bytes, more than" in plan.status["rankTable"]["waitingFor"][0]


def lifecycle_now():
    import datetime as dt

    return dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    devices=st.lists(
        st.fixed_dictionaries({"device_id": JSONISH, "device_ip": JSONISH}), max_size=10
    )
    | JSONISH,
    server_id=JSONISH,
)
def test_any_annotation_yields_a_valid_table_or_a_bounded_reason(devices, server_id):
    annotation = json.dumps({"devices": devices, "server_id": server_id})
    pod = PodRecord.from_pod(make_pod(0, annotation=annotation))
    try:
        table = ranktable.build_rank_table(
            [pod], replicas=1, devices_per_replica=len(devices) if isinstance(devices, list) else 1
        )
    except ranktable.RankTableIncomplete as incomplete:
        assert all(len(w) < 400 for w in incomplete.waiting_for)
        return
    ids = [d["device_id"] for d in table["server_list"][0]["device"]]
    assert len(set(ids)) == len(ids) and all(i.isascii() and i.isdigit() for i in ids)

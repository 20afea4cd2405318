import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from densenet_operator import naming
from densenet_operator.ascend import hccl, ranktable
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import JOB, device_annotation, make_pod


def build(pods, replicas, devices=8, fmt="1.0"):
    records = [PodRecord.from_pod(p) for p in pods]
    return ranktable.build_rank_table(
        records, replicas=replicas, devices_per_replica=devices, fmt=fmt
    )


def test_single_server_table_matches_the_reference_layout():
    table = build([make_pod(0)], replicas=1)
    assert table["status"] == "completed"
    assert table["version"] == "1.0"
    assert table["server_count"] == "1"
    (server,) = table["server_list"]
    assert server["server_id"] == "10.0.0.11"
    assert server["container_ip"] == "10.244.0.7"
    assert [d["rank_id"] for d in server["device"]] == [str(i) for i in range(8)]
    assert server["device"][0] == {"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}


def test_all_values_are_strings():
    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)
        else:
            yield value

    for fmt in ("1.0", "0.1"):
        assert all(isinstance(v, str) for v in walk(build([make_pod(0), make_pod(1)], 2, fmt=fmt)))
    super_pods = [make_pod(i, annotation=device_annotation(i, 8, super_pod=0)) for i in (0, 1)]
    assert all(isinstance(v, str) for v in walk(build(super_pods, 2, fmt="1.2")))


def test_servers_follow_the_numeric_replica_index_not_the_input_order():
    pods = [make_pod(i) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]
    table = build(pods, replicas=11)
    ips = [s["container_ip"] for s in table["server_list"]]
    assert ips == [f"10.244.{i}.7" for i in range(11)]  # 10 sorts after 9, not after 1
    assert table["server_list"][10]["device"][0]["rank_id"] == "80"


def test_devices_are_sorted_by_numeric_device_id():
    annotation = json.dumps(
        {
            "server_id": "10.0.0.11",
            "devices": [
                {"device_id": str(i), "device_ip": f"192.168.0.{i}"} for i in (10, 2, 9, 1)
            ],
        }
    )
    table = build([make_pod(0, annotation=annotation)], replicas=1, devices=4)
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["1", "2", "9", "10"]


def test_server_id_falls_back_to_host_ip_when_the_plugin_gives_a_pod_uid():
    pod = make_pod(0, annotation=device_annotation(0, 8, server_id="2f9c-uid"), host_ip="10.1.2.3")
    assert build([pod], 1)["server_list"][0]["server_id"] == "10.1.2.3"


def test_legacy_group_list_format():
    table = build([make_pod(0), make_pod(1)], replicas=2, fmt="0.1")
    assert table["status"] == "completed"
    assert table["group_count"] == "1"
    (group,) = table["group_list"]
    assert group["device_count"] == "16"
    assert group["instance_count"] == "2"
    assert [i["pod_name"] for i in group["instance_list"]] == ["dn161-worker-0", "dn161-worker-1"]
    assert group["instance_list"][1]["devices"][0] == {
        "device_id": "0",
        "device_ip": "192.168.100.105",
    }


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (make_pod(0, pod_ip=None), "has no pod IP yet"),
        (make_pod(0, annotation=None), "annotation from the device plugin yet"),
        (make_pod(0, annotation="{not json"), "unreadable"),
        (make_pod(0, devices=4), "assigned 4 devices, the job asks for 8"),
        (
            make_pod(
                0, annotation=json.dumps({"devices": [{"device_id": "0", "device_ip": "-1"}]})
            ),
            "IP -1",
        ),
        (
            make_pod(
                0, annotation=json.dumps({"devices": [{"device_id": "0", "device_ip": "nope"}]})
            ),
            "invalid IP",
        ),
        (
            make_pod(
                0, annotation=json.dumps({"devices": [{"device_id": "x", "device_ip": "1.1.1.1"}]})
            ),
            "not a number",
        ),
        (
            make_pod(0, host_ip=None, annotation=device_annotation(0, 8, server_id="uid")),
            "no host IP",
        ),
    ],
)
def test_no_table_from_an_incomplete_pod(pod, reason):
    devices = 1 if "IP -1" in reason or "invalid IP" in reason or "number" in reason else 8
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        build([pod], replicas=1, devices=devices)
    assert error.value.problems[0].pod == "dn161-worker-0"
    assert reason in error.value.problems[0].reason


def test_every_blocking_pod_is_named_including_missing_ones():
    names = [naming.pod_name(JOB.name, i) for i in range(3)]
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        ranktable.build_rank_table(
            [PodRecord.from_pod(make_pod(0)), PodRecord.from_pod(make_pod(2, pod_ip=None))],
            replicas=3,
            devices_per_replica=8,
            pod_names=names,
        )
    assert error.value.waiting_for == [
        "dn161-worker-1: does not exist yet",
        "dn161-worker-2: has no pod IP yet",
    ]


def test_duplicate_replica_index_is_refused():
    with pytest.raises(ranktable.RankTableIncomplete, match="taken by another pod"):
        build([make_pod(0), make_pod(0)], replicas=1)


def test_table_status_reads_initializing_when_absent_or_broken():
    assert ranktable.table_status(None) == "initializing"
    assert ranktable.table_status("{") == "initializing"
    assert ranktable.table_status(ranktable.dumps(build([make_pod(0)], 1))) == "completed"


@given(
    replicas=st.integers(min_value=1, max_value=24),
    devices=st.sampled_from([1, 2, 4, 8]),
    order=st.randoms(use_true_random=False),
)
def test_rank_ids_are_a_permutation_following_replica_and_device_order(replicas, devices, order):
    pods = [make_pod(i, devices=devices) for i in range(replicas)]
    order.shuffle(pods)
    table = build(pods, replicas=replicas, devices=devices)
    ranks = [int(d["rank_id"]) for s in table["server_list"] for d in s["device"]]
    assert ranks == list(range(replicas * devices))
    assert table["server_count"] == str(replicas)
    for index, server in enumerate(table["server_list"]):
        assert server["container_ip"] == f"10.244.{index}.7"
        assert all(int(d["rank_id"]) // devices == index for d in server["device"])


@pytest.mark.parametrize("fmt", ["1.0", "1.2"])
def test_host_ip_is_on_every_server_or_on_none(fmt):
    pods = [make_pod(i, annotation=device_annotation(i, 8, super_pod=0)) for i in (0, 1)]
    with_host_ip = build(pods, 2, fmt=ranktable.Layout(fmt))
    assert [s["host_ip"] for s in with_host_ip["server_list"]] == ["10.0.0.11", "10.0.0.12"]
    # Older HCCL (before late-2025 CANN) reads a valid host_ip as "use the host NICs".
    without = build(pods, 2, fmt=ranktable.Layout(fmt, host_ip=False))
    assert all("host_ip" not in server for server in without["server_list"])
    assert [s["container_ip"] for s in without["server_list"]] == ["10.244.0.7", "10.244.1.7"]
    assert hccl.findings(with_host_ip) == hccl.findings(without) == []


def test_the_legacy_layout_waits_for_empty_device_ips():
    annotation = json.dumps(
        {"devices": [{"device_id": "0", "device_ip": ""}, {"device_id": "1", "device_ip": ""}]}
    )
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        build([make_pod(0, annotation=annotation)], replicas=1, devices=2, fmt="0.1")
    assert error.value.waiting_for == [
        "dn161-worker-0: the device plugin wrote no IP for device 0, 1: a 0.1 table needs them"
    ]


@pytest.mark.parametrize(
    ("host_ip_setting", "spec_host_ip", "written"),
    [
        (None, None, True),  # the image pair's CANN (8.3.RC1) reads host_ip right
        (False, None, False),  # a cluster whose images are on an older CANN
        (False, True, True),  # the job says otherwise
        (None, False, False),
    ],
)
def test_the_job_and_the_operator_decide_whether_the_table_has_host_ip(
    host_ip_setting, spec_host_ip, written
):
    from densenet_operator.settings import TrainerDefaults
    from densenet_operator.spec import parse_spec

    body = {"model": "densenet161", "data": {"synthetic": True}, "replicas": 2}
    if spec_host_ip is not None:
        body["rankTable"] = {"hostIp": spec_host_ip}
    defaults = TrainerDefaults(image="t", rank_table_host_ip=host_ip_setting)
    layout = ranktable.layout_for(parse_spec(body, defaults=defaults), JOB.name)
    pods = [make_pod(i, annotation=device_annotation(i, 8)) for i in (0, 1)]
    table = build(pods, 2, fmt=layout)
    assert all(("host_ip" in server) is written for server in table["server_list"])

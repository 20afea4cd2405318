"""Ascend products: spec rules, pods, and rank tables HCCL accepts (pure functions)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densenet_contract import Env
from densenet_operator import ascend, hccl, podgroup, pods, ranktable
from densenet_operator.podrecord import PodRecord
from densenet_operator.spec import SpecError
from tests.operator.factories import JOB, device_annotation, make_job, make_pod

# (product, replicas, devicesPerReplica, allowed): Volcano's Ascend plugin's rules.
MATRIX = [
    *(("910", 2, n, n in (1, 2, 4, 8)) for n in range(1, 17)),
    *(("910b", 2, n, n <= 8) for n in range(1, 17)),
    *(("910b-16", 2, n, n <= 8 or n in (10, 12, 14, 16)) for n in range(1, 17)),
    *(("a3", 2, n, n % 2 == 0) for n in range(1, 17)),
    ("a3", 1, 1, True),
    *(("a3-superpod", 2, n, n == 16) for n in range(1, 17)),
    ("a3-superpod", 1, 8, True),
    ("a3-superpod", 1, 7, False),
]


def ascend_job(product: str, replicas: int, devices: int, **spec):
    device = {"type": "ascend", "ascend": {"product": product, **spec.pop("ascend", {})}}
    return make_job(replicas=replicas, devicesPerReplica=devices, device=device, **spec)


@pytest.mark.parametrize(("product", "replicas", "devices", "allowed"), MATRIX)
def test_devices_per_replica_follow_each_product(product, replicas, devices, allowed):
    if allowed:
        assert ascend_job(product, replicas, devices).spec.product.name == product
    else:
        with pytest.raises(SpecError, match=f"device.ascend.product {product}"):
            ascend_job(product, replicas, devices)


def test_the_refusal_names_the_product_and_the_counts():
    with pytest.raises(SpecError) as error:
        ascend_job("910b-16", 2, 9)
    assert "1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14 or 16 for Atlas 800T A2, 16 chips" in str(
        error.value
    )


def test_super_pod_blocks_divide_the_job_in_whole_nodes():
    assert ascend_job("a3-superpod", 4, 16, ascend={"superPodBlock": 32}).spec.super_pod_block == 32
    for block in (24, 48):  # not whole nodes; not a divisor of 64
        with pytest.raises(SpecError, match="superPodBlock must divide"):
            ascend_job("a3-superpod", 4, 16, ascend={"superPodBlock": block})
    with pytest.raises(SpecError, match="a3-superpod only"):
        ascend_job("a3", 2, 16, ascend={"superPodBlock": 32})


def test_each_product_selects_its_nodes_and_its_table_version():
    for name, product in ascend.PRODUCTS.items():
        job = ascend_job(name, 1, product.single_replica_devices[-1])
        pod = pods.build_pod(job, 0)
        selector = pod["spec"].get("nodeSelector", {})
        assert selector.get("accelerator-type") == product.accelerator_type
        assert pod["metadata"]["labels"]["ring-controller.atlas"] == product.ring_controller
        assert pod["metadata"]["annotations"]["hccl/rankIndex"] == "0"
        assert job.spec.rank_table_format == ("1.2" if name == "a3-superpod" else "1.0")


def env(pod):
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_super_pod_env_and_pod_group_carry_the_block():
    job = ascend_job("a3-superpod", 4, 16, ascend={"superPodBlock": 32},
                     scheduling={"schedulerName": "volcano"})  # fmt: skip
    assert [env(pods.build_pod(job, i))[Env.HCCL_LOGIC_SUPERPOD_ID] for i in range(4)] == [
        "0", "0", "1", "1",
    ]  # fmt: skip
    assert env(pods.build_pod(job, 0))[Env.ASCEND_VISIBLE_DEVICES] == {
        "fieldRef": {"fieldPath": "metadata.annotations['huawei.com/Ascend910']"}
    }
    assert podgroup.build_pod_group(job)["metadata"]["annotations"] == {"sp-block": "32"}
    plain = pods.build_pod(ascend_job("910", 1, 8), 0)
    assert env(plain)[Env.HCCL_LOGIC_SUPERPOD_ID] == "0"
    assert Env.ASCEND_VISIBLE_DEVICES not in env(plain)


def record(index, *, node, devices, first_id=0, server_id=None, super_pod=None):
    pod = make_pod(index, devices=devices, annotation=device_annotation(
        index, devices, server_id=server_id, first_id=first_id, super_pod=super_pod,
        host_ip="10.0.0.11" if node == "shared" else None))  # fmt: skip
    pod["spec"]["nodeName"] = node if node != "shared" else "node-0"
    pod["metadata"]["uid"] = f"uid-{index}"
    if node == "shared":
        pod["status"]["hostIP"] = "10.0.0.11"
    return PodRecord.from_pod(pod)


def test_two_pods_on_one_node_get_distinct_server_ids():
    servers = [record(i, node="shared", devices=4, first_id=4 * i, server_id=f"uid-{i}")
               for i in range(2)]  # fmt: skip
    table = ranktable.build_rank_table(servers, replicas=2, devices_per_replica=4)
    assert [s["server_id"] for s in table["server_list"]] == ["uid-0", "uid-1"]
    assert [s["host_ip"] for s in table["server_list"]] == ["10.0.0.11", "10.0.0.11"]
    assert [[d["device_id"] for d in s["device"]] for s in table["server_list"]] == [
        ["0", "1", "2", "3"], ["4", "5", "6", "7"],
    ]  # fmt: skip


def test_eight_single_chip_pods_on_one_node_with_an_old_plugin_fall_back_to_pod_uids():
    # Plugins before v7.3.0 write the node IP as server_id: the same for every pod of a node.
    servers = [record(i, node="shared", devices=1, first_id=i, server_id="10.0.0.11")
               for i in range(8)]  # fmt: skip
    table = ranktable.build_rank_table(servers, replicas=8, devices_per_replica=1)
    assert [s["server_id"] for s in table["server_list"]] == [f"uid-{i}" for i in range(8)]
    assert hccl.findings(table) == []


def test_pods_on_their_own_nodes_are_named_by_the_node_ip():
    servers = [record(i, node=f"node-{i}", devices=8, server_id=f"uid-{i}") for i in range(2)]
    table = ranktable.build_rank_table(servers, replicas=2, devices_per_replica=8)
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.11", "10.0.0.12"]


def test_a3_super_pod_table_is_version_1_2_with_logical_super_pods():
    servers = [record(i, node=f"node-{i}", devices=16, super_pod=0) for i in range(4)]
    layout = ranktable.Layout("1.2", JOB.name, super_pod_block=32)
    table = ranktable.build_rank_table(servers, replicas=4, devices_per_replica=16, fmt=layout)
    assert table["version"] == "1.2"
    assert table["server_list"][1]["device"][0]["super_device_id"] == "16"
    assert [[m["server_id"] for m in p["server_list"]] for p in table["super_pod_list"]] == [
        ["10.0.0.11", "10.0.0.12"], ["10.0.0.13", "10.0.0.14"],
    ]  # fmt: skip
    assert [p["super_pod_id"] for p in table["super_pod_list"]] == ["0", "1"]


def test_the_legacy_layout_names_its_group_after_the_job():
    job = make_job(replicas=1, rankTable={"format": "0.1"})
    table = ranktable.build_rank_table([PodRecord.from_pod(make_pod(0))], replicas=1,
                                       devices_per_replica=8,
                                       fmt=ranktable.layout_for(job.spec, JOB.name))  # fmt: skip
    assert table["group_list"][0]["group_name"] == JOB.name


BROKEN = [
    (lambda t: t["server_list"][1].update(server_id=t["server_list"][0]["server_id"]), "used by more than one"),
    (lambda t: t["server_list"][0].update(host_ip=""), "host_ip '' is not an IP"),
    (lambda t: t["server_list"][1]["device"][0].update(device_ip=t["server_list"][0]["device"][0]["device_ip"]), "used twice"),
    (lambda t: t["server_list"][1]["device"][0].update(rank_id="0"), "rank ids are not"),
    (lambda t: t.update(server_count="3"), "server_count"),
    (lambda t: t["server_list"][0]["device"][0].update(rank_id=0), "not a string"),
    (lambda t: t.update(version="2.0"), "neither 1.0 nor 1.2"),
]  # fmt: skip


@pytest.mark.parametrize(("breaks", "finding"), BROKEN)
def test_the_validator_finds_what_hccl_would_refuse(breaks, finding):
    table = ranktable.build_rank_table(
        [PodRecord.from_pod(make_pod(i)) for i in range(2)], replicas=2, devices_per_replica=8
    )
    assert hccl.findings(table) == []
    breaks(table)
    assert any(finding in f for f in hccl.findings(table)), hccl.findings(table)


@settings(max_examples=200, deadline=None)
@given(
    placement=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=8),
    devices=st.sampled_from([1, 2, 4, 8]),
    new_plugin=st.booleans(),
    fmt=st.sampled_from(["1.0", "0.1"]),
)
def test_every_table_from_real_annotations_passes_the_validator(
    placement, devices, new_plugin, fmt
):
    """Pods packed onto nodes any way, old or new plugin: the rendered table is one HCCL takes."""
    records = []
    for index, node in enumerate(placement):
        pod = make_pod(index, devices=devices, annotation=json.dumps({
            "server_id": f"uid-{index}" if new_plugin else f"10.0.0.{11 + node}",
            "host_ip": f"10.0.0.{11 + node}",
            "devices": [{"device_id": str(d), "device_ip": f"10.{node}.{index}.{d}"}
                        for d in range(devices)],
        }))  # fmt: skip
        pod["spec"]["nodeName"] = f"node-{node}"
        pod["metadata"]["uid"] = f"uid-{index}"
        records.append(PodRecord.from_pod(pod))
    servers = ranktable.collect_servers(
        records, replicas=len(placement), devices_per_replica=devices
    )
    assert hccl.findings(ranktable.render(servers, fmt)) == []

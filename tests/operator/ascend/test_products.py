"""Ascend products: spec rules, pods, and rank tables HCCL accepts (pure functions)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from densenet_contract import Env
from densenet_operator import pods, volcano
from densenet_operator.ascend import hccl, products, ranktable
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
    for name, product in products.PRODUCTS.items():
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
    assert volcano.build_pod_group(job)["metadata"]["annotations"] == {"sp-block": "32"}
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


def annotated(index, devices, *, super_pod=0, **fields):
    """A pod whose annotation's devices take `fields` (name -> one value per device, or
    MISSING), the rest as the factory writes them."""
    raw = json.loads(device_annotation(index, len(devices), super_pod=super_pod))
    for position, entry in enumerate(raw["devices"]):
        entry["device_id"] = str(devices[position])
        for name, values in fields.items():
            entry.pop(name, None)
            if values[position] is not MISSING:
                entry[name] = values[position]
    return PodRecord.from_pod(make_pod(index, devices=len(devices), annotation=json.dumps(raw)))


MISSING = object()
UNREADABLE = ["0", "1", "2", "-2"]  # the plugin's SdIdAbnormal on chip 3


@pytest.mark.parametrize("fmt", ["1.0", "0.1"])
def test_an_unreadable_super_device_id_does_not_hold_up_tables_that_do_not_use_it(fmt):
    pod = annotated(0, range(4), super_device_id=UNREADABLE)
    table = ranktable.build_rank_table([pod], replicas=1, devices_per_replica=4, fmt=fmt)
    assert table["status"] == "completed"
    assert "super_device_id" not in json.dumps(table)


def test_a_1_2_table_waits_for_an_unreadable_super_device_id_naming_pod_and_device():
    pod = annotated(0, range(4), super_device_id=UNREADABLE)
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        ranktable.build_rank_table([pod], replicas=1, devices_per_replica=4, fmt="1.2")
    assert error.value.waiting_for == [
        "dn161-worker-0: device 3 has super_device_id -2: the device plugin could not read it, "
        "and a 1.2 table needs it"
    ]


def test_a_1_2_table_never_makes_up_a_super_device_id_from_the_device_id():
    """ascend-operator copies the plugin's id (omitted when absent): device_id is the chip's
    number in its server, not its address in the super pod."""
    pod = annotated(0, range(2), super_device_id=["5", MISSING])
    with pytest.raises(ranktable.RankTableIncomplete, match="device 1 has no super_device_id"):
        ranktable.build_rank_table([pod], replicas=1, devices_per_replica=2, fmt="1.2")
    servers = ranktable.collect_servers([pod], replicas=1, devices_per_replica=2)
    table = ranktable.render(servers, "1.2")
    assert "super_device_id" not in table["server_list"][0]["device"][1]
    assert any("super_device_id ''" in f for f in hccl.findings(table))


def test_huaweis_a3_super_device_ids_reach_the_table_as_written():
    ids = ["37748736", "126455325", "398754302", "0037748737"]
    pod = annotated(0, range(4), super_device_id=ids)
    table = ranktable.build_rank_table([pod], replicas=1, devices_per_replica=4, fmt="1.2")
    written = [d["super_device_id"] for d in table["server_list"][0]["device"]]
    assert written == ["37748736", "126455325", "398754302", "37748737"]


def test_hccls_unset_super_device_id_holds_up_a_1_2_table():
    pod = annotated(0, range(2), super_device_id=["1", "4294967295"])
    with pytest.raises(ranktable.RankTableIncomplete, match="4294967295, which HCCL reads as"):
        ranktable.build_rank_table([pod], replicas=1, devices_per_replica=2, fmt="1.2")


def empty_ip_pods(replicas):
    return [annotated(i, range(16), device_ip=[""] * 16) for i in range(replicas)]


@pytest.mark.parametrize("block", [0, 32])
def test_empty_device_ips_complete_a_1_2_table_in_one_super_pod(block):
    layout = ranktable.Layout("1.2", JOB.name, super_pod_block=block)
    table = ranktable.build_rank_table(
        empty_ip_pods(2), replicas=2, devices_per_replica=16, fmt=layout
    )
    assert len(table["super_pod_list"]) == 1
    devices = [d for s in table["server_list"] for d in s["device"]]
    assert {d["device_ip"] for d in devices} == {""}  # as ascend-operator writes it
    assert [d["super_device_id"] for d in devices] == [str(i) for i in range(32)]
    assert hccl.findings(table) == []


@pytest.mark.parametrize(
    ("fmt", "needs"), [("1.2", "a 1.2 table spanning 2 super pods"), ("1.0", "a 1.0 table")]
)
def test_empty_device_ips_hold_up_tables_that_need_them(fmt, needs):
    layout = ranktable.Layout(fmt, JOB.name, super_pod_block=16 if fmt == "1.2" else 0)
    with pytest.raises(ranktable.RankTableIncomplete) as error:
        ranktable.build_rank_table(empty_ip_pods(2), replicas=2, devices_per_replica=16, fmt=layout)
    chips = ", ".join(map(str, range(16)))
    assert error.value.waiting_for == [
        f"dn161-worker-{i}: the device plugin wrote no IP for device {chips}: {needs} needs them"
        for i in range(2)
    ]


def super_pod_table():
    """Four A3 servers in two logical super pods of two."""
    servers = [record(i, node=f"node-{i}", devices=16, super_pod=0) for i in range(4)]
    layout = ranktable.Layout("1.2", JOB.name, super_pod_block=32)
    return ranktable.build_rank_table(servers, replicas=4, devices_per_replica=16, fmt=layout)


def first_devices(table):
    return table["server_list"][0]["device"], table["server_list"][1]["device"]


BROKEN_1_2 = [
    (lambda t: first_devices(t)[0][0].update(super_device_id="4294967295"), "'4294967295' is missing, invalid"),
    (lambda t: first_devices(t)[0][0].update(super_device_id="-2"), "'-2' is missing, invalid"),
    (lambda t: first_devices(t)[0][0].pop("super_device_id"), "'' is missing, invalid"),
    (lambda t: first_devices(t)[1][0].update(super_device_id=first_devices(t)[0][0]["super_device_id"]), "repeated in super pod '0'"),
    (lambda t: first_devices(t)[1][0].update(device_ip=first_devices(t)[0][0]["device_ip"]), "used twice"),  # same super pod
    (lambda t: first_devices(t)[0][0].update(device_ip=""), "device_ip is empty outside"),  # two super pods
    (lambda t: t["super_pod_list"][1]["server_list"].append(t["super_pod_list"][0]["server_list"].pop()), "different numbers of servers"),
    (lambda t: t["server_list"][3].pop("host_ip"), "host_ip is on 3 of 4 servers"),
]  # fmt: skip


@pytest.mark.parametrize(("breaks", "finding"), BROKEN_1_2)
def test_the_validator_finds_what_hccl_would_refuse_in_a_1_2_table(breaks, finding):
    table = super_pod_table()
    assert hccl.findings(table) == []
    breaks(table)
    assert any(finding in f for f in hccl.findings(table)), hccl.findings(table)


def test_the_validator_refuses_an_empty_device_ip_in_a_1_0_table():
    table = ranktable.build_rank_table(
        [PodRecord.from_pod(make_pod(i)) for i in range(2)], replicas=2, devices_per_replica=8
    )
    table["server_list"][0]["device"][0]["device_ip"] = ""
    assert hccl.findings(table) == ["device_ip is empty outside a 1.2 table of one super pod"]


# The plugin's real ranges: chip ids 0..15, IPv4 or IPv6 device IPs (or none), uint32
# super_device_ids (2**32 - 1 is HCCL's "unset"), int32 super_pod_ids (-2 off super pods),
# pod UIDs as server_id.
CHIP_IDS = st.integers(0, 15)
SUPER_DEVICE_IDS = st.integers(0, 2**32 - 2)
SUPER_POD_IDS = st.integers(-2, 2**31 - 1)
UINT32_NONZERO = st.integers(1, 2**32 - 1)


def device_ip(number: int, v6: bool) -> str:
    """A unique device IP per number: IPv4, or IPv6 in a ULA prefix (HCCL takes both)."""
    return str(
        ipaddress.IPv6Address(0xFD00 << 112 | number) if v6 else ipaddress.IPv4Address(number)
    )


@st.composite
def annotated_job(draw):
    """A job's pods with annotations drawn from the plugin's ranges, and its layout."""
    devices = draw(st.sampled_from([1, 2, 4, 8, 16]))
    replicas = draw(st.integers(1, 4))
    nodes_per_block = draw(st.sampled_from([n for n in (1, 2, 4) if replicas % n == 0]))
    layout = ranktable.Layout(
        fmt=draw(st.sampled_from(["1.0", "1.2", "0.1"])),
        group_name=JOB.name,
        super_pod_block=draw(st.sampled_from([0, nodes_per_block * devices])),
        host_ip=draw(st.booleans()),
    )
    total = replicas * devices
    numbers = draw(st.lists(UINT32_NONZERO, min_size=total, max_size=total, unique=True))
    ips = [device_ip(number, draw(st.booleans())) for number in numbers]
    empty = draw(st.sampled_from(["none", "some", "all"]))
    if empty != "none":
        blank = set(range(total)) if empty == "all" else draw(st.sets(st.integers(0, total - 1)))
        ips = ["" if i in blank else ip for i, ip in enumerate(ips)]
    sdids = draw(st.lists(SUPER_DEVICE_IDS, min_size=total, max_size=total, unique=True))
    sdids = [str(s).zfill(draw(st.integers(0, 10))) for s in sdids]  # zeros within 10 digits
    defect = draw(st.sampled_from([None, None, "-2", MISSING]))
    if defect is not None:
        sdids[draw(st.integers(0, total - 1))] = defect
    shared_node = draw(st.booleans())  # several pods on one node: server_id is the pod UID
    pods = []
    for index in range(replicas):
        chips = draw(st.lists(CHIP_IDS, min_size=devices, max_size=devices, unique=True))
        mine = slice(index * devices, (index + 1) * devices)
        raw = {
            "pod_name": f"dn161-worker-{index}",
            "server_id": str(draw(st.uuids())),
            "host_ip": "10.0.0.11" if shared_node else f"10.0.0.{11 + index}",
            "super_pod_id": draw(SUPER_POD_IDS),
            "devices": [
                {"device_id": str(chip), "device_ip": ip}
                | ({} if sdid is MISSING else {"super_device_id": sdid})
                for chip, ip, sdid in zip(sorted(chips), ips[mine], sdids[mine], strict=True)
            ],
        }
        pod = make_pod(index, devices=devices, annotation=json.dumps(raw))
        if shared_node:
            pod["spec"]["nodeName"], pod["status"]["hostIP"] = "node-0", "10.0.0.11"
        pods.append(PodRecord.from_pod(pod))
    return pods, layout, devices, ips, sdids


def expected_refusals(layout, ips, sdids):
    """Why the builder must refuse these annotations; empty when it must publish a table."""
    super_pods = 1 if layout.super_pod_block == 0 else len(ips) // layout.super_pod_block
    reasons = set()
    if "" in ips and (layout.fmt != "1.2" or super_pods > 1):
        reasons.add("the device plugin wrote no IP")
    if layout.fmt == "1.2" and ("-2" in sdids or MISSING in sdids):
        reasons.add("super_device_id")
    return reasons


@settings(max_examples=200, deadline=None)
@given(job=annotated_job())
def test_the_builder_publishes_exactly_the_tables_hccl_accepts(job):
    pods, layout, devices, ips, sdids = job
    refusals = expected_refusals(layout, ips, sdids)
    try:
        table = ranktable.build_rank_table(
            pods, replicas=len(pods), devices_per_replica=devices, fmt=layout
        )
    except ranktable.RankTableIncomplete as incomplete:
        event(f"{layout.fmt}: refused")
        found = {r for p in incomplete.problems for r in refusals if r in p.reason}
        assert found == refusals, incomplete.waiting_for  # each reason, and nothing else
        assert len(found) <= len(incomplete.problems)
        assert all(p.pod.startswith("dn161-worker-") for p in incomplete.problems)
        assert all(any(r in p.reason for r in refusals) for p in incomplete.problems)
        return
    assert not refusals
    event(f"{layout.fmt}: published" + (" with empty device IPs" if "" in ips else ""))
    assert hccl.findings(table) == []
    if layout.fmt == "0.1":
        written = [d for i in table["group_list"][0]["instance_list"] for d in i["devices"]]
        assert [d["device_ip"] for d in written] == ips
        return
    written = [d for s in table["server_list"] for d in s["device"]]
    assert [d["rank_id"] for d in written] == [str(r) for r in range(len(ips))]  # dense, once
    assert [d["device_ip"] for d in written] == ips
    if layout.fmt == "1.2":  # the plugin's ids, canonical
        assert [d["super_device_id"] for d in written] == [str(int(s)) for s in sdids]
    else:
        assert not any("super_device_id" in d for d in written)
    assert all(("host_ip" in s) == layout.host_ip for s in table["server_list"])


OUT_OF_RANGE = st.one_of(
    st.tuples(st.just("super_device_id"), st.integers(2**32, 10**12).map(str)),
    st.tuples(st.just("super_device_id"), st.integers(max_value=-3).map(str)),
    st.tuples(st.just("super_device_id"), st.integers(0, 9).map(lambda n: str(n).zfill(11))),
    st.tuples(st.just("device_id"), st.integers(1024, 10**6).map(str)),
    st.tuples(st.just("device_ip"), st.sampled_from(["-1", "1.2.3", "fe80::1%eth0", "::g"])),
    st.tuples(st.just("super_pod_id"), st.integers(2**31, 2**63) | st.integers(max_value=-(2**31) - 1)),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(bad=OUT_OF_RANGE, fmt=st.sampled_from(["1.0", "1.2", "0.1"]), position=st.integers(0, 7))
def test_values_out_of_the_plugins_ranges_are_refused_never_copied(bad, fmt, position):
    field, value = bad
    raw = json.loads(device_annotation(0, 8, super_pod=0))
    if field == "super_pod_id":
        raw["super_pod_id"] = value
    else:
        raw["devices"][position][field] = value
    pod = PodRecord.from_pod(make_pod(0, annotation=json.dumps(raw)))
    with pytest.raises(ranktable.RankTableIncomplete) as incomplete:
        ranktable.build_rank_table([pod], replicas=1, devices_per_replica=8, fmt=fmt)
    (problem,) = incomplete.value.problems
    assert problem.pod == "dn161-worker-0"
    assert ("IP" if field == "device_ip" else field) in problem.reason
    assert len(problem.reason) < 200

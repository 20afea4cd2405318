"""Ascend jobs on the local cluster with the simulated device plugin (hack/deviceplugin.py): no
annotation is written by a test; the tables must pass HCCL's rules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from densenet_operator.ascend import hccl
from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def apply_example(jobs: Jobs, name: str) -> str:
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    jobs.kubectl.apply(manifest, "-n", jobs.namespace)
    return str(manifest["metadata"]["name"])


def ready_to_completed(jobs: Jobs, name: str, count: int) -> tuple[dict[str, Any], float]:
    """The completed table, and the seconds from the last pod Running to its completion."""
    jobs.wait_running_pods(name, count, timeout=90)
    running_at = time.monotonic()
    table = jobs.wait_rank_table(name, timeout=60)
    return table, time.monotonic() - running_at


def test_the_8p_example_completes_with_no_hand_written_annotation(jobs: Jobs) -> None:
    name = apply_example(jobs, "densenet161-8p.yaml")
    table, seconds = ready_to_completed(jobs, name, 1)
    print(f"last pod Running -> rank table completed: {seconds:.2f} s")
    assert table["version"] == "1.0" and hccl.findings(table) == []
    (server,) = table["server_list"]
    assert [d["device_id"] for d in server["device"]] == [str(i) for i in range(8)]
    assert server["host_ip"] == server["server_id"]  # one pod, one node: the node IP


def test_two_pods_packed_on_one_910_node_get_distinct_server_ids_and_a_ring_each(
    jobs: Jobs, product_nodes: Any
) -> None:
    (node,) = product_nodes("910", 1)
    job = small_job("packed", replicas=2, devicesPerReplica=4, device={"type": "ascend"},
                    scheduling={"nodeSelector": {"kubernetes.io/hostname": node}})  # fmt: skip
    jobs.kubectl.apply(job, "-n", jobs.namespace)
    table, _ = ready_to_completed(jobs, "packed", 2)
    servers = table["server_list"]
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.live_pods("packed")}
    assert [s["server_id"] for s in servers] == [uids["packed-worker-0"], uids["packed-worker-1"]]
    assert servers[0]["host_ip"] == servers[1]["host_ip"]
    rings = sorted(tuple(d["device_id"] for d in s["device"]) for s in servers)
    assert rings == [("0", "1", "2", "3"), ("4", "5", "6", "7")]
    assert hccl.findings(table) == []


def test_a_910b_2x8_job_completes_a_version_1_0_table(jobs: Jobs, product_nodes: Any) -> None:
    product_nodes("910b", 2)
    name = apply_example(jobs, "densenet161-910b-2x8.yaml")
    table, _ = ready_to_completed(jobs, name, 2)
    assert table["version"] == "1.0" and table["server_count"] == "2"
    assert hccl.findings(table) == []
    selectors = {p["spec"]["nodeSelector"]["accelerator-type"] for p in jobs.live_pods(name)}
    assert selectors == {"module-910b-8"}


def test_an_a3_2x16_job_completes_a_version_1_2_table(jobs: Jobs, product_nodes: Any) -> None:
    product_nodes("a3-superpod", 2)
    name = apply_example(jobs, "densenet161-a3-2x16.yaml")
    table, _ = ready_to_completed(jobs, name, 2)
    assert table["version"] == "1.2" and hccl.findings(table) == []
    assert len(table["super_pod_list"]) == 1  # superPodBlock 32: one logical super pod
    super_ids = [d["super_device_id"] for s in table["server_list"] for d in s["device"]]
    assert len(set(super_ids)) == 32


def test_a_chip_whose_ip_is_unreadable_holds_the_table_until_it_recovers(jobs: Jobs) -> None:
    jobs.chip_ips_down([3])
    jobs.kubectl.apply(small_job("flaky-ip", replicas=1, device={"type": "ascend"}), "-n",
                       jobs.namespace)  # fmt: skip
    jobs.wait_running_pods("flaky-ip", 1)
    waiting = wait_for(
        lambda: [w for w in jobs.status("flaky-ip").get("rankTable", {}).get("waitingFor", [])
                 if w.startswith("flaky-ip-worker-0: device 3 has IP -1")],
        what="the unreadable chip named",
    )  # fmt: skip
    assert waiting and jobs.rank_table("flaky-ip")["status"] == "initializing"
    jobs.chip_ips_down([])
    assert hccl.findings(jobs.wait_rank_table("flaky-ip")) == []

"""The launcher's wait for the rank table: the mounted file, and the ConfigMap through the API."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from densenet_contract import RANK_TABLE_KEY, rank_table_configmap
from densenet_operator import rbac
from densenet_operator.spec import JobRef
from densenet_trainer.progress import build_api_client
from densenet_trainer.ranktable_wait import (
    STALE,
    ConfigMapWatch,
    RankTableTimeout,
    RankTableWait,
    configmap_watch_from_env,
    lists_pod,
    parse_rank_table,
    write_local_copy,
)
from tests.conftest import localcluster

POD_IP = "10.0.0.7"


def table_text(status: str, *container_ips: str) -> str:
    servers = [{"server_id": ip, "container_ip": ip, "device": []} for ip in container_ips]
    return json.dumps({"status": status, "version": "1.0", "server_list": servers})


def write_table(path: Path, status: str, *container_ips: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table_text(status, *container_ips))
    tmp.replace(path)  # like the kubelet's atomic ConfigMap update


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_parse_tells_each_state_apart() -> None:
    assert parse_rank_table(None).state == "missing"
    assert parse_rank_table('{"status": "compl').state == "unreadable"
    assert parse_rank_table("[1, 2]").state == "unreadable"
    assert parse_rank_table("{}").state == "no status field"
    assert not parse_rank_table(table_text("initializing")).ready
    completed = parse_rank_table(table_text("completed", POD_IP), POD_IP)
    assert completed.ready and completed.table is not None
    assert completed.text == table_text("completed", POD_IP)


def test_a_completed_table_without_this_pod_is_the_gang_before_a_restart() -> None:
    stale = parse_rank_table(table_text("completed", "10.0.0.1", "10.0.0.2"), POD_IP)
    assert stale.state == STALE and not stale.ready
    assert parse_rank_table(table_text("completed", "10.0.0.1"), None).ready  # IP unknown
    # Formats that name no pod IP (0.1's group_list) cannot be checked and are accepted.
    assert lists_pod({"status": "completed", "group_list": []}, POD_IP)
    assert lists_pod({"server_list": [{"server_id": "n1"}]}, POD_IP)


def test_the_file_is_polled_until_it_flips_to_completed(tmp_path: Path) -> None:
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "initializing")
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:  # the operator completes the table while the pod waits
            write_table(path, "completed", POD_IP)

    waiter = RankTableWait(str(path), 300, 5, pod_ip=POD_IP, sleep=sleep, clock=clock)
    assert waiter.run().state == "completed"
    assert clock.sleeps == [5, 5, 5] and not waiter.from_api


def test_timeout_names_the_file_and_the_last_state(tmp_path: Path) -> None:
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "completed", "10.0.0.1")  # the previous gang's table
    clock = FakeClock()
    with pytest.raises(RankTableTimeout) as exc:
        RankTableWait(str(path), 300, 5, pod_ip=POD_IP, sleep=clock.sleep, clock=clock).run()
    message = str(exc.value)
    assert str(path) in message and "not completed after 300 s" in message
    assert repr(STALE) in message
    assert clock.now == 300  # 60 polls of 5 s, as Huawei's script


def test_a_missing_or_half_written_table_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / RANK_TABLE_KEY
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            path.write_text('{"status": "compl')  # not JSON yet
        else:
            write_table(path, "completed")

    assert RankTableWait(str(path), 60, 1, sleep=sleep, clock=clock).run().ready
    with pytest.raises(RankTableTimeout, match="'missing'"):
        RankTableWait(str(tmp_path / "absent.json"), 0, 1, sleep=clock.sleep, clock=clock).run()


def test_a_table_that_is_not_required_ends_the_wait(tmp_path: Path) -> None:
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "not-required")  # what the operator writes for cuda and cpu jobs
    clock = FakeClock()
    seen = RankTableWait(str(path), 0, 1, pod_ip=POD_IP, sleep=clock.sleep, clock=clock).run()
    assert seen.state == "not-required"


def test_the_local_copy_is_the_table_byte_for_byte(tmp_path: Path) -> None:
    text = table_text("completed", POD_IP)
    path = Path(write_local_copy(text, str(tmp_path)))
    assert path.name == RANK_TABLE_KEY and path.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == [RANK_TABLE_KEY]  # no temporary left


def test_no_api_watch_outside_an_operator_pod_or_without_a_client(tmp_path: Path) -> None:
    assert configmap_watch_from_env({}) is None
    broken = tmp_path / "kubeconfig"
    broken.write_text("not: a kubeconfig")
    env = {"DENSENET_JOB_NAME": "dn", "DENSENET_JOB_NAMESPACE": "ns", "KUBECONFIG": str(broken)}
    assert configmap_watch_from_env(env) is None


def test_an_unreachable_api_falls_back_to_the_mounted_file(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip  # port 9 (discard): nothing listens, the connection is refused
    api = ConfigMapWatch(build_api_client(str(kubeconfig)), "ns", "rings-config-dn")
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "completed", POD_IP)
    waiter = RankTableWait(str(path), 30, 1, pod_ip=POD_IP, api=api)
    assert waiter.run().ready and not waiter.from_api


# ---------------------------------------------------------------- on the real API server


def trainer_identity(kubectl: Any, namespace: str, job: str, tmp_path: Path) -> Path:
    """The job's ServiceAccount with the Role the operator gives it; its kubeconfig."""
    ref = JobRef(name=job, namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    objects = [rbac.build_service_account(ref), rbac.build_role(ref), rbac.build_role_binding(ref)]
    for obj in objects:  # the owner (a job that does not exist) is irrelevant here
        obj["metadata"].pop("ownerReferences", None)
    kubectl.apply(objects)
    return localcluster.service_account_kubeconfig(
        kubectl.kubeconfig, namespace, rbac.build_service_account(ref)["metadata"]["name"],
        tmp_path / "trainer.kubeconfig",
    )  # fmt: skip


def configmap(job: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": rank_table_configmap(job)}, "data": {RANK_TABLE_KEY: text},
    }  # fmt: skip


@pytest.mark.integration
def test_the_launcher_sees_the_completed_table_through_the_api_before_the_file(
    kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    """As the job's own ServiceAccount: the watch sees the operator's update as it happens,
    while the mounted file (never updated here, as a slow kubelet) still says initializing."""
    job = "watched"
    kubeconfig = trainer_identity(kubectl, namespace, job, tmp_path)
    kubectl.apply(configmap(job, table_text("initializing")), "-n", namespace)
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "initializing")
    env = {"DENSENET_JOB_NAME": job, "DENSENET_JOB_NAMESPACE": namespace,
           "KUBECONFIG": str(kubeconfig)}  # fmt: skip
    api = configmap_watch_from_env(env)
    assert api is not None
    # A file poll interval longer than the whole wait: only the watch can end it in time.
    waiter = RankTableWait(str(path), 120, 600, pod_ip=POD_IP, api=api)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(waiter.run()))
    thread.start()
    # First the previous gang's table (no IP of ours), then ours.
    kubectl.apply(configmap(job, table_text("completed", "10.9.9.9")), "-n", namespace)
    kubectl.apply(configmap(job, table_text("completed", POD_IP, "10.0.0.8")), "-n", namespace)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert result and waiter.from_api
    assert json.loads(result[0].text)["server_list"][0]["container_ip"] == POD_IP


@pytest.mark.integration
def test_the_role_lets_the_trainer_watch_only_its_own_table(
    kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    job = "mine"
    kubeconfig = trainer_identity(kubectl, namespace, job, tmp_path)
    kubectl.apply(configmap("other", table_text("completed", POD_IP)), "-n", namespace)
    client = build_api_client(str(kubeconfig))
    other = ConfigMapWatch(client, namespace, rank_table_configmap("other"))
    path = tmp_path / RANK_TABLE_KEY
    write_table(path, "completed", POD_IP)
    waiter = RankTableWait(str(path), 30, 1, pod_ip=POD_IP, api=other)
    assert waiter.run().ready and not waiter.from_api  # 403 on the watch: the file it is

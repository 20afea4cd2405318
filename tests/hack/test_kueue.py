"""Kueue beside the local cluster (hack/kueue.py): its configuration and the reduced webhooks
(unit), and a real manager gating plain pod groups until a ClusterQueue's quota admits them
(integration)."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakenodes
import kubelet
import kueue
import localcluster
import psutil
import pytest
import yaml
from localcluster import Cluster
from testsupport import ClusterError, Kubectl, condition, is_running, wait_for

NPU = fakenodes.NPU_RESOURCE
KUEUE_API = f"{kueue.API_GROUP}/v1beta2"
MANAGED_LABEL = "kueue.x-k8s.io/managed"  # what the pod webhook adds (constants.ManagedByKueue...)
FINALIZER = "kueue.x-k8s.io/managed"  # podconstants.PodFinalizer
TOPOLOGY_GATE = "kueue.x-k8s.io/topology"  # added while TopologyAwareScheduling is on (default)
ROLE_HASH_ANNOTATION = "kueue.x-k8s.io/role-hash"


@pytest.fixture(scope="module")
def module() -> Path:
    """Kueue's module in the Go module cache; the tests that read it skip without Go."""
    if shutil.which("go") is None:
        pytest.skip("needs Go (the module cache holds Kueue's manifests)")
    try:
        return kueue.module_dir()
    except ClusterError as error:
        pytest.skip(str(error))


# ---------------------------------------------------------------------------------------------
# Unit tests: no cluster


def test_config_runs_the_pod_integration_outside_a_pod(tmp_path: Path) -> None:
    config = kueue.render_config(tmp_path / "certs", 9443, 30001, 30002)
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert config["kind"] == "Configuration"
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["integrations"] == {"frameworks": ["pod"]}
    assert config["internalCertManagement"]["enable"] is True
    assert config["manageJobsWithoutQueueName"] is False
    assert config["webhook"] == {
        "host": "127.0.0.1",
        "port": 9443,
        "certDir": str(tmp_path / "certs"),
    }
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:30001"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:30002"
    # The rotator's certificate names <webhookServiceName>.<namespace>.svc: what the apiserver
    # checks when it calls the Service the webhooks name.
    assert config["internalCertManagement"]["webhookServiceName"] == kueue.SERVICE
    assert config["namespace"] == kueue.NAMESPACE


def test_the_managed_namespaces_are_only_the_labelled_ones() -> None:
    selector = kueue.render_config(Path("c"), 1, 2, 3)["managedJobsNamespaceSelector"]
    assert selector == {"matchLabels": {kueue.MANAGED_NAMESPACE_LABEL: "true"}}
    # Kueue refuses a selector that matches kube-system or its own namespace; this one matches
    # no namespace without the label.
    assert not selector.get("matchExpressions")


def test_the_command_turns_the_visibility_server_off(tmp_path: Path) -> None:
    cmd = kueue.command(tmp_path / "kueue", tmp_path / "c.yaml", tmp_path / "kubeconfig")
    assert cmd[0] == str(tmp_path / "kueue")
    assert f"--config={tmp_path / 'c.yaml'}" in cmd
    assert f"--kubeconfig={tmp_path / 'kubeconfig'}" in cmd
    assert "--feature-gates=VisibilityOnDemand=false" in cmd


def _webhook(name: str, group: str, resource: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": ["v1"],
                "resources": [resource],
                "operations": ["CREATE"],
            }
        ],
        "failurePolicy": "Fail",
    }


def test_reduce_webhooks_keeps_pods_and_kueues_kinds() -> None:
    configuration: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _webhook("mjob.kb.io", "batch", "jobs", "/mutate-batch-v1-job"),
            _webhook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
            _webhook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-workload"),
            _webhook("mdeployment.kb.io", "apps", "deployments", "/mutate-apps-v1-deployment"),
        ],
    }
    reduced = kueue.reduce_webhooks(configuration, 12345)
    assert reduced["metadata"] == {"name": kueue.MUTATING}
    assert [w["name"] for w in reduced["webhooks"]] == ["mpod.kb.io", "mworkload.kb.io"]
    pod, workload = reduced["webhooks"]
    for webhook, path in ((pod, "/mutate--v1-pod"), (workload, "/mutate-workload")):
        assert webhook["clientConfig"] == {
            "service": {
                "name": kueue.SERVICE,
                "namespace": kueue.NAMESPACE,
                "path": path,
                "port": 12345,
            }
        }
        assert webhook["failurePolicy"] == "Fail"
    assert pod["namespaceSelector"] == {"matchLabels": {kueue.MANAGED_NAMESPACE_LABEL: "true"}}
    assert "namespaceSelector" not in workload
    assert configuration["webhooks"][1]["clientConfig"]["service"]["name"] == "webhook-service"


def test_the_modules_webhooks_reduced(module: Path) -> None:
    _, webhooks = kueue.manifests(module, 9443)
    by_name = {c["metadata"]["name"]: c for c in webhooks}
    assert set(by_name) == {kueue.MUTATING, kueue.VALIDATING}

    def paths(name: str) -> set[str]:
        return {w["clientConfig"]["service"]["path"] for w in by_name[name]["webhooks"]}

    assert paths(kueue.MUTATING) == {
        "/mutate--v1-pod",
        "/mutate-kueue-x-k8s-io-v1beta2-clusterqueue",
        "/mutate-kueue-x-k8s-io-v1beta2-resourceflavor",
        "/mutate-kueue-x-k8s-io-v1beta2-workload",
    }
    assert paths(kueue.VALIDATING) == {
        "/validate--v1-pod",
        "/validate-kueue-x-k8s-io-v1beta2-clusterqueue",
        "/validate-kueue-x-k8s-io-v1beta2-cohort",
        "/validate-kueue-x-k8s-io-v1beta2-resourceflavor",
        "/validate-kueue-x-k8s-io-v1beta2-workload",
    }
    for configuration in webhooks:
        for webhook in configuration["webhooks"]:
            service = webhook["clientConfig"]["service"]
            assert (service["name"], service["namespace"], service["port"]) == (
                kueue.SERVICE, kueue.NAMESPACE, 9443)  # fmt: skip
            if webhook["name"] in {"mpod.kb.io", "vpod.kb.io"}:
                assert webhook["namespaceSelector"] == kueue.MANAGED_NAMESPACE_SELECTOR


def test_conversion_webhooks_are_the_ones_the_rotator_injects(module: Path) -> None:
    """The cert rotator fails to become ready while a CRD it injects lacks a conversion
    webhook: the CRDs patched must be its list (pkg/util/cert/cert.go)."""
    crds, _ = kueue.manifests(module, 9443)
    converted = {
        c["metadata"]["name"]
        for c in crds
        if (c["spec"].get("conversion") or {}).get("strategy") == "Webhook"
    }
    rotator = (module / "pkg" / "util" / "cert" / "cert.go").read_text()
    injected = set(re.findall(r'Type:\s+cert\.CRDConversion,\s+Name:\s+"([^"]+)"', rotator))
    assert (
        converted
        == injected
        == {
            f"{p}.kueue.x-k8s.io"
            for p in ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
        }
    )
    workloads = next(c for c in crds if c["metadata"]["name"] == "workloads.kueue.x-k8s.io")
    assert workloads["spec"]["conversion"]["webhook"]["clientConfig"]["service"] == {
        "name": kueue.SERVICE, "namespace": kueue.NAMESPACE, "path": "/convert", "port": 9443,
    }  # fmt: skip
    assert len(crds) == len(list((module / "config/components/crd/bases").glob("*.yaml")))


def test_the_config_api_version_is_the_modules(module: Path) -> None:
    source = (module / "apis" / "config" / "v1beta2" / "groupversion_info.go").read_text()
    group, version = kueue.CONFIG_API_VERSION.split("/")
    assert f'Group: "{group}", Version: "{version}"' in source


def test_free_port_prefers_the_given_port() -> None:
    port = kueue.free_port()
    assert kueue.free_port(port) == port
    assert kueue.free_port(port, taken={port}) != port


def test_wanted_reads_densenet_kueue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DENSENET_KUEUE", raising=False)
    assert kueue.wanted() is None and kueue.wanted(default=True) is True
    monkeypatch.setenv("DENSENET_KUEUE", "1")
    assert kueue.wanted(default=False) is True
    monkeypatch.setenv("DENSENET_KUEUE", "off")
    assert kueue.wanted(default=True) is False


# ---------------------------------------------------------------------------------------------
# Integration tests: the real manager on the session cluster


@pytest.fixture(scope="module")
def kueue_running(cluster: Cluster) -> None:
    """Kueue on the session cluster: started when the cluster is ours and it does not run."""
    if cluster.workdir is None:
        if not kueue.webhooks_answer(cluster.kubectl):
            pytest.skip("an external cluster without Kueue")
        return
    kueue.ensure(cluster.workdir, cluster.kubectl)


@pytest.fixture
def queue(kubectl: Kubectl, namespace: str, kueue_running: None) -> Iterator[str]:
    """A managed namespace's LocalQueue on a ClusterQueue of 16 NPUs (and ample CPU and
    memory) of its own; returns the LocalQueue's name."""
    kubectl("label", "namespace", namespace, f"{kueue.MANAGED_NAMESPACE_LABEL}=true")
    suffix = uuid.uuid4().hex[:6]
    flavor, cluster_queue, local_queue = f"npu-{suffix}", f"cq-{suffix}", "npu-queue"
    resources = [("cpu", "64"), ("memory", "256Gi"), (NPU, "16")]
    kubectl.apply([
        {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {"apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {}, "resourceGroups": [{
             "coveredResources": [r for r, _ in resources],
             "flavors": [{"name": flavor, "resources": [
                 {"name": r, "nominalQuota": q} for r, q in resources]}]}]}},
        {"apiVersion": KUEUE_API, "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ])  # fmt: skip

    def active(kind: str, *where: str) -> bool:
        found = kubectl.json("get", kind, *where)
        return (condition(found, "Active") or {}).get("status") == "True"

    wait_for(lambda: active("clusterqueue", cluster_queue), 30, what="the ClusterQueue active")
    wait_for(lambda: active("localqueue", local_queue, "-n", namespace), 30,
             what="the LocalQueue active")  # fmt: skip
    yield local_queue
    # Pods on fake nodes hold their NPUs until they are gone: Kueue lets them go once their
    # Workloads are deleted (kueue.release_namespace). The namespace goes with the `namespace`
    # fixture; the cluster-scoped queue and flavor keep a finalizer until their workloads go.
    kueue.release_namespace(kubectl, namespace)
    wait_for(lambda: not kubectl.json("get", "pods", "-n", namespace)["items"], 60,
             what="the namespace's pods gone")  # fmt: skip
    kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)
    kubectl("delete", "resourceflavor", flavor, "--wait=false", check=False)


def group_pod(name: str, group: str, queue: str, npus: int = 8) -> dict[str, Any]:
    """A pod of a plain pod group of two, as its creator writes it."""
    requests = {"cpu": "1", "memory": "1Gi", NPU: str(npus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {kueue.QUEUE_LABEL: queue, kueue.POD_GROUP_LABEL: group},
            "annotations": {kueue.POD_GROUP_TOTAL_COUNT_ANNOTATION: "2"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "trainer", "image": "densenet-trainer:test",
                            "resources": {"requests": requests, "limits": {NPU: str(npus)}}}],
        },
    }  # fmt: skip


def create_group(kubectl: Kubectl, namespace: str, group: str, queue: str) -> list[dict[str, Any]]:
    """Creates the group's two pods; returns them as the webhooks left them."""
    return [
        create_pod(kubectl, namespace, group_pod(f"{group}-{i}", group, queue)) for i in range(2)
    ]


def create_pod(kubectl: Kubectl, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """Creates the pod; returns it as the webhooks left it."""
    created = kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=pod)
    return dict(json.loads(created.stdout))


def workload(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", "workloads.kueue.x-k8s.io", name, "-n", namespace, "-o", "json",
                   check=False)  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition_is(obj: dict[str, Any] | None, type_: str, status: str = "True") -> bool:
    return obj is not None and (condition(obj, type_) or {}).get("status") == status


def pods_of(kubectl: Kubectl, namespace: str, group: str) -> list[dict[str, Any]]:
    selector = f"{kueue.POD_GROUP_LABEL}={group}"
    return list(kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"])


def running_on_fake_nodes(kubectl: Kubectl, namespace: str, group: str) -> list[dict[str, Any]]:
    pods = pods_of(kubectl, namespace, group)
    ok = len(pods) == 2 and all(
        is_running(p) and not p["spec"].get("schedulingGates") for p in pods
    )
    return pods if ok else []


@pytest.mark.integration
def test_a_pod_group_waits_for_quota(kubectl: Kubectl, namespace: str, queue: str) -> None:
    first = create_group(kubectl, namespace, "group-a", queue)
    # The pod webhook's mutations, as the apiserver stored the pods.
    for pod in first:
        meta = pod["metadata"]
        assert meta["labels"][MANAGED_LABEL] == "true"
        assert FINALIZER in meta["finalizers"]
        assert meta["annotations"][ROLE_HASH_ANNOTATION]
        gates = [g["name"] for g in pod["spec"]["schedulingGates"]]
        assert kueue.ADMISSION_GATE in gates and set(gates) <= {kueue.ADMISSION_GATE, TOPOLOGY_GATE}
    assert len({p["metadata"]["annotations"][ROLE_HASH_ANNOTATION] for p in first}) == 1

    # Admitted (16 NPUs: the whole quota): ungated, bound to fake nodes, running.
    wait_for(lambda: condition_is(workload(kubectl, namespace, "group-a"), "Admitted"), 60,
             what="group-a admitted")  # fmt: skip
    pods = wait_for(lambda: running_on_fake_nodes(kubectl, namespace, "group-a"), 60,
                    what="group-a's pods running")  # fmt: skip
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2 and all(n.startswith(fakenodes.NODE_PREFIX) for n in nodes)

    # The second group finds no quota: Kueue says so on its Workload, and its pods stay gated.
    create_group(kubectl, namespace, "group-b", queue)
    pending = wait_for(
        lambda: (w := workload(kubectl, namespace, "group-b")) is not None
        and condition_is(w, "QuotaReserved", "False") and w,
        60, what="group-b's Workload waiting for quota",
    )  # fmt: skip
    assert NPU in (condition(pending, "QuotaReserved") or {})["message"]
    assert not condition_is(pending, "Admitted")
    for pod in pods_of(kubectl, namespace, "group-b"):
        assert kueue.ADMISSION_GATE in [g["name"] for g in pod["spec"]["schedulingGates"]]
        assert not pod["spec"].get("nodeName") and pod["status"]["phase"] == "Pending"

    # The first group ends: its Workload finishes, the quota goes to the second group.
    for pod in pods:
        kubelet.set_pod_phase(kubectl, namespace, pod["metadata"]["name"], "Succeeded")
    finished = wait_for(
        lambda: (w := workload(kubectl, namespace, "group-a")) and condition_is(w, "Finished")
        and w, 60, what="group-a's Workload finished",
    )  # fmt: skip
    assert (condition(finished, "Finished") or {})["reason"] == "Succeeded"
    wait_for(lambda: condition_is(workload(kubectl, namespace, "group-b"), "Admitted"), 60,
             what="group-b admitted")  # fmt: skip
    wait_for(lambda: running_on_fake_nodes(kubectl, namespace, "group-b"), 60,
             what="group-b's pods running")  # fmt: skip
    # Finished pods are Kueue's no more: their finalizer goes.
    wait_for(
        lambda: all(FINALIZER not in (p["metadata"].get("finalizers") or ())
                    for p in pods_of(kubectl, namespace, "group-a")),
        60, what="group-a's finalizers removed",
    )  # fmt: skip


@pytest.mark.integration
def test_unmanaged_namespaces_are_left_alone(
    kubectl: Kubectl, namespace: str, kueue_running: None
) -> None:
    """Without the namespace label a queue-labelled pod is not Kueue's: no gate, it runs."""
    pod = group_pod("alone", "group-x", "npu-queue", npus=1)
    created = create_pod(kubectl, namespace, pod)
    assert not created["spec"].get("schedulingGates")
    assert MANAGED_LABEL not in created["metadata"]["labels"]
    assert not created["metadata"].get("finalizers")


@pytest.mark.integration
def test_status_reports_kueue(cluster: Cluster, kueue_running: None) -> None:
    if cluster.workdir is None:
        pytest.skip("an external cluster")
    status = kueue.status(cluster.workdir)
    assert status["running"] and status["ready"]
    config = yaml.safe_load((cluster.workdir / kueue.CONFIG_FILE).read_text())
    assert config["webhook"]["port"] == status["ports"]["webhook"]
    assert (cluster.workdir / kueue.CERT_DIR / "tls.crt").is_file()


@pytest.mark.integration
def test_while_kueue_is_down_only_managed_namespaces_refuse_pods(
    cluster: Cluster, kubectl: Kubectl, namespace: str, kueue_running: None
) -> None:
    """Kueue's webhooks fail closed, in the labelled namespaces only; a reused cluster that
    had Kueue starts it again."""
    workdir = cluster.workdir
    if workdir is None or kueue.wanted() is False:
        pytest.skip("Kueue of the local cluster, not turned off")
    old = kueue.status(workdir)["pid"]
    psutil.Process(old).kill()
    wait_for(lambda: not kueue.status(workdir)["running"], 10, what="kueue gone")

    pod = group_pod("unmanaged", "group-u", "npu-queue", npus=1)
    assert not create_pod(kubectl, namespace, pod)["spec"].get("schedulingGates")
    kubectl("label", "namespace", namespace, f"{kueue.MANAGED_NAMESPACE_LABEL}=true")
    refused = kubectl("create", "-n", namespace, "-f", "-", check=False,
                      input=group_pod("refused", "group-r", "npu-queue", npus=1))  # fmt: skip
    assert refused.returncode != 0 and 'failed calling webhook "mpod.kb.io"' in refused.stderr

    try:
        again = localcluster.start(cluster.name)
        assert again.reused
        status = kueue.status(workdir)
        assert status["running"] and status["ready"] and status["pid"] != old
        gated = create_pod(kubectl, namespace, group_pod("gated", "group-g", "npu-queue", npus=1))
        assert kueue.ADMISSION_GATE in [g["name"] for g in gated["spec"]["schedulingGates"]]
    finally:
        kueue.release_namespace(kubectl, namespace)

"""Pod overrides on the real API server and scheduler (issue 15): a job with a pull secret, an
extra volume, a sidecar, labels and hostNetwork gets pods with all of them, and its rank table
and MASTER_ADDR stay right; Pod Security `restricted` admits a cpu job's pods; creators without
pod rights cannot ask for overrides.

With hostNetwork, KWOK's pod stage gives a pod its node's IP as podIP (as a real kubelet does:
kwok's PodIPWith returns the node IP for host-network pods), so the rank table's container_ip
and host_ip are both the node's address."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from densenet_contract import TRAINER_CONTAINER
from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration

PORT = 31500
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-a", "cost-centre": "cv"},
                 "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "hostNetwork": True,
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
        "initContainers": [{"name": "warm-cache", "image": "busybox:1.36", "command": ["true"]}],
        "sidecars": [{"name": "log-shipper", "image": "fluent-bit:3.1",
                      "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
    },
    "trainer": {
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "envFrom": [{"configMapRef": {"name": "trainer-settings"}}],
    },
}  # fmt: skip


def _pull_secret() -> dict[str, Any]:
    config = base64.b64encode(b'{"auths": {}}').decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": config}}  # fmt: skip


def _node_ips(jobs: Jobs) -> dict[str, str]:
    nodes = jobs.kubectl.json("get", "nodes")["items"]
    return {n["metadata"]["name"]: next(a["address"] for a in n["status"]["addresses"]
                                        if a["type"] == "InternalIP") for n in nodes}  # fmt: skip


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    trainer = next(c for c in pod["spec"]["containers"] if c["name"] == TRAINER_CONTAINER)
    return {e["name"]: e.get("value") for e in trainer["env"]}


def _check_pod(pod: dict[str, Any], node_ips: dict[str, str]) -> None:
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["restartPolicy"] == "Never"
    assert "cache" in {v["name"] for v in spec["volumes"]}
    init = {c["name"]: c for c in spec["initContainers"]}
    assert (
        init["log-shipper"]["restartPolicy"] == "Always"
        and "restartPolicy" not in init["warm-cache"]
    )
    trainer = next(c for c in spec["containers"] if c["name"] == TRAINER_CONTAINER)
    assert {"name": "cache", "mountPath": "/cache"} in trainer["volumeMounts"]
    assert trainer["envFrom"] == [{"configMapRef": {"name": "trainer-settings"}}]
    assert trainer["ports"][0]["hostPort"] == PORT
    # Host network: the pod's IP is its node's.
    assert status["podIP"] == status["hostIP"] == node_ips[spec["nodeName"]]


def test_a_job_with_overrides_and_host_network_keeps_its_rank_table_and_master(
    jobs: Jobs,
) -> None:
    ns, kubectl = jobs.namespace, jobs.kubectl
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trainer-settings"},
                "data": {"TORCH_CPP_LOG_LEVEL": "INFO"}}  # fmt: skip
    kubectl.apply([_pull_secret(), settings], "-n", ns)
    kubectl.apply(small_job("hostnet", devicesPerReplica=4, imagePullSecrets=[{"name": "regcred"}],
                            network={"masterPort": PORT}, podTemplate=TEMPLATE), "-n", ns)  # fmt: skip
    pods = jobs.wait_running_pods("hostnet", 2)
    node_ips = _node_ips(jobs)
    for pod in pods:
        _check_pod(pod, node_ips)
    # The rendezvous port is a host port: never two ranks of it on one node.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    table = jobs.wait_rank_table("hostnet")
    servers = table["server_list"]
    assert [s["container_ip"] for s in servers] == [p["status"]["podIP"] for p in pods]
    assert [s["host_ip"] for s in servers] == [p["status"]["hostIP"] for p in pods]
    assert [d["rank_id"] for s in servers for d in s["device"]] == [str(r) for r in range(8)]
    for index, pod in enumerate(pods):
        env = _env(pod)
        assert env["PET_MASTER_ADDR"] == "hostnet-worker-0.hostnet"
        assert env["PET_MASTER_PORT"] == str(PORT) and env["PET_NODE_RANK"] == str(index)
    # MASTER_ADDR resolves through the headless Service to worker 0, i.e. its node's IP.
    service = kubectl.json("get", "service", "hostnet", "-n", ns)
    assert service["spec"]["ports"][0]["port"] == PORT

    def master_endpoint() -> list[str] | None:
        slices = kubectl.json("get", "endpointslices", "-n", ns,
                              "-l", "kubernetes.io/service-name=hostnet")["items"]  # fmt: skip
        found = [e for s in slices for e in s.get("endpoints") or ()
                 if e.get("hostname") == "hostnet-worker-0"]  # fmt: skip
        return found[0]["addresses"] if found else None

    addresses = wait_for(master_endpoint, what="worker 0 in the Service's EndpointSlice")
    assert addresses == [pods[0]["status"]["podIP"]]
    policy = kubectl.json("get", "networkpolicy", "hostnet", "-n", ns)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == jobs.get("hostnet")["metadata"]["uid"]


def test_a_restricted_namespace_admits_a_cpu_job_s_pods(jobs: Jobs) -> None:
    ns, kubectl = jobs.namespace, jobs.kubectl
    kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    kubectl.apply(small_job("strict", devicesPerReplica=1, device={"type": "cpu"}), "-n", ns)
    pods = jobs.wait_running_pods("strict", 2)
    assert all(p["spec"]["securityContext"]["runAsNonRoot"] for p in pods)
    # The level is enforced here: the same pod without the operator's defaults is refused.
    spec = {k: v for k, v in pods[0]["spec"].items() if k not in ("securityContext", "nodeName")}
    spec["containers"] = [{k: v for k, v in c.items() if k != "securityContext"}
                          for c in spec["containers"]]  # fmt: skip
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": spec}
    refused = kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=bare, check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr


def test_a_job_can_go_without_a_network_policy(jobs: Jobs) -> None:
    spec = {"device": {"type": "cpu"}, "devicesPerReplica": 1,
            "network": {"policy": {"enabled": False}}}  # fmt: skip
    jobs.kubectl.apply(small_job("open", replicas=1, **spec), "-n", jobs.namespace)
    jobs.wait_running_pods("open", 1)
    assert jobs.kubectl.not_found("networkpolicy", "open", "-n", jobs.namespace)
    assert jobs.kubectl.succeeds("get", "service", "open", "-n", jobs.namespace)


@pytest.mark.parametrize(
    ("spec", "refusal"),
    [
        ({"device": {"type": "cpu"}, "devicesPerReplica": 1,
          "podTemplate": {"spec": {"hostNetwork": True}}}, "refuses pods with hostNetwork"),
        ({"devicesPerReplica": 8}, "refuses pods with hostPath volumes (an Ascend job"),
        ({"device": {"type": "cpu"}, "devicesPerReplica": 1,
          "podTemplate": {"trainer": {"securityContext": {"privileged": True}}}},
         "refuses pods with a privileged container"),
    ],
)  # fmt: skip
def test_host_access_is_refused_where_pod_security_would_refuse_the_pods(
    jobs: Jobs, spec: dict[str, Any], refusal: str
) -> None:
    jobs.kubectl(
        "label", "namespace", jobs.namespace, "pod-security.kubernetes.io/enforce=baseline"
    )
    result = jobs.kubectl("apply", "-n", jobs.namespace, "-f", "-",
                          input=small_job("host", **spec), check=False)  # fmt: skip
    assert result.returncode != 0
    assert f"enforces Pod Security level baseline, which {refusal}" in result.stderr

"""The local cluster's real node (hack/realnode.py) running real pods: a locally built busybox
image, pod IPs and pod-to-pod TCP, Services and their DNS names, `kubectl logs` and `exec`,
ConfigMap mounts, SIGTERM on delete, OOM kills, Pod Security `restricted`; and `down` leaving
nothing behind. Skipped only where the machine cannot run a real node (not root, or the
packages of hack/setup.sh missing)."""

from __future__ import annotations

import ipaddress
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import controlplane
import images
import localcluster
import pytest
import realnode
import realnode_cleanup
import realnode_config
import realnode_images
from testsupport import Kubectl, KubectlError, create_namespace, wait_for

pytestmark = pytest.mark.integration
REAL_NODE = realnode_config.node_name(0)
POD_NET = realnode_config.POD_NET_BASE


@pytest.fixture(scope="session")
def real_node(cluster: localcluster.Cluster) -> str:
    if missing := realnode.missing_requirements():
        pytest.skip(f"this machine cannot run a real node: needs {', '.join(missing)}")
    if REAL_NODE not in cluster.real_nodes:
        pytest.skip("the session cluster has no real node (DENSENET_REAL_NODES=0?)")
    return REAL_NODE


@pytest.fixture(scope="session")
def probe_image(cluster: localcluster.Cluster, real_node: str) -> str:
    """The busybox image, built here and loaded into the real node's containerd."""
    spec = realnode_images.probe_image()
    archive = realnode_images.build_image(spec, controlplane.cache_dir())
    assert spec.ref() in localcluster.load_image(cluster, archive)
    return spec.ref()


def probe_pod(name: str, image: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod on the real node running `script` with busybox's sh, as a restricted pod may."""
    container = {
        "name": "probe",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **realnode_config.real_node_scheduling(),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            **spec,
        },
    }


def _pod(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "pod", name, "-n", namespace)


def run_pod(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the pod and wait until its container runs; returns the pod."""
    kubectl.apply(manifest, "-n", namespace)
    name = manifest["metadata"]["name"]

    def running() -> dict[str, Any] | None:
        pod = _pod(kubectl, namespace, name)
        assert pod["status"].get("phase") not in ("Failed", "Succeeded"), pod["status"]
        statuses = pod["status"].get("containerStatuses") or []
        return pod if statuses and all(s.get("ready") for s in statuses) else None

    return wait_for(running, 90, what=f"pod {name} running")


def terminated(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """The container's `state.terminated` once the pod has ended."""

    def ended() -> dict[str, Any] | None:
        statuses = _pod(kubectl, namespace, name)["status"].get("containerStatuses") or []
        return statuses[0]["state"].get("terminated") if statuses else None

    return wait_for(ended, 90, what=f"pod {name} to end")


def exec_in(kubectl: Kubectl, namespace: str, pod: str, *command: str, check: bool = True) -> str:
    return kubectl("exec", "-n", namespace, pod, "--", *command, timeout=30, check=check).stdout


def test_pod_runs_on_the_real_node_with_an_ip_and_logs(
    kubectl: Kubectl, namespace: str, probe_image: str
) -> None:
    pod = run_pod(kubectl, namespace, probe_pod("hello", probe_image,
                                                 "echo hello from $(hostname); sleep 3600"))  # fmt: skip
    assert pod["spec"]["nodeName"] == REAL_NODE
    assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_NET
    logs = wait_for(lambda: kubectl("logs", "-n", namespace, "hello").stdout, 20, what="logs")
    assert logs.splitlines() == ["hello from hello"]
    assert exec_in(kubectl, namespace, "hello", "id", "-u").strip() == "65532"


def test_pods_talk_tcp_through_a_service_and_its_dns_names(
    kubectl: Kubectl, namespace: str, probe_image: str
) -> None:
    server = probe_pod(
        "server", probe_image, "exec nc -ll -p 8080 -e echo pong",
        hostname="server", subdomain="probes",
    )  # fmt: skip
    services = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": {"app": "server"}, "ports": [{"port": 8080}], **extra}}
        for name, extra in (("probes", {"clusterIP": "None"}), ("pong", {}))
    ]  # fmt: skip
    kubectl.apply(services, "-n", namespace)
    server_ip = run_pod(kubectl, namespace, server)["status"]["podIP"]
    run_pod(kubectl, namespace, probe_pod("client", probe_image, "sleep 3600"))
    # Pod to pod, by IP (once the server listens: a container is ready when it starts).
    assert ask(kubectl, namespace, server_ip) == "pong\n"
    # The headless Service's pod name (what the job's rank table and torchrun use).
    fqdn = f"server.probes.{namespace}.svc.cluster.local"
    assert resolve(kubectl, namespace, fqdn) == server_ip
    # A ClusterIP Service, by its short name (the search path) through kube-proxy's rules.
    cluster_ip = kubectl.json("get", "service", "pong", "-n", namespace)["spec"]["clusterIP"]
    assert resolve(kubectl, namespace, "pong") == cluster_ip
    assert ask(kubectl, namespace, "pong") == "pong\n"


def ask(kubectl: Kubectl, namespace: str, server: str) -> str:
    """The server's reply on port 8080 to the client pod, retried until it answers."""
    return wait_for(
        lambda: exec_in(kubectl, namespace, "client", "nc", "-w", "5", server, "8080"),
        30, what=f"a reply from {server}", retry_on=(KubectlError,),
    )  # fmt: skip


def resolve(kubectl: Kubectl, namespace: str, name: str) -> str:
    """The address busybox's nslookup gives for `name` from the client pod."""

    def answer() -> str | None:
        # busybox's nslookup tries every search domain and AAAA too, and exits 1 when any of
        # those fail; the answer is the "Name:" line and the "Address:" line after it.
        lines = exec_in(kubectl, namespace, "client", "nslookup", name, check=False).splitlines()
        found = [lines[i + 1].split()[-1] for i, line in enumerate(lines[:-1])
                 if line.startswith("Name:") and lines[i + 1].startswith("Address:")]  # fmt: skip
        return found[0] if found else None

    return wait_for(answer, 30, what=f"{name} to resolve")


def test_apiserver_is_reachable_through_the_kubernetes_service(
    kubectl: Kubectl, namespace: str, probe_image: str
) -> None:
    pod = probe_pod("api", probe_image,
                    "nc -w 5 kubernetes.default 443 </dev/null && echo connected; sleep 3600")  # fmt: skip
    run_pod(kubectl, namespace, pod)
    logs = wait_for(lambda: kubectl("logs", "-n", namespace, "api").stdout, 20, what="logs")
    assert logs.splitlines() == ["connected"]


def test_configmap_mount(kubectl: Kubectl, namespace: str, probe_image: str) -> None:
    kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=table=rank-0")
    pod = probe_pod(
        "mounts", probe_image, "sleep 3600",
        container={"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
    )  # fmt: skip
    run_pod(kubectl, namespace, pod)
    assert exec_in(kubectl, namespace, "mounts", "cat", "/cfg/table") == "rank-0"


def test_delete_sends_sigterm_within_the_grace_period(
    kubectl: Kubectl, namespace: str, probe_image: str
) -> None:
    script = "trap 'echo got SIGTERM; exit 0' TERM; echo waiting; while true; do sleep 1; done"
    run_pod(kubectl, namespace, probe_pod("graceful", probe_image, script))
    follow = subprocess.Popen(
        [str(kubectl.binary), "--kubeconfig", str(kubectl.kubeconfig), "logs", "-f",
         "-n", namespace, "graceful"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: follow.stdout and follow.stdout.readline() == "waiting\n", 20,
             what="the log stream")  # fmt: skip
    started = time.monotonic()
    kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=true", timeout=60)
    took = time.monotonic() - started
    rest, _ = follow.communicate(timeout=10)
    assert rest.splitlines() == ["got SIGTERM"]
    assert took < 30  # ended by its trap, not killed at the end of the grace period


def test_memory_limit_oom_kill_exits_137(
    kubectl: Kubectl, namespace: str, probe_image: str
) -> None:
    limits = {"memory": "32Mi", "cpu": "500m"}
    pod = probe_pod(
        "oom", probe_image, "dd if=/dev/zero of=/dev/null bs=256M count=1",
        container={"resources": {"limits": limits, "requests": limits}},
    )  # fmt: skip
    kubectl.apply(pod, "-n", namespace)
    ended = terminated(kubectl, namespace, "oom")
    assert (ended["exitCode"], ended["reason"]) == (137, "OOMKilled")
    phase = lambda: _pod(kubectl, namespace, "oom")["status"]["phase"] == "Failed"  # noqa: E731
    wait_for(phase, 30, what="the pod's phase Failed")


def test_restricted_namespace_admits_a_compliant_pod_and_runs_it(
    kubectl: Kubectl, probe_image: str
) -> None:
    namespace = create_namespace(kubectl, f"t-restricted-{uuid.uuid4().hex[:6]}")
    try:
        kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
        pod = run_pod(kubectl, namespace, probe_pod("restricted", probe_image, "sleep 3600"))
        assert pod["spec"]["nodeName"] == REAL_NODE
        # The policy is enforced: the same pod as root is refused at admission.
        root = probe_pod("as-root", probe_image, "sleep 3600",
                         container={"securityContext": {"runAsUser": 0}})  # fmt: skip
        refused = kubectl("apply", "-n", namespace, "-f", "-", input=root, check=False)
        assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_real_node_is_labelled_tainted_and_not_kwoks(kubectl: Kubectl, real_node: str) -> None:
    """Only pods that opt in land on it; KWOK leaves it to its kubelet."""
    node = kubectl.json("get", "node", real_node)
    assert node["metadata"]["labels"][realnode_config.REAL_NODE_LABEL] == "true"
    assert realnode_config.REAL_NODE_TAINT in [
        {k: t.get(k) for k in ("key", "value", "effect")} for t in node["spec"]["taints"]
    ]
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})


def _host_network() -> dict[str, set[str]]:
    """The host's links, network namespaces and iptables chains."""

    def lines(*argv: str) -> list[str]:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()

    links = {line.split(":")[1].strip().split("@")[0] for line in lines("ip", "-o", "link")}
    netns = {line.split()[0] for line in lines("ip", "netns", "list") if line.strip()}
    chains = {
        f"{table}/{line[1:].split()[0]}"
        for table in ("filter", "nat", "mangle")
        for line in lines("iptables-save", "-t", table)
        if line.startswith(":")
    }
    return {"links": links, "netns": netns, "chains": chains}


def test_down_leaves_nothing_behind(cluster: localcluster.Cluster, probe_image: str) -> None:
    """A second cluster with a real node runs a pod with volumes, then `down`: no process,
    mount, cgroup, link, namespace, iptables chain or folder of it remains."""
    name = f"{cluster.name}-down"
    before = _host_network()
    other = localcluster.start(name, nodes=1, real_nodes=1, device_plugin=False)
    site = controlplane.real_node_site(name, other.bin_dir)
    paths, plan = site.paths(0), realnode.recorded_network_plan(name)
    assert plan is not None
    markers = [f"{paths.root}/", f"{paths.state}/"]
    # kwokctl was told not to add the cluster to the user's kubeconfig.
    user_kubeconfig = Path.home() / ".kube" / "config"
    if user_kubeconfig.is_file():
        assert f"kwok-{name}" not in user_kubeconfig.read_text()
    try:
        localcluster.load_image(other, realnode_images.build_image(
            realnode_images.probe_image(), controlplane.cache_dir()))  # fmt: skip
        namespace = create_namespace(other.kubectl, "down")
        other.kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=a=b")
        pod = probe_pod(
            "volumes", probe_image, "sleep 3600",
            container={"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
            volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
        )  # fmt: skip
        run_pod(other.kubectl, namespace, pod)
        assert realnode_cleanup.mounts_left([paths.root, paths.state])
        assert realnode.processes_using(markers)
        assert realnode_cleanup.cgroup_pids(paths.cgroup_root)
        during = _host_network()
        assert plan.bridge in during["links"] and paths.netns in during["netns"]
    finally:
        localcluster.stop(name)
    assert realnode.processes_using(markers) == []
    assert realnode.processes_using([f"bind={plan.host_ip},"]) == []
    assert realnode_cleanup.mounts_left([paths.root, paths.state]) == []
    assert realnode_cleanup.cgroup_pids(paths.cgroup_root) == set()
    hierarchies = realnode_cleanup.cgroup_hierarchies(realnode_cleanup.MOUNTINFO.read_text())
    cluster_cgroup = realnode_config.cluster_cgroups(name)[0]
    assert not [h for h in hierarchies if (h / cluster_cgroup.lstrip("/")).exists()]
    after = _host_network()
    assert plan.bridge not in after["links"] and plan.host_veth(0) not in after["links"]
    assert paths.netns not in after["netns"]
    # The kubelet's, kube-proxy's and CNI's chains live in the node's namespace, never here.
    added = (during["chains"] | after["chains"]) - before["chains"]
    assert not {c for c in added if "KUBE" in c or "CNI" in c}
    assert not paths.root.exists() and not paths.state.exists()
    assert realnode.recorded_network_plan(name) is None


def test_the_trainer_image_runs_on_the_real_node(
    cluster: localcluster.Cluster, kubectl: Kubectl, namespace: str, real_node: str
) -> None:
    """The trainer image of hack/images.py (docker/trainer.Dockerfile), loaded from its
    archive, starts its entry point in a pod on the real node."""
    trainer = images.ensure_images(["trainer"])["trainer"]
    assert trainer.ref in localcluster.load_image(cluster, trainer.archive, trainer.ref)
    pod = probe_pod("trainer-help", trainer.ref, "exec densenet-train --help")
    pod["spec"]["containers"][0].pop("securityContext")
    kubectl.apply(pod, "-n", namespace)
    ended = terminated(kubectl, namespace, "trainer-help")
    assert ended["exitCode"] == 0, ended
    logs = kubectl("logs", "-n", namespace, "trainer-help").stdout
    assert logs.startswith("usage: densenet-train ")
    assert _pod(kubectl, namespace, "trainer-help")["spec"]["nodeName"] == real_node

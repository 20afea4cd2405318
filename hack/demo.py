"""The end-to-end demo: a DenseNet trained by the operator, in real pods, on this machine.

1. starts the local cluster (hack/localcluster.py): the control plane, KWOK Ascend nodes, and a
   real node (kubelet, containerd, runc; hack/realnode.py) that runs containers;
2. builds the operator and trainer images from docker/ with buildah (hack/images.py, cached by
   content) and loads them into the real node;
3. `helm install`s the chart: the operator runs as the chart's Deployment on the real node,
   talking to the API server through the in-cluster `kubernetes` Service;
4. writes scikit-learn's digits as an ImageFolder and applies
   examples/densenet121-cpu-demo.yaml (scheduled onto the real node): its two trainer pods run
   the trainer image, reach each other through the headless Service's DNS name, train with DDP
   over gloo and report their progress into the resource's status;
5. shows progress from `kubectl get densenettrainings`, and ends with the pods
   (`kubectl get pods -o wide`) and the table.

`--ascend` runs an Ascend job instead: examples/densenet161-8p.yaml (1 replica x 8 NPUs) on the
KWOK 910 nodes, or with `--ascend 16p` densenet161-16p.yaml (2 x 8), `--ascend 910b-2x8` and
`--ascend a3-2x16` the 910B and A3 super-pod examples, on two nodes of that product added for
the run. No trainer runs (KWOK has no containers and this machine no NPU): the simulated Ascend
device plugin (hack/deviceplugin.py) annotates the pods with their chips, the operator (the
chart's Deployment on the real node) publishes the rank table, and the demo prints it
(`kubectl get configmap rings-config-<job>`) and deletes the job (and the nodes it added).

`--queue` shows queueing with Kueue (hack/kueue.py runs it in the local cluster): it applies
examples/kueue/team-a-queue.yaml (a ClusterQueue of 16 NPUs, the LocalQueue team-a) and two
copies of examples/densenet161-16p-queued.yaml (2 x 8 NPUs each) on the KWOK 910 nodes, prints
`kubectl get dnt` with one Running and one Queued, then ends the running job's pods as a
kubelet would after training (KWOK has no containers) and prints both finished in turn.

The demo needs a real node (root, and the packages hack/setup.sh installs); without one it
says what is missing and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deviceplugin
import fakenodes
import images
import kubelet
import kueue
import localcluster
import realnode
import yaml
from realnode_config import real_node_scheduling
from testsupport import (
    CRD_NAME,
    REPO_ROOT,
    TERMINAL_PHASES,
    create_namespace,
    find_tool,
    wait_for,
)

EXAMPLE = REPO_ROOT / "examples" / "densenet121-cpu-demo.yaml"
QUEUE_EXAMPLE = REPO_ROOT / "examples" / "kueue" / "team-a-queue.yaml"
QUEUED_JOB = REPO_ROOT / "examples" / "densenet161-16p-queued.yaml"
# --ascend choice -> the example, and the nodes of another product it needs (product, count)
ASCEND_EXAMPLES: dict[str, tuple[Path, tuple[str, int] | None]] = {
    "8p": (REPO_ROOT / "examples" / "densenet161-8p.yaml", None),
    "16p": (REPO_ROOT / "examples" / "densenet161-16p.yaml", None),
    "910b-2x8": (REPO_ROOT / "examples" / "densenet161-910b-2x8.yaml", ("910b", 2)),
    "a3-2x16": (REPO_ROOT / "examples" / "densenet161-a3-2x16.yaml", ("a3-superpod", 2)),
}
CHART = REPO_ROOT / "charts" / "densenet-operator"
DEMO_DIR = Path("/tmp/densenet-demo")  # the example's hostPath volumes point here
RELEASE, OPERATOR_NAMESPACE, NAMESPACE = "densenet-operator", "densenet-system", "densenet-demo"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


TRAINER_UID = 1000  # docker/trainer.Dockerfile's user: it writes the checkpoints


class Demo:
    def __init__(self, cluster: localcluster.Cluster) -> None:
        self.cluster = cluster
        self.kubectl = cluster.kubectl  # testsupport.Kubectl: raises with kubectl's stderr
        self.helm = find_tool("helm")
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def load_images(self) -> dict[str, images.BuiltImage]:
        say("building the operator and trainer images with buildah (cached by content)")
        built = images.ensure_images(("operator", "trainer"))
        for image in built.values():
            say(f"loading {image.ref} ({image.size_bytes / 1e6:.0f} MB) into the real node")
            localcluster.load_image(self.cluster, image.archive, image.ref)
        return built

    def install_chart(self, built: dict[str, images.BuiltImage]) -> None:
        """The chart as a user installs it: the operator Deployment runs the operator image on
        the real node (the only node that runs containers), with the trainer image as default."""
        say("helm install: the CRD, RBAC, admission policies and the operator Deployment")
        repository, tag = built["operator"].ref.rsplit(":", 1)
        placement = real_node_scheduling()
        subprocess.run(
            [str(self.helm), "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
             "--create-namespace", "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
             "--set", "image.pullPolicy=IfNotPresent", "--set", f"trainer.image={built['trainer'].ref}",
             "--set-json", f"nodeSelector={json.dumps(placement['nodeSelector'])}",
             "--set-json", f"tolerations={json.dumps(placement['tolerations'])}",
             "--take-ownership", "--force-conflicts", "--wait", "--timeout", "300s"],
            env=self.env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

    def job_status(self, name: str) -> dict[str, Any]:
        result = self.kubectl("get", "dnt", name, "-n", NAMESPACE, "-o", "json", check=False)
        return (json.loads(result.stdout).get("status") or {}) if result.returncode == 0 else {}

    def table(self) -> str:
        return self.kubectl("get", "densenettrainings", "-n", NAMESPACE, "-o", "wide").stdout

    def apply_example(self, epochs: int | None) -> str:
        """A fresh run of the example (not a resume of the last demo's checkpoints), placed on
        the real node."""
        name = "densenet121-cpu-demo"
        create_namespace(self.kubectl, NAMESPACE, exist_ok=True)
        self.kubectl("delete", "dnt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        checkpoints = DEMO_DIR / "checkpoints"
        shutil.rmtree(checkpoints / name, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
        os.chown(checkpoints, TRAINER_UID, TRAINER_UID)  # a hostPath keeps the host's owner
        manifest = yaml.safe_load(EXAMPLE.read_text())
        if epochs:
            manifest["spec"]["recipe"]["epochs"] = epochs
        manifest["spec"].setdefault("scheduling", {}).update(real_node_scheduling())
        say(f"applying {EXAMPLE.relative_to(REPO_ROOT)} (with the real node's toleration)")
        print(self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=manifest).stdout.strip())
        return name

    def train(self, name: str, timeout: float) -> None:
        """Waits until the job ends, showing each new `kubectl get dnt` row."""
        last_row = ""

        def finished() -> bool:
            nonlocal last_row
            status = self.job_status(name)
            row = " ".join(self.table().splitlines()[-1].split()[:-1]) if status else ""  # no AGE
            if row and row != last_row:
                say(f"kubectl get dnt: {row}")
                last_row = row
            return status.get("phase") in TERMINAL_PHASES

        wait_for(finished, timeout, interval=2, what=f"{name} to finish")

    def show_pods(self) -> None:
        for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
            say(f"kubectl get pods -n {namespace} -o wide")
            print(self.kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout)

    def ascend_job(self, example: Path, timeout: float) -> str:
        """Applies an Ascend example, waits until its rank table is completed, prints the
        device plugin's annotation of its first pod and the table, and deletes the job."""
        name = yaml.safe_load(example.read_text())["metadata"]["name"]
        create_namespace(self.kubectl, NAMESPACE, exist_ok=True)
        self.kubectl("delete", "dnt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        say(f"applying {example.relative_to(REPO_ROOT)} (Ascend: the pods request NPUs)")
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(example))
        configmap = f"rings-config-{name}"

        def table() -> str | None:
            text = self.kubectl("get", "configmap", configmap, "-n", NAMESPACE, "-o",
                                "jsonpath={.data.hccl\\.json}", check=False).stdout  # fmt: skip
            return text if text and json.loads(text).get("status") == "completed" else None

        say("waiting for the device plugin's annotations and the rank table")
        hccl = wait_for(table, timeout, interval=0.5, what=f"{configmap} to be completed")
        pod = self.kubectl.json("get", "pod", f"{name}-worker-0", "-n", NAMESPACE)
        say(f"{name}-worker-0 on {pod['spec']['nodeName']}: {deviceplugin.CONFIG_ANNOTATION}")
        print(pod["metadata"]["annotations"][deviceplugin.CONFIG_ANNOTATION])  # as written
        say(f"kubectl get configmap {configmap} -o jsonpath={{.data.hccl\\.json}}")
        print(json.dumps(json.loads(hccl), indent=2))
        say("kubectl get densenettrainings -n " + NAMESPACE)
        print(self.table())
        self.kubectl("delete", "dnt", name, "-n", NAMESPACE, "--wait=true")
        return hccl


def queue_demo(demo: Demo, timeout: float) -> int:
    """Two jobs on a queue with room for one: one Running, one Queued, then both Succeeded in
    turn; 0 when they did. The pods run on KWOK nodes, so the demo ends them as their kubelet
    would once training is done."""
    kubectl = demo.kubectl
    create_namespace(kubectl, NAMESPACE, exist_ok=True)
    kubectl("label", "namespace", NAMESPACE, f"{kueue.MANAGED_NAMESPACE_LABEL}=true", "--overwrite")
    say(
        f"applying {QUEUE_EXAMPLE.relative_to(REPO_ROOT)}: a ClusterQueue of 16 NPUs, LocalQueue team-a"
    )
    print(kubectl("apply", "-n", NAMESPACE, "-f", str(QUEUE_EXAMPLE)).stdout.strip())
    job = yaml.safe_load(QUEUED_JOB.read_text())
    names = [f"{job['metadata']['name']}-{suffix}" for suffix in ("a", "b")]
    for name in names:
        kubectl("delete", "dnt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        say(f"applying {QUEUED_JOB.relative_to(REPO_ROOT)} as {name} (2 x 8 NPUs)")
        kubectl("apply", "-n", NAMESPACE, "-f", "-",
                input={**job, "metadata": {**job["metadata"], "name": name}})  # fmt: skip

    def phases() -> list[str]:
        return [demo.job_status(name).get("phase", "") for name in names]

    for running, queued in ((names[0], names[1]), (names[1], None)):
        wait_for(lambda r=running, q=queued: demo.job_status(r).get("phase") == "Running" and (
            q is None or demo.job_status(q).get("phase") == "Queued"), timeout, interval=1,
            what=f"{running} running" + (f", {queued} queued" if queued else ""))  # fmt: skip
        say("kubectl get densenettrainings -n " + NAMESPACE)
        print(demo.table())
        say(f"{running} trained: its pods end as their kubelet would (exit 0)")
        for pod in kubectl.json("get", "pods", "-n", NAMESPACE, "-l",
                                f"training.densenet.dev/job-name={running}")["items"]:  # fmt: skip
            if not pod["metadata"].get("deletionTimestamp"):
                kubelet.set_pod_phase(kubectl, NAMESPACE, pod["metadata"]["name"], "Succeeded",
                                      exit_code=0)  # fmt: skip
        wait_for(lambda r=running: demo.job_status(r).get("phase") == "Succeeded", timeout,
                 interval=1, what=f"{running} to succeed")  # fmt: skip
    say("kubectl get densenettrainings -n " + NAMESPACE)
    print(demo.table())
    ended = phases()
    for name in names:
        kubectl("delete", "dnt", name, "-n", NAMESPACE, "--wait=true")
    return 0 if ended == ["Succeeded", "Succeeded"] else 1


def write_digits(size: int) -> Path:
    target = DEMO_DIR / "digits"
    if not (target / "train").is_dir():
        say(f"writing scikit-learn's digits as an ImageFolder ({size} px) to {target}")
        subprocess.run(
            [sys.executable, "-m", "densenet_trainer.digits", str(target), "--size", str(size)],
            check=True,
        )
    return target


@contextlib.contextmanager
def product_nodes(cluster: localcluster.Cluster, nodes: tuple[str, int] | None) -> Iterator[None]:
    """Nodes of another Ascend product for the duration (those it had to add are deleted)."""
    if nodes is None:
        yield
        return
    before = {n["metadata"]["name"] for n in fakenodes.list_nodes(cluster)}
    say(f"adding {nodes[1]} KWOK nodes of product {nodes[0]}")
    names = fakenodes.ensure_product_nodes(cluster, *nodes)
    try:
        yield
    finally:
        fakenodes.delete_nodes(cluster, [n for n in names if n not in before])


def train_cpu_example(demo: Demo, epochs: int | None, timeout: float) -> int:
    """The CPU demo's job: trains through the operator in real pods; 0 when it Succeeded."""
    write_digits(32)
    name = demo.apply_example(epochs)
    demo.train(name, timeout)
    print()
    demo.show_pods()
    say("kubectl get densenettrainings -n " + NAMESPACE)
    print(demo.table())
    status = demo.job_status(name)
    if status.get("phase") != "Succeeded":
        print(f"the job ended {status.get('phase')}: {status.get('message')}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=localcluster.DEFAULT_NAME, help="local cluster name")
    parser.add_argument(
        "--keep-cluster", action="store_true", help="leave the local cluster running"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the training may take")
    parser.add_argument(
        "--epochs", type=int, help="override the example's epochs (tests use fewer)"
    )
    parser.add_argument("--ascend", nargs="?", const="8p", choices=sorted(ASCEND_EXAMPLES),
                        help="an Ascend job instead (rank table from the simulated device "
                        "plugin; no training): 8p = 1 x 8 NPUs, 16p = 2 x 8")  # fmt: skip
    parser.add_argument("--queue", action="store_true",
                        help="queueing with Kueue: two 2 x 8 jobs on a queue with room for one")  # fmt: skip
    args = parser.parse_args(argv)

    missing = realnode.missing_requirements()
    if missing:
        print(f"the demo runs real pods and needs a real node: missing {', '.join(missing)} "
              "(run it as root after hack/setup.sh)", file=sys.stderr)  # fmt: skip
        return 2
    say("starting the local cluster (control plane, KWOK Ascend nodes, a real node)")
    cluster = localcluster.start(args.cluster, real_nodes=max(1, realnode.default_count()),
                                 kueue=True if args.queue else None)  # fmt: skip
    print(cluster.kubectl("get", "nodes", "-o", "custom-columns=NODE:.metadata.name,"
                          "ASCEND910:.status.allocatable.huawei\\.com/Ascend910,IP:.status.addresses[0].address").stdout)  # fmt: skip
    demo = Demo(cluster)
    try:
        demo.install_chart(demo.load_images())
        if args.queue:
            return queue_demo(demo, timeout=min(args.timeout, 180))
        if args.ascend:
            example, nodes = ASCEND_EXAMPLES[args.ascend]
            with product_nodes(cluster, nodes):
                demo.ascend_job(example, timeout=min(args.timeout, 180))
            return 0
        return train_cpu_example(demo, args.epochs, args.timeout)
    finally:
        if not args.keep_cluster:
            localcluster.stop(args.cluster)


if __name__ == "__main__":
    sys.exit(main())

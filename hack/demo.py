"""The end-to-end demo: a DenseNet trained by the operator on this machine's local cluster.

1. starts the local control plane (hack/localcluster.py) with its KWOK Ascend nodes;
2. installs the chart's CRD and RBAC with helm (the operator Deployment scaled to 0: KWOK runs
   no containers) and runs the operator here, authenticated as the chart's ServiceAccount;
3. writes scikit-learn's digits as an ImageFolder and applies examples/densenet121-cpu-demo.yaml;
4. runs each scheduled pod's trainer container as a local process (hack/podrunner.py), with
   the pod's own command, args, env, rank-table ConfigMap and ServiceAccount token;
5. shows progress from `kubectl get densenettrainings`, and ends with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import localcluster
from podrunner import LocalKubelet
from testsupport import (
    CRD_NAME,
    REPO_ROOT,
    TERMINAL_PHASES,
    create_namespace,
    find_tool,
    service_account_kubeconfig,
)

EXAMPLE = REPO_ROOT / "examples" / "densenet121-cpu-demo.yaml"
CHART = REPO_ROOT / "charts" / "densenet-operator"
DEMO_DIR = Path("/tmp/densenet-demo")  # the example's hostPath volumes point here
RELEASE, OPERATOR_NAMESPACE, NAMESPACE = "densenet-operator", "densenet-system", "densenet-demo"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


class Demo:
    def __init__(self, cluster: localcluster.Cluster) -> None:
        self.cluster = cluster
        self.kubectl = cluster.kubectl  # testsupport.Kubectl: raises with kubectl's stderr
        self.helm = find_tool("helm")
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def install_chart(self) -> None:
        say("installing the chart's CRD and RBAC (helm)")
        subprocess.run(
            [str(self.helm), "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
             "--create-namespace", "--set", "replicas=0", "--take-ownership", "--wait", "--timeout", "120s"],
            env=self.env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

    def operator_kubeconfig(self, workdir: Path) -> Path:
        """The chart's ServiceAccount identity: the operator runs with exactly its RBAC."""
        return service_account_kubeconfig(
            self.cluster.kubeconfig,
            OPERATOR_NAMESPACE,
            RELEASE,
            workdir / "operator.kubeconfig",
            duration="2h",
        )

    def start_operator(self, workdir: Path) -> subprocess.Popen[bytes]:
        say("starting the operator (as the chart's ServiceAccount)")
        log = (workdir / "operator.log").open("wb")
        env = {**self.env, "KUBECONFIG": str(self.operator_kubeconfig(workdir))}
        return subprocess.Popen([sys.executable, "-m", "densenet_operator.cli", "run"], stdout=log,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip

    def job_status(self, name: str) -> dict[str, Any]:
        result = self.kubectl("get", "dnt", name, "-n", NAMESPACE, "-o", "json", check=False)
        return (json.loads(result.stdout).get("status") or {}) if result.returncode == 0 else {}

    def table(self) -> str:
        return self.kubectl("get", "densenettrainings", "-n", NAMESPACE, "-o", "wide").stdout

    def apply_example(self, epochs: int | None) -> str:
        """A fresh run of the example (not a resume of the last demo's checkpoints)."""
        name = "densenet121-cpu-demo"
        create_namespace(self.kubectl, NAMESPACE, exist_ok=True)
        self.kubectl("delete", "dnt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        shutil.rmtree(DEMO_DIR / "checkpoints" / name, ignore_errors=True)
        manifest = EXAMPLE.read_text()
        if epochs:
            manifest = manifest.replace("epochs: 7", f"epochs: {epochs}")
        say(f"applying {EXAMPLE.relative_to(REPO_ROOT)}")
        print(self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=manifest).stdout.strip())
        return name

    def train(self, name: str, workdir: Path, timeout: float) -> None:
        """Runs the job's pods here until it ends, showing each new `kubectl get dnt` row."""
        kubelet = LocalKubelet(self.cluster.kubeconfig, NAMESPACE, name, workdir / "pods")
        last_row = ""

        def finished() -> bool:
            nonlocal last_row
            status = self.job_status(name)
            row = " ".join(self.table().splitlines()[-1].split()[:-1]) if status else ""  # no AGE
            if row and row != last_row:
                say(f"kubectl get dnt: {row}")
                last_row = row
            return status.get("phase") in TERMINAL_PHASES

        kubelet.run_until(finished, timeout=timeout)


def write_digits(size: int) -> Path:
    target = DEMO_DIR / "digits"
    if not (target / "train").is_dir():
        say(f"writing scikit-learn's digits as an ImageFolder ({size} px) to {target}")
        subprocess.run(
            [sys.executable, "-m", "densenet_trainer.digits", str(target), "--size", str(size)],
            check=True,
        )
    return target


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
    args = parser.parse_args(argv)

    say(
        "starting the local control plane (kube-apiserver, scheduler, controller-manager, KWOK Ascend nodes)"
    )
    cluster = localcluster.start(args.cluster)
    print(cluster.kubectl("get", "nodes", "-o", "custom-columns=NODE:.metadata.name,"
                          "ASCEND910:.status.allocatable.huawei\\.com/Ascend910,IP:.status.addresses[0].address").stdout)  # fmt: skip
    demo = Demo(cluster)
    workdir = DEMO_DIR / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    operator = None
    try:
        demo.install_chart()
        operator = demo.start_operator(workdir)
        write_digits(32)
        name = demo.apply_example(args.epochs)
        demo.train(name, workdir, args.timeout)
        print()
        say("kubectl get densenettrainings -n " + NAMESPACE)
        print(demo.table())
        status = demo.job_status(name)
        if status.get("phase") != "Succeeded":
            print(f"the job ended {status.get('phase')}: {status.get('message')}", file=sys.stderr)
            return 1
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        if not args.keep_cluster:
            localcluster.stop(args.cluster)


if __name__ == "__main__":
    sys.exit(main())

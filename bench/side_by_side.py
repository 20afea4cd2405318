"""Side by side: our operator against Kubeflow's training-operator on one local cluster.

    PYTHONPATH=operator:trainer:hack:. .venv/bin/python bench/side_by_side.py \\
        [--repeats 3] [--jobs 100] [--big-replicas 128]

The same workloads go to both, one operator at a time, in one run on one cluster (real
kube-apiserver, scheduler and controller manager, KWOK nodes of 8 `huawei.com/Ascend910` each,
the simulated Ascend device plugin; see operator_bench.py):
- a wave of N concurrent jobs of 2 replicas x 8 devices, and
- one job of 128 replicas x 8 devices (1024 ranks),
submitted as DenseNetTrainings to ours and as PyTorchJobs (Master 1 + Worker replicas-1, every
pod asking for the same 8 `huawei.com/Ascend910`) to Kubeflow's v1 PyTorchJob controller
(built by hack/build-kubeflow.sh from the Go module proxy: v1.8.1, `--enable-scheme=pytorchjob`,
no gang scheduler, its shipped defaults otherwise). Each workload runs on a fresh operator
process; the order of the two alternates between repetitions. Measured per run:
create -> all pods exist, create -> all pods Running, API requests per job, operator CPU
seconds and peak RSS, and for ours create -> every rank table completed (Kubeflow has none).

API requests are counted by the API server, for both alike: each operator runs under a client
certificate of its own (CN `bench:densenet-operator` / `bench:training-operator`, group
system:masters, signed by the cluster's CA), and the cluster is started with an audit policy
that logs those two users' requests (Metadata level, nothing else), so that their requests are
told apart from the scheduler's, KWOK's, the device plugin's and this script's. A count runs
from the moment the operator is ready until it has been quiet for a second after the last pod
is Running (and, for ours, the last table is published): what the jobs cost, not start-up.

Kubeflow's webhook: v1.8.1 always starts its validating webhook server and a certificate
rotator (github.com/open-policy-agent/cert-controller) that keeps a CA and serving
certificate in the Secret `training-operator-webhook-cert` of `$MY_POD_NAMESPACE`, then waits
for the files to appear in /tmp/k8s-webhook-server/serving-certs (a path fixed in its
pkg/cert), where its Deployment mounts that Secret. Here the Secret is created empty, the
rotator fills it with its self-signed certificate, and this script writes the two files there
as the kubelet would. No ValidatingWebhookConfiguration is installed, so the API server never
calls the webhook: PyTorchJobs are checked by the CRD's schema only, as DenseNetTrainings are by
ours (whose CEL rules run inside the API server).

Prints a table of medians with min-max over the repetitions and the ratios ours / theirs
(below 1: ours is faster or cheaper); writes JSON (default bench/results/side-by-side.json).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "hack")]  # run as a script: bench.* and hack/ modules

import controlplane  # noqa: E402
import fakenodes  # noqa: E402
import localcluster  # noqa: E402
from localoperator import OperatorProcess, _free_port  # noqa: E402
from testsupport import create_namespace, install_crd, wait_for  # noqa: E402

from bench.operator_bench import Recorder  # noqa: E402

BUILD_SCRIPT = ROOT / "hack" / "build-kubeflow.sh"
PYTORCHJOB_LABEL = "training.kubeflow.org/job-name"  # on every pod the PyTorchJob controller makes
ASCEND = "huawei.com/Ascend910"
IMAGE = "densenet-trainer:test"
USERS = {"ours": "bench:densenet-operator", "theirs": "bench:training-operator"}
SIDES = tuple(USERS)
KUBEFLOW_NAMESPACE = "kubeflow-bench"  # its MY_POD_NAMESPACE: where its webhook Secret lives
WEBHOOK_SECRET = "training-operator-webhook-cert"
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in v1.8.1's pkg/cert
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": sorted(USERS.values())}, {"level": "None"}],
}
# What the table compares; lower is better for each, so ours / theirs < 1 means ours wins.
MEASURES = (
    ("all_pods_s", "create -> all pods exist", "s"),
    ("all_running_s", "create -> all pods Running", "s"),
    ("requests_per_job", "API requests per job", ""),
    ("cpu_s", "operator CPU", "s"),
    ("peak_rss_mib", "operator peak RSS", "MiB"),
)


# ---------------------------------------------------------------------------------------------
# Pure parts


def pytorchjob(name: str, replicas: int, devices: int, image: str = IMAGE) -> dict[str, Any]:
    """A PyTorchJob of `replicas` pods (Master 1, Worker replicas-1), each asking for `devices`
    chips as a DenseNetTraining's pod does (request = limit: extended resources)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")

    def replica_spec(count: int) -> dict[str, Any]:
        chips = {ASCEND: str(devices)}
        container = {"name": "pytorch", "image": image,
                     "resources": {"requests": chips, "limits": dict(chips)}}  # fmt: skip
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"spec": {"containers": [container]}}}  # fmt: skip

    specs = {"Master": replica_spec(1)}
    if replicas > 1:
        specs["Worker"] = replica_spec(replicas - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs, "runPolicy": {"backoffLimit": 100}},
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the repetitions."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """Ours / theirs per repetition (paired: the two ran back to back), then their spread."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"need paired repetitions, got {len(ours)} and {len(theirs)}")
    return spread([a / b for a, b in zip(ours, theirs, strict=True)])


def count_requests(lines: Iterable[str], users: Iterable[str]) -> dict[str, Counter[str]]:
    """Audit log lines -> per user, requests by "verb resource[/subresource][ status]" (the
    status when it is an error). A request counts once, when its response starts: a watch is
    logged again (ResponseComplete) when it ends, which can be long after it began."""
    wanted = set(users)
    counts: dict[str, Counter[str]] = {u: Counter() for u in wanted}
    seen: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        user = event.get("user", {}).get("username")
        started = event["stage"] == "ResponseStarted" or event["verb"] != "watch"
        if user not in wanted or event["auditID"] in seen or not started:
            continue
        seen.add(event["auditID"])
        ref = event.get("objectRef") or {}
        key = f"{event['verb']} {ref.get('resource') or event['requestURI'].split('?')[0]}"
        if ref.get("subresource"):
            key += "/" + ref["subresource"]
        if (status := (event.get("responseStatus") or {}).get("code", 200)) >= 400:
            key += f" {status}"
        counts[user][key] += 1
    return counts


def summarize(runs: Sequence[Mapping[str, Any]], workload: str) -> dict[str, Any]:
    """The runs of one workload -> per measure: each side's spread and the ratio's."""
    by_side = {side: [r for r in runs if r["workload"] == workload and r["side"] == side]
               for side in SIDES}  # fmt: skip
    summary: dict[str, Any] = {}
    for key, _, _ in MEASURES:
        ours, theirs = ([r[key] for r in by_side[s]] for s in SIDES)
        summary[key] = {"ours": spread(ours), "theirs": spread(theirs),
                        "ratio": ratios(ours, theirs)}  # fmt: skip
    summary["all_tables_s"] = {"ours": spread([r["all_tables_s"] for r in by_side["ours"]])}
    return summary


def table_rows(summary: Mapping[str, Any], workload: str) -> list[tuple[str, ...]]:
    """(measure, ours, theirs, ours / theirs) rows: median [min-max] of the repetitions."""

    def cell(s: Mapping[str, float], unit: str, digits: int = 2) -> str:
        unit = f" {unit}" if unit else ""
        return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    rows = [(f"{workload}: {label}", cell(summary[key]["ours"], unit, 1 if unit == "MiB" else 2),
             cell(summary[key]["theirs"], unit, 1 if unit == "MiB" else 2),
             cell(summary[key]["ratio"], "x"))
            for key, label, unit in MEASURES]  # fmt: skip
    rows.append((f"{workload}: create -> all rank tables (ours only)",
                 cell(summary["all_tables_s"]["ours"], "s"), "-", "-"))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# Cluster, identities, Kubeflow's operator


def audit_log(cluster_name: str) -> Path:
    return controlplane.cluster_dir(cluster_name) / "logs" / "audit.log"


def start_cluster(name: str, nodes: int, workdir: Path) -> localcluster.Cluster:
    """The cluster with the audit policy; restarted when it runs without one."""
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    os.environ["DENSENET_AUDIT_POLICY"] = str(policy)
    if not (controlplane.cluster_dir(name) / "audit.yaml").exists():
        localcluster.stop(name)
    cluster = localcluster.start(name)
    extra = [f"bench-node-{i}" for i in range(localcluster.DEFAULT_NODES, nodes)]
    fakenodes.ensure_nodes(cluster, extra, timeout=300)
    return cluster


def client_kubeconfig(cluster: localcluster.Cluster, user: str, workdir: Path) -> Path:
    """A kubeconfig for `user` (group system:masters): a key and a certificate signed by the
    cluster's CA, with openssl."""
    pki = controlplane.cluster_dir(cluster.name) / "pki"
    stem = workdir / user.replace(":", "-")
    key, cert = stem.with_suffix(".key"), stem.with_suffix(".crt")
    csr = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-subj", f"/O=system:masters/CN={user}"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", str(cert)],
        input=csr, check=True, capture_output=True,
    )  # fmt: skip
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["users"]:
        entry["user"] = {"client-certificate": str(cert), "client-key": str(key)}
    path = stem.with_suffix(".kubeconfig")
    path.write_text(yaml.safe_dump(config))
    return path


def build_kubeflow() -> Path:
    """hack/build-kubeflow.sh: the directory with `training-operator` and its PyTorchJob CRD."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


class KubeflowOperator(OperatorProcess):
    """Kubeflow's training-operator binary as a local process, only its PyTorchJob controller,
    its endpoints on free loopback ports. Ready when its webhook certificate is in place,
    /readyz answers and the PyTorchJob controller's workers have started."""

    def __init__(self, binary: Path, kubeconfig: Path, log_path: Path, admin: client.CoreV1Api):
        super().__init__(kubeconfig, log_path)
        self.binary = binary
        self.admin = admin

    def start(self, wait: bool = True) -> None:
        self.port = _free_port()
        args = [str(self.binary), "--enable-scheme=pytorchjob",
                f"--metrics-bind-address=127.0.0.1:{_free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{self.port}",
                f"--webhook-server-port={_free_port()}"]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
               "MY_POD_NAMESPACE": KUBEFLOW_NAMESPACE}  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        OperatorProcess.running.add(self)
        wait_for(self._mount_certificate, timeout=60, what="the rotator's webhook certificate")
        wait_for(self.healthy, timeout=60, what=f"training-operator /readyz ({self.log_path})")
        wait_for(
            lambda: "Starting workers" in self.log_path.read_text(errors="replace"),
            timeout=60,
            what="the PyTorchJob controller's workers",
        )

    def _mount_certificate(self) -> bool:
        """What the kubelet does for the Deployment's Secret volume: the files, once there."""
        self.healthy()  # raises when the process exited
        secret = self.admin.read_namespaced_secret(WEBHOOK_SECRET, KUBEFLOW_NAMESPACE)
        data = secret.data or {}
        if "tls.crt" not in data or "tls.key" not in data:
            return False
        CERT_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (CERT_DIR / name).write_bytes(base64.b64decode(data[name]))
        return True

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"training-operator exited with {self.process.returncode}:\n"
                                 f"{self.log_tail()}")  # fmt: skip
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False


def prepare_kubeflow(cluster: localcluster.Cluster, crd: Path, core: client.CoreV1Api) -> None:
    """Its CRD (from the module's manifests), its namespace and the empty webhook Secret."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    wait_for(  # `kubectl wait` fails while the new CRD has no conditions at all
        lambda: cluster.kubectl.succeeds(
            "wait", "--for=condition=Established", "--timeout=10s", "crd/pytorchjobs.kubeflow.org"
        ),
        timeout=60,
        what="the PyTorchJob CRD Established",
    )
    create_namespace(cluster.kubectl, KUBEFLOW_NAMESPACE, exist_ok=True)
    try:
        core.delete_namespaced_secret(WEBHOOK_SECRET, KUBEFLOW_NAMESPACE)
    except client.ApiException as error:
        if error.status != 404:
            raise
    core.create_namespaced_secret(KUBEFLOW_NAMESPACE, {"metadata": {"name": WEBHOOK_SECRET}})


# ---------------------------------------------------------------------------------------------
# Runs


class AuditCounter:
    """One user's requests in the API server's audit log, from a mark on."""

    def __init__(self, path: Path, user: str) -> None:
        self.path, self.user, self.offset = path, user, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def counts(self) -> Counter[str]:
        text = self.path.read_bytes()[self.offset :].decode()
        complete = text[: text.rfind("\n") + 1]  # a line being written is left for later
        return count_requests(complete.splitlines(), [self.user])[self.user]

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 60) -> None:
        """Until the user made no request for `quiet` seconds (the operator has settled)."""
        last, changed, deadline = -1, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            now_count = sum(self.counts().values())
            if now_count != last:
                last, changed = now_count, time.monotonic()
            elif time.monotonic() - changed >= quiet:
                return
            time.sleep(0.2)


def submit_all(submit: Callable[[str], Any], names: Sequence[str]) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, names))


def run_workload(
    recorder: Recorder,
    operator: OperatorProcess,
    audit: AuditCounter,
    submit: Callable[[str], Any],
    names: Sequence[str],
    replicas: int,
) -> dict[str, Any]:
    """Start the operator, submit the jobs, time their pods (and tables), stop it."""
    operator.start()
    try:
        audit.mark()
        audit.wait_quiet()  # its start-up lists and watches are not the jobs' cost
        audit.mark()
        cpu_before = operator.cpu_seconds()
        start = time.monotonic()
        submit_all(submit, names)
        submitted = time.monotonic() - start

        def pods() -> list[dict[str, Any]]:
            return [p for n in names for p in recorder.job_pods(n)]

        recorder.wait(lambda: len(pods()) == len(names) * replicas, timeout=300)
        uids = [p["metadata"]["uid"] for p in pods()]
        recorder.wait(lambda: all(u in recorder.ready for u in uids), timeout=300)
        result = {
            "submit_s": submitted,
            "all_pods_s": max(recorder.pod_seen[u] for u in uids) - start,
            "all_running_s": max(recorder.ready[u] for u in uids) - start,
        }
        if recorder.job_label != PYTORCHJOB_LABEL:
            recorder.wait(lambda: all(n in recorder.tables for n in names), timeout=300)
            result["all_tables_s"] = max(recorder.tables[n] for n in names) - start
        audit.wait_quiet()
        result["cpu_s"] = operator.cpu_seconds() - cpu_before
        result["peak_rss_mib"] = operator.peak_rss_bytes() / 2**20
    finally:
        operator.stop()
    requests = audit.counts()
    result["requests"] = sum(requests.values())
    result["requests_per_job"] = result["requests"] / len(names)
    result["requests_by_kind"] = dict(requests.most_common())
    return result


class Bench:
    """The cluster, both operators and their recorders: one workload run at a time."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        kubeflow = build_kubeflow()
        nodes = max(2 * args.jobs, args.big_replicas, localcluster.DEFAULT_NODES)
        self.cluster = start_cluster(args.cluster, nodes, workdir)
        install_crd(self.cluster.kubectl)
        create_namespace(self.cluster.kubectl, args.namespace, exist_ok=True)
        self.recorders = {
            "ours": Recorder(self.cluster.kubeconfig, args.namespace),
            "theirs": Recorder(self.cluster.kubeconfig, args.namespace, PYTORCHJOB_LABEL),
        }
        admin = self.recorders["ours"]
        prepare_kubeflow(self.cluster, kubeflow / "kubeflow.org_pytorchjobs.yaml", admin.core)
        configs = {s: client_kubeconfig(self.cluster, u, workdir) for s, u in USERS.items()}
        log = workdir / "logs"
        log.mkdir(exist_ok=True)
        self.operators: dict[str, Callable[[str], OperatorProcess]] = {
            # Each logs as it ships: ours at info (the chart's logLevel), Kubeflow's at its
            # built-in default (zap's development mode: debug).
            "ours": lambda run: OperatorProcess(
                configs["ours"], log / f"ours-{run}.log", verbose=False
            ),
            "theirs": lambda run: KubeflowOperator(kubeflow / "training-operator",
                                                   configs["theirs"], log / f"theirs-{run}.log",
                                                   admin.core),
        }  # fmt: skip
        self.audit = audit_log(args.cluster)
        self.clean()

    def submitter(self, side: str, replicas: int) -> Callable[[str], Any]:
        recorder = self.recorders[side]
        if side == "ours":
            return lambda name: recorder.create_job(name, replicas=replicas)
        return lambda name: recorder.custom.create_namespaced_custom_object(
            "kubeflow.org", "v1", self.args.namespace, "pytorchjobs",
            pytorchjob(name, replicas, devices=8),
        )  # fmt: skip

    def clean(self) -> None:
        """Both kinds of jobs and their pods gone (children go by garbage collection)."""
        self.recorders["ours"].delete_jobs()
        theirs = self.recorders["theirs"]
        theirs.custom.delete_collection_namespaced_custom_object(
            "kubeflow.org", "v1", self.args.namespace, "pytorchjobs"
        )
        theirs.core.delete_collection_namespaced_pod(
            self.args.namespace, label_selector=PYTORCHJOB_LABEL, grace_period_seconds=0
        )
        theirs.wait(lambda: not theirs.pods, timeout=180)

    def run(self, rep: int, side: str, workload: str) -> dict[str, Any]:
        jobs, replicas = (self.args.jobs, 2) if workload == "wave" else (1, self.args.big_replicas)
        run = f"{workload}-{rep}"
        names = [f"{run}-{i}" for i in range(jobs)]
        load_before = os.getloadavg()[0]
        result = run_workload(
            self.recorders[side],
            self.operators[side](run),
            AuditCounter(self.audit, USERS[side]),
            self.submitter(side, replicas),
            names,
            replicas,
        )
        self.clean()
        return {"rep": rep, "side": side, "workload": workload, "jobs": jobs,
                "replicas": replicas, "loadavg_1m": [load_before, os.getloadavg()[0]],
                **result}  # fmt: skip


def print_table(summary: Mapping[str, Any], big_ranks: int) -> None:
    rows = [("measure", "ours", "Kubeflow training-operator", "ours / theirs")]
    for workload, label in (("wave", "wave"), ("big", f"{big_ranks}-rank job")):
        rows += table_rows(summary[workload], label)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=os.environ.get("DENSENET_CLUSTER", "densenet-bench"))
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--big-replicas", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "side-by-side.json"
    )
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args(argv)
    workdir = controlplane.cache_dir() / "side-by-side"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bench = Bench(args, workdir)
    runs = []
    try:
        for rep in range(args.repeats):
            # Alternate who goes first, so that a drifting machine load favours neither.
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                for workload in ("wave", "big"):
                    runs.append(bench.run(rep, side, workload))
                    print(json.dumps({k: v for k, v in runs[-1].items()
                                      if k != "requests_by_kind"}), flush=True)  # fmt: skip
    finally:
        if not args.keep_cluster:
            localcluster.stop(args.cluster)
    summary = {w: summarize(runs, w) for w in ("wave", "big")}
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "loadavg_at_end": os.getloadavg(),
               "wall_s": time.time() - started}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=2)
    )
    print_table(summary, args.big_replicas * 8)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

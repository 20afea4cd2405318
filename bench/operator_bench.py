"""Operator benchmarks on the local control plane (real kube-apiserver, scheduler, KWOK nodes).

    .venv/bin/python bench/operator_bench.py [--runs 20] [--jobs 100] [--big-replicas 128]

Measures, each with a fresh operator process so that its RSS, CPU time and API requests are
its own:
- one 2 x 8 job, repeated: `create` -> all pods exist; last pod ready (Running with an IP) ->
  rank table `completed` in the ConfigMap, which includes the device plugin's delay, and its
  parts: pod ready -> device annotation, last annotation -> table; a pod failure -> the whole
  new gang exists;
- a wave of N concurrent 2 x 8 jobs: until every pod exists, until every rank table is
  completed;
- one 128 x 8 = 1024-rank job: until every pod exists, until its rank table is completed;
- the rank table function alone for 1024 and 4096 ranks.
The cluster's simulated Ascend device plugin (hack/deviceplugin.py) annotates each pod with its
chips, after its delay (DENSENET_DEVICE_PLUGIN_DELAY, 0.5 s by default; the real plugin writes
on a 5 s loop). Prints a table and writes JSON (default bench/results/operator.json).

Run it with the project's venv, where the operator package is installed. The modules of hack/
(localcluster, testsupport, ...) import as top-level modules, as in the tests (pytest's
`pythonpath`) and in hack/'s own scripts (a script's folder comes first on sys.path); this
script lives in bench/, so its one bootstrap line below puts hack/ on sys.path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))  # the bootstrap: hack/ modules import as top-level

import controlplane  # noqa: E402
import deviceplugin  # noqa: E402
import fakenodes  # noqa: E402
import localcluster  # noqa: E402
from kubelet import terminal_status  # noqa: E402
from localoperator import OperatorProcess  # noqa: E402
from testsupport import create_namespace, install_crd, is_running, wait_for  # noqa: E402

from densenet_contract import GROUP, MERGE_PATCH, PLURAL, VERSION  # noqa: E402
from densenet_operator.ascend import ranktable  # noqa: E402
from densenet_operator.ascend.deviceconfig import CONFIG_ANNOTATION as ASCEND_CONFIG_ANNOTATION  # noqa: E402
from densenet_operator.naming import LABEL_JOB, LABEL_REPLICA_INDEX  # noqa: E402
from densenet_operator.podrecord import PodRecord  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Recorder:
    """Watches pods and rank-table ConfigMaps of a namespace, recording when things happen.
    Pods are those carrying `job_label` (whose value names their job): our operator's by
    default, another operator's for the side-by-side benchmark."""

    def __init__(self, kubeconfig: Path, namespace: str, job_label: str = LABEL_JOB) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.api.configuration.connection_pool_maxsize = 32
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        self.job_label = job_label
        self.lock = threading.RLock()
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        self.pod_seen: dict[str, float] = {}  # uid -> first seen
        self.ready: dict[str, float] = {}  # uid -> first seen Running with an IP
        self.annotated: dict[str, float] = {}  # uid -> first seen with the plugin's annotation
        self.tables: dict[str, float] = {}  # job -> time its table was seen completed
        self.stopping = False
        for target in (self._watch_pods, self._watch_configmaps):
            threading.Thread(target=self._keep_watching, args=(target,), daemon=True).start()

    def _keep_watching(self, watch_once: Callable[[], None]) -> None:
        """A watch that ends (its timeout) or breaks (a loaded API server) starts again."""
        while not self.stopping:
            try:
                watch_once()
            except Exception as error:  # a bench must outlive a dropped connection
                print(f"[recorder] {watch_once.__name__}: {error!r}; again", file=sys.stderr)
                time.sleep(0.5)

    def _watch_pods(self) -> None:
        # Listed first, then watched from the list's version: pods deleted while no watch ran
        # are dropped here, where a fresh watch alone would only re-add the living.
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.job_label)
        with self.lock:
            self.pods.clear()
            for item in listed.items:
                self._record_pod("ADDED", item, time.monotonic())
        for event in watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                          label_selector=self.job_label, timeout_seconds=300,
                                          resource_version=listed.metadata.resource_version):  # fmt: skip
            with self.lock:
                self._record_pod(event["type"], event["object"], time.monotonic())

    def _record_pod(self, kind: str, obj: Any, now: float) -> None:
        pod = self.api.sanitize_for_serialization(obj)
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
            return
        self.pods[uid] = pod
        self.pod_seen.setdefault(uid, now)
        if is_running(pod):
            self.ready.setdefault(uid, now)
        if ASCEND_CONFIG_ANNOTATION in (pod["metadata"].get("annotations") or {}):
            self.annotated.setdefault(uid, now)

    def _watch_configmaps(self) -> None:
        for event in watch.Watch().stream(self.core.list_namespaced_config_map, self.namespace,
                                          label_selector=LABEL_JOB, timeout_seconds=300):  # fmt: skip
            now = time.monotonic()
            cm = event["object"]
            text = (cm.data or {}).get("hccl.json")
            if ranktable.table_status(text) == ranktable.COMPLETED:
                with self.lock:
                    self.tables.setdefault(cm.metadata.labels[LABEL_JOB], now)

    def all_seen(self, job: str) -> bool:
        """Every pod of the job seen ready and annotated."""
        uids = [p["metadata"]["uid"] for p in self.job_pods(job)]
        return all(u in self.ready and u in self.annotated for u in uids)

    def job_pods(self, job: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.pods.values() if p["metadata"]["labels"].get(self.job_label) == job
                    and not p["metadata"].get("deletionTimestamp")]  # fmt: skip

    def wait(self, predicate: Callable[[], Any], timeout: float = 120) -> None:
        """Until predicate() holds over what was recorded (it runs under the lock)."""

        def holds() -> Any:
            with self.lock:
                return predicate()

        wait_for(holds, timeout, interval=0.1, what=str(predicate))

    def fail_pod(self, pod: dict[str, Any], exit_code: int, container_reason: str) -> None:
        """What the pod's kubelet writes when its container dies (kubelet.terminal_status)."""
        status = terminal_status(
            pod, "Failed", exit_code=exit_code, container_reason=container_reason
        )
        self.core.patch_namespaced_pod_status(
            pod["metadata"]["name"], self.namespace, {"status": status}, _content_type=MERGE_PATCH
        )

    def create_job(self, name: str, replicas: int, devices: int = 8) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DenseNetTraining", "metadata": {"name": name},
            "spec": {"model": "densenet161", "replicas": replicas, "devicesPerReplica": devices,
                     "data": {"synthetic": True}, "runPolicy": {"backoffLimit": 100}},
        })  # fmt: skip

    def delete_jobs(self) -> None:
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        self.core.delete_collection_namespaced_pod(
            self.namespace, label_selector=LABEL_JOB, grace_period_seconds=0
        )
        self.wait(lambda: not self.pods, timeout=180)
        with self.lock:
            self.tables.clear()


def plugin_node(i: int) -> deviceplugin.AscendNode:
    """Server i of a large 910 cluster, as the device plugin sees it (distinct IPs)."""
    ips = tuple(f"10.{100 + d}.{i // 250}.{i % 250 + 1}" for d in range(8))
    return deviceplugin.AscendNode(name=f"n{i}", accelerator_type="module", chips=8,
                                   host_ip=f"10.1.{i // 250}.{i % 250}", super_pod_id=-2,
                                   server_index=-2, device_ips=ips, super_device_ids=(0,) * 8)  # fmt: skip


def bench_rank_table(repeats: int = 30) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for ranks in (1024, 4096):
        servers = ranks // 8
        pods = [{
            "metadata": {"name": f"j-worker-{i}", "labels": {LABEL_REPLICA_INDEX: str(i)},
                         "annotations": {ASCEND_CONFIG_ANNOTATION: deviceplugin.configuration(
                             f"j-worker-{i}", f"uid-{i}", plugin_node(i), range(8))}},
            "status": {"podIP": f"10.2.{i // 250}.{i % 250}", "hostIP": f"10.1.{i // 250}.{i % 250}"},
        } for i in range(servers)]  # fmt: skip
        records = [PodRecord.from_pod(p) for p in pods]  # as a pass reads them, once
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            table = ranktable.build_rank_table(records, replicas=servers, devices_per_replica=8)
            ranktable.dumps(table)
            times.append(time.perf_counter() - start)
        results[str(ranks)] = {"p50_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}
    return results


def bench_single_job(recorder: Recorder, runs: int) -> dict[str, Any]:
    created, restarted = [], []
    published: dict[str, list[float]] = {"ready": [], "annotation": [], "table": []}
    for run in range(runs):
        name = f"lat-{run}"
        start = time.monotonic()
        recorder.create_job(name, replicas=2)
        recorder.wait(lambda n=name: len(recorder.job_pods(n)) == 2)
        created.append(
            max(recorder.pod_seen[p["metadata"]["uid"]] for p in recorder.job_pods(name)) - start
        )
        # The simulated device plugin annotates each pod; the operator then publishes the table.
        recorder.wait(lambda n=name: n in recorder.tables and recorder.all_seen(n))
        pods = sorted(recorder.job_pods(name), key=lambda p: p["metadata"]["name"])
        old = {p["metadata"]["uid"] for p in pods}
        last_ready = max(recorder.ready[u] for u in old)
        last_annotation = max(recorder.annotated[u] for u in old)
        published["ready"].append(recorder.tables[name] - last_ready)
        published["annotation"].extend(recorder.annotated[u] - recorder.ready[u] for u in old)
        published["table"].append(recorder.tables[name] - last_annotation)
        failed_at = time.monotonic()
        recorder.fail_pod(pods[0], 137, "OOMKilled")
        recorder.wait(
            lambda n=name, o=old: (
                len([p for p in recorder.job_pods(n) if p["metadata"]["uid"] not in o]) == 2
            )
        )
        fresh = [
            recorder.pod_seen[p["metadata"]["uid"]]
            for p in recorder.job_pods(name)
            if p["metadata"]["uid"] not in old
        ]
        restarted.append(max(fresh) - failed_at)
    summary = {}
    for key, values in (("create_to_all_pods", created), ("last_ready_to_table", published["ready"]),
                        ("ready_to_annotation", published["annotation"]),
                        ("last_annotation_to_table", published["table"]),
                        ("failure_to_new_gang", restarted)):  # fmt: skip
        summary[key] = {
            "p50_ms": percentile(values, 0.5) * 1e3,
            "p95_ms": percentile(values, 0.95) * 1e3,
        }
    return summary


def bench_wave(recorder: Recorder, jobs: int, replicas: int) -> dict[str, Any]:
    names = [f"wave-{i}" for i in range(jobs)]
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: recorder.create_job(n, replicas=replicas), names))
    created_at = time.monotonic() - start
    recorder.wait(
        lambda: sum(len(recorder.job_pods(n)) for n in names) == jobs * replicas, timeout=300
    )
    all_pods = (
        max(recorder.pod_seen[p["metadata"]["uid"]] for n in names for p in recorder.job_pods(n))
        - start
    )
    recorder.wait(lambda: all(n in recorder.tables for n in names), timeout=300)
    all_tables = max(recorder.tables[n] for n in names) - start
    return {"jobs": jobs, "ranks_per_job": replicas * 8, "submit_s": created_at,
            "all_pods_s": all_pods, "all_tables_s": all_tables}  # fmt: skip


def with_operator(
    kubeconfig: Path, workdir: Path, label: str, work: Any
) -> tuple[Any, dict[str, Any]]:
    log = workdir / f"operator-{label}.log"
    operator = OperatorProcess(kubeconfig, log)
    operator.start()
    cpu_before = operator.cpu_seconds()
    try:
        result = work()
        stats = {
            "peak_rss_mib": operator.peak_rss_bytes() / 2**20,
            "cpu_s": operator.cpu_seconds() - cpu_before,
        }
    finally:
        operator.stop()
    found = re.findall(r"made (\d+) API requests for (\d+) job", log.read_text())
    if found:
        requests, jobs = map(int, found[-1])
        stats.update(api_requests=requests, requests_per_job=requests / max(jobs, 1))
    return result, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="densenet-bench")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--big-replicas", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "operator.json")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args(argv)

    nodes = max(2 * args.jobs, args.big_replicas, localcluster.DEFAULT_NODES)
    cluster = localcluster.start(args.cluster)
    workdir = args.out.parent
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        extra = [f"bench-node-{i}" for i in range(localcluster.DEFAULT_NODES, nodes)]
        fakenodes.ensure_nodes(cluster, extra, timeout=300)
        install_crd(cluster.kubectl)
        create_namespace(cluster.kubectl, "bench", exist_ok=True)
        recorder = Recorder(cluster.kubeconfig, "bench")
        recorder.delete_jobs()
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "device_plugin_delay_s": controlplane.device_plugin_status(args.cluster)["delay"],
            "rank_table_compute": bench_rank_table(),
        }
        results["single_job"], results["single_job_operator"] = with_operator(
            cluster.kubeconfig, workdir, "single", lambda: bench_single_job(recorder, args.runs)
        )
        recorder.delete_jobs()
        results["wave"], results["wave_operator"] = with_operator(
            cluster.kubeconfig, workdir, "wave", lambda: bench_wave(recorder, args.jobs, 2)
        )
        recorder.delete_jobs()
        results["big_job"], results["big_job_operator"] = with_operator(
            cluster.kubeconfig, workdir, "big", lambda: bench_wave(recorder, 1, args.big_replicas)
        )
        recorder.delete_jobs()
    finally:
        if not args.keep_cluster:
            localcluster.stop(args.cluster)
    args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    rows = [
        (
            "rank table, 1024 ranks (compute)",
            f"{r['rank_table_compute']['1024']['p50_ms']:.2f} ms p50",
            "< 50 ms (4096)",
        ),
        (
            "rank table, 4096 ranks (compute)",
            f"{r['rank_table_compute']['4096']['p50_ms']:.2f} ms p50",
            "< 50 ms",
        ),
    ]
    delay = r.get("device_plugin_delay_s")
    for key, label, target in (
        ("create_to_all_pods", "2x8 job: create -> all pods", ""),
        ("last_ready_to_table", "last pod ready -> table completed (with the plugin)",
         f"plugin delay ({delay} s) + 100 ms"),
        ("ready_to_annotation", "  pod ready -> device plugin annotation", f"~ {delay} s"),
        ("last_annotation_to_table", "  last annotation -> table completed", "< 100 ms p50"),
        ("failure_to_new_gang", "pod failure -> new gang created", ""),
    ):  # fmt: skip
        s = r["single_job"][key]
        rows.append((label, f"{s['p50_ms']:.0f} ms p50, {s['p95_ms']:.0f} ms p95", target))
    w = r["wave"]
    rows.append((f"{w['jobs']} x 2x8 jobs: all pods", f"{w['all_pods_s']:.2f} s", ""))
    rows.append(
        (f"{w['jobs']} x 2x8 jobs: all tables completed", f"{w['all_tables_s']:.2f} s", "< 30 s")
    )
    b = r["big_job"]
    rows.append((f"1 x {b['ranks_per_job']}-rank job: all pods", f"{b['all_pods_s']:.2f} s", ""))
    rows.append(
        (f"1 x {b['ranks_per_job']}-rank job: table completed", f"{b['all_tables_s']:.2f} s", "")
    )
    for key, label in (
        ("single_job_operator", "single-job runs"),
        ("wave_operator", "wave"),
        ("big_job_operator", "big job"),
    ):
        o = r[key]
        rows.append((f"operator during {label}", f"{o['peak_rss_mib']:.0f} MiB peak RSS, {o['cpu_s']:.1f} s CPU, "
                     f"{o.get('requests_per_job', float('nan')):.1f} API requests/job", "RSS < 200 MiB"))  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    print(f"\n{'measure':<{width}}  {'result':<52}  target")
    for a, b_, c in rows:
        print(f"{a:<{width}}  {b_:<52}  {c}")


if __name__ == "__main__":
    sys.exit(main())

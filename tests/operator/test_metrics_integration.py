"""The running operator's /metrics, scraped during real jobs on the local cluster: each counter
moves exactly as often as its event happened, by namespace, device type and cause."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.conftest import Jobs, OperatorProcess, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration

PROMTOOL_VERSION = "v0.316.0"  # Prometheus 3.x's Go module version
PROMTOOL_CACHE = Path.home() / ".cache" / "densenet-operator" / f"promtool-{PROMTOOL_VERSION}"
PROMETHEUS_CACHE = PROMTOOL_CACHE.with_name(f"prometheus-{PROMTOOL_VERSION}")


def scrape_text(operator: OperatorProcess) -> str:
    with urllib.request.urlopen(operator.metrics_url, timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def scrape(operator: OperatorProcess) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(scrape_text(operator))}


def sample(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels (0 when absent: a counter that
    never moved has no series)."""
    family = families.get(name.removesuffix("_total").removesuffix("_count"))
    found = (
        [s.value for s in family.samples if s.name == name and s.labels == labels] if family else []
    )
    assert len(found) <= 1, f"{name}{labels}: {found}"
    return found[0] if found else 0.0


def end_pod(jobs: Jobs, name: str, phase: str, exit_code: int) -> None:
    """The job's running pod ends as its kubelet would say (after its rank table completed)."""
    jobs.wait_phase(name, "Running")
    jobs.wait_rank_table(name)
    (pod,) = jobs.wait_running_pods(name, 1)
    jobs.set_pod_phase(pod["metadata"]["name"], phase, exit_code=exit_code)


def report_training(jobs: Jobs, name: str, report: dict[str, Any]) -> None:
    """What the trainer's rank 0 writes (densenet_trainer/progress.py), as a status patch."""
    jobs.kubectl("patch", "dnt", name, "-n", jobs.namespace, "--subresource=status",
                 "--type=merge", "-p", json.dumps({"status": {"training": report}}))  # fmt: skip


def test_a_scrape_shows_exactly_what_happened_to_the_jobs(
    jobs: Jobs, operator: OperatorProcess
) -> None:
    ns = jobs.namespace
    before = scrape(operator)
    for name in ("ok", "bad", "again"):
        jobs.kubectl.apply(small_job(name, replicas=1), "-n", ns)
    end_pod(jobs, "ok", "Succeeded", 0)
    end_pod(jobs, "bad", "Failed", 1)  # the user's code: permanent
    end_pod(jobs, "again", "Failed", 137)  # killed: retryable, a failure
    wait_for(lambda: jobs.status("again").get("restarts") == 1, timeout=60, what="restart 1")
    end_pod(jobs, "again", "Failed", 75)  # the trainer's graceful stop: a disruption
    wait_for(lambda: jobs.status("again").get("restarts") == 2, timeout=60, what="restart 2")
    jobs.wait_phase("ok", "Succeeded")
    jobs.wait_phase("bad", "Failed")
    jobs.wait_phase("again", "Running", timeout=60)
    jobs.wait_rank_table("again")
    jobs.kubectl("delete", "dnt", "bad", "-n", ns)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = {"activity": "training", "epoch": 2, "step": 40, "fps": 321.5, "acc1": 12.5,
              "progress": 33.3, "updated": now}  # fmt: skip
    report_training(jobs, "again", report)

    again = {"job_namespace": ns, "job_name": "again"}

    def settled() -> dict[str, Metric] | None:
        families = scrape(operator)
        gone = sample(families, "densenet_operator_jobs", job_namespace=ns, device_type="ascend",
                      phase="Failed") == 0  # fmt: skip
        reported = sample(families, "densenet_operator_job_training_fps", **again) > 0
        return families if gone and reported else None

    after = wait_for(settled, timeout=30, what="the deletion and the report in a scrape")
    status = jobs.status("again")["training"]
    job = {"job_namespace": ns, "device_type": "ascend"}
    counted = {
        name: sample(after, f"densenet_operator_jobs_{name}_total", **job)
        for name in ("created", "successful", "failed", "deleted")
    }
    assert counted == {"created": 3, "successful": 1, "failed": 1, "deleted": 1}
    restarts = "densenet_operator_jobs_restarted_total"
    assert sample(after, restarts, **job, cause="failure") == 1
    assert sample(after, restarts, **job, cause="disruption") == 1
    phases = {s.labels["phase"]: s.value for s in after["densenet_operator_jobs"].samples
              if s.labels["job_namespace"] == ns}  # fmt: skip
    assert phases == {"Pending": 0, "Queued": 0, "Running": 1, "Restarting": 0,
                      "Suspended": 0, "Succeeded": 1, "Failed": 0}  # fmt: skip
    # The running job's figures are those of its status.
    assert sample(after, "densenet_operator_job_training_fps", **again) == status["fps"]
    assert sample(after, "densenet_operator_job_training_epoch", **again) == status["epoch"]
    assert sample(after, "densenet_operator_job_training_acc1_percent", **again) == status["acc1"]
    assert (
        sample(after, "densenet_operator_job_training_progress_percent", **again)
        == (status["progress"])
    )
    assert not [s for f in after.values() for s in f.samples
                if s.labels.get("job_namespace") == ns and s.labels.get("job_name") == "bad"]  # fmt: skip
    # Every pass was timed; five gangs (ok, bad, again x3) each had their rank table completed.
    histogram = "densenet_operator_reconcile_duration_seconds_count"
    assert sample(after, histogram) > sample(before, histogram)
    tables = "densenet_operator_rank_table_completed_seconds_count"
    assert sample(after, tables) - sample(before, tables) >= 5
    requests = "densenet_operator_api_requests_total"
    assert sample(after, requests, verb="create", resource="pods", code="201") >= 5


def promtool() -> str | None:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    cached = PROMTOOL_CACHE / "promtool"
    return found or (str(cached) if cached.exists() else None)


def test_the_scrape_passes_promtool_check_metrics(jobs: Jobs, operator: OperatorProcess) -> None:
    """Prometheus' own linter (names, suffixes, units, help) over a scrape with every family."""
    tool = promtool()
    if tool is None:
        # Without service discovery (remove_all_sd), which `check metrics` never uses, the
        # build skips the cloud SDKs: minutes instead of half an hour.
        pytest.skip(f"promtool not built: GOBIN={PROMTOOL_CACHE} go install -tags remove_all_sd "
                    f"github.com/prometheus/prometheus/cmd/promtool@{PROMTOOL_VERSION}")  # fmt: skip
    jobs.kubectl.apply(small_job("linted", replicas=1), "-n", jobs.namespace)
    jobs.wait_phase("linted", "Running")
    report_training(jobs, "linted", {"epoch": 1, "fps": 10.0, "acc1": 1.0, "progress": 5.0})
    linted = {"job_namespace": jobs.namespace, "job_name": "linted"}
    wait_for(lambda: sample(scrape(operator), "densenet_operator_job_training_fps", **linted),
             timeout=30, what="the report in a scrape")  # fmt: skip
    checked = subprocess.run([tool, "check", "metrics"], input=scrape_text(operator),
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_ready(port: int, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, f"prometheus exited with {server.returncode}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def query(port: int, promql: str) -> dict[str, float]:
    """An instant PromQL query against Prometheus' HTTP API: each series' `job` label (the
    scrape's) -> value."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer = json.load(reply)
    assert answer["status"] == "success", answer
    return {r["metric"].get("job", ""): float(r["value"][1]) for r in answer["data"]["result"]}


def test_a_real_prometheus_scrapes_the_operator(
    jobs: Jobs, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Prometheus itself (built from its Go module, without service discovery) scrapes the
    operator every second, negotiating the exposition format as it does in a cluster."""
    binary = PROMETHEUS_CACHE / "prometheus"
    if not binary.exists():
        pytest.skip(f"prometheus not built: GOBIN={PROMETHEUS_CACHE} go install -tags "
                    f"remove_all_sd github.com/prometheus/prometheus/cmd/prometheus@{PROMTOOL_VERSION}")  # fmt: skip
    ns = jobs.namespace
    jobs.kubectl.apply(small_job("watched", replicas=1), "-n", ns)
    jobs.wait_phase("watched", "Running")
    report_training(jobs, "watched", {"epoch": 1, "fps": 42.5})
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "densenet-operator",
                                  "static_configs": [{"targets": [f"127.0.0.1:{operator.port}"]}]}]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [str(binary), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: prometheus_ready(port, server), timeout=60,
                 what=f"Prometheus to start (log: {tmp_path / 'prometheus.log'})")  # fmt: skip
        selector = f'{{job_namespace="{ns}"}}'
        created = f"densenet_operator_jobs_created_total{selector}"
        wait_for(lambda: query(port, created) == {"densenet-operator": 1.0}, timeout=60,
                 what=f"Prometheus to scrape the job's creation (log: {tmp_path / 'prometheus.log'})")  # fmt: skip
        assert query(port, 'up{job="densenet-operator"}') == {"densenet-operator": 1.0}
        running = f'densenet_operator_jobs{{job_namespace="{ns}", phase="Running"}}'
        assert query(port, running) == {"densenet-operator": 1.0}
        fps = wait_for(lambda: query(port, f"densenet_operator_job_training_fps{selector}"),
                       timeout=30, what="the job's fps in Prometheus")  # fmt: skip
        assert fps == {"densenet-operator": 42.5}
    finally:
        server.terminate()
        server.wait(timeout=30)

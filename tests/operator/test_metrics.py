"""The operator's metrics (operator/densenet_operator/metrics.py): what each event counts, what
a scrape shows, and the counting rule (a transition is decided once, by the pass that writes it)."""

from __future__ import annotations

import datetime as dt
import socket
import urllib.request
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from densenet_operator import cli, lifecycle
from densenet_operator.ascend import ranktable
from densenet_operator.metrics import CountedApiClient, Metrics, api_request_labels, serve
from densenet_operator.podrecord import PodRecord
from densenet_operator.status import format_time
from tests.operator.factories import make_job, make_pod

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
INITIALIZING = ranktable.dumps(ranktable.initializing_table())


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def job_body(name: str, namespace: str = "team-a", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"device": {"type": "cpu"}},
        "status": status,
    }


def scrape(metrics: Metrics) -> dict[str, Any]:
    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


# ------------------------------------------------------------------ labels of API requests


@pytest.mark.parametrize(
    ("method", "url", "labels"),
    [
        ("POST", "https://10.0.0.1:6443/api/v1/namespaces/a/pods", ("create", "pods")),
        ("GET", "https://h/api/v1/namespaces/a/pods/dn-worker-0", ("get", "pods")),
        ("GET", "https://h/api/v1/namespaces/a/pods?labelSelector=x", ("list", "pods")),
        ("DELETE", "https://h/api/v1/namespaces/a/pods/p", ("delete", "pods")),
        ("PATCH", "https://h/api/v1/namespaces/a/configmaps/rings-config-x", ("patch", "configmaps")),
        ("PATCH", "https://h/apis/training.densenet.dev/v1alpha1/namespaces/a/densenettrainings/j/status",
         ("patch", "densenettrainings/status")),
        ("POST", "https://h/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
         ("create", "rolebindings")),
        ("GET", "https://h/api/v1/namespaces/a", ("get", "namespaces")),
        ("GET", "https://h/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
         ("list", "customresourcedefinitions")),
        ("PUT", "https://h/api/v1/nodes/n1/status", ("update", "nodes/status")),
        ("GET", "https://h/version", ("get", "unknown")),
    ],
)  # fmt: skip
def test_api_requests_are_labelled_by_verb_and_resource_never_by_name(
    method: str, url: str, labels: tuple[str, str]
) -> None:
    assert api_request_labels(method, url) == labels


# ------------------------------------------------------------------ the job counters


def test_each_written_transition_moves_its_counter_once() -> None:
    metrics = Metrics()
    metrics.pass_written("a", "cpu", first=True, finished=None, restart_cause=None)
    metrics.pass_written("a", "cpu", first=False, finished=None, restart_cause="failure")
    metrics.pass_written("a", "cpu", first=False, finished=None, restart_cause="disruption")
    metrics.pass_written("a", "cpu", first=False, finished=None, restart_cause="disruption")
    metrics.pass_written("a", "cpu", first=False, finished="Succeeded", restart_cause=None)
    metrics.pass_written("b", "ascend", first=True, finished="Failed", restart_cause=None)
    metrics.pass_written("b", "bogus", first=False, finished=None, restart_cause=None)
    a, b = (
        {"job_namespace": "a", "device_type": "cpu"},
        {"job_namespace": "b", "device_type": "ascend"},
    )
    assert value(metrics, "densenet_operator_jobs_created_total", **a) == 1
    assert value(metrics, "densenet_operator_jobs_successful_total", **a) == 1
    assert value(metrics, "densenet_operator_jobs_failed_total", **a) is None
    assert value(metrics, "densenet_operator_jobs_restarted_total", **a, cause="failure") == 1
    assert value(metrics, "densenet_operator_jobs_restarted_total", **a, cause="disruption") == 2
    assert value(metrics, "densenet_operator_jobs_created_total", **b) == 1
    assert value(metrics, "densenet_operator_jobs_failed_total", **b) == 1
    metrics.job_deleted(job_body("x", "b") | {"spec": {}})  # device type defaults to ascend
    assert value(metrics, "densenet_operator_jobs_deleted_total", **b) == 1


def passes(job: Any, pods_by_pass: list[list[dict[str, Any]]]) -> list[lifecycle.Plan]:
    """Consecutive passes, each planning from the status the one before wrote."""
    status: dict[str, Any] = {}
    plans = []
    for pods in pods_by_pass:
        result = lifecycle.plan(job, status, [PodRecord.from_pod(p) for p in pods], NOW,
                                INITIALIZING)  # fmt: skip
        plans.append(result)
        status = result.status
    return plans


def decided(plans: list[lifecycle.Plan]) -> list[tuple[bool, str | None, str | None]]:
    return [(p.first, p.finished, p.restart_cause) for p in plans]


def test_a_pass_decides_each_transition_once_and_the_next_pass_finds_it_done() -> None:
    job = make_job(replicas=1, runPolicy={"backoffLimit": 3})
    crashed = [make_pod(0, phase="Failed", exit_code=137)]
    stopped = [make_pod(0, phase="Failed", exit_code=75, gang=1)]
    done = [make_pod(0, phase="Succeeded", exit_code=0, gang=2)]
    plans = passes(job, [[], [make_pod(0)], crashed, crashed, stopped, stopped, done, done])
    assert decided(plans) == [
        (True, None, None),  # the job's first phase
        (False, None, None),
        (False, None, "failure"),  # exit 137: retryable, counted against backoffLimit
        (False, None, None),  # the same failed pod, seen again: already restarted
        (False, None, "disruption"),  # exit 75: stopped on request
        (False, None, None),
        (False, "Succeeded", None),
        (False, None, None),  # finished jobs never finish again
    ]


def test_a_permanent_failure_is_counted_as_failed_not_restarted() -> None:
    job = make_job(replicas=1)
    plans = passes(job, [[], [make_pod(0, phase="Failed", exit_code=1)], []])
    assert decided(plans) == [(True, None, None), (False, "Failed", None), (False, None, None)]


# ------------------------------------------------------------------ jobs by phase, training


def test_jobs_by_phase_and_training_gauges_come_from_the_served_jobs() -> None:
    metrics = Metrics()
    updated = "2026-11-22T12:00:00Z"
    jobs = [
        job_body("fast", phase="Running", training={"fps": 812.5, "epoch": 3, "acc1": 71.2,
                                                      "progress": 40.0, "updated": updated}),
        job_body("new"),
        job_body("done", phase="Succeeded", training={"fps": "fast", "epoch": True,
                                                      "acc1": float("nan"), "progress": 10**400,
                                                      "updated": "never"}),
        job_body("forged", "team-b", phase="Exploded"),
    ]  # fmt: skip
    metrics.serve_jobs(lambda: jobs)
    families = scrape(metrics)
    phases = {
        (s.labels["job_namespace"], s.labels["phase"]): s.value
        for s in families["densenet_operator_jobs"].samples
    }
    assert phases[("team-a", "Running")] == 1
    assert phases[("team-a", "Pending")] == 1  # no phase yet
    assert phases[("team-a", "Succeeded")] == 1
    assert phases[("team-a", "Failed")] == 0
    assert phases[("team-b", "unknown")] == 1 and ("team-a", "unknown") not in phases
    fast = {"job_namespace": "team-a", "job_name": "fast"}
    assert value(metrics, "densenet_operator_job_training_fps", **fast) == 812.5
    assert value(metrics, "densenet_operator_job_training_epoch", **fast) == 3
    assert value(metrics, "densenet_operator_job_training_acc1_percent", **fast) == 71.2
    assert value(metrics, "densenet_operator_job_training_progress_percent", **fast) == 40.0
    assert value(metrics, "densenet_operator_job_training_updated_timestamp_seconds", **fast) == (
        dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC).timestamp()
    )
    # The trainer's word is not trusted: strings, booleans, NaN and bad times are not shown.
    training_samples = [
        s for name, f in families.items() if name.startswith("densenet_operator_job_")
        for s in f.samples
    ]  # fmt: skip
    assert {s.labels["job_name"] for s in training_samples} == {"fast"}
    jobs.pop(0)  # the job went away: its series go with it
    assert value(metrics, "densenet_operator_job_training_fps", **fast) is None


# ------------------------------------------------------------------ durations


def test_rank_table_time_to_completed_is_observed_when_it_completes() -> None:
    metrics = Metrics()
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=42)
    status = {"startTime": format_time(started)}
    completed = ranktable.dumps({"status": ranktable.COMPLETED})
    metrics.rank_table_written(None, INITIALIZING, status)  # initializing: nothing
    metrics.rank_table_written(INITIALIZING, completed, status)
    metrics.rank_table_written(completed, completed, status)  # already completed: nothing
    count = value(metrics, "densenet_operator_rank_table_completed_seconds_count")
    total = value(metrics, "densenet_operator_rank_table_completed_seconds_sum")
    assert count == 1 and total is not None and 41 <= total <= 60
    # A restarted gang counts from its restart.
    restarted = {**status, "lastRestartTime": format_time(dt.datetime.now(dt.UTC))}
    metrics.rank_table_written(INITIALIZING, completed, restarted)
    assert value(metrics, "densenet_operator_rank_table_completed_seconds_count") == 2
    assert value(metrics, "densenet_operator_rank_table_completed_seconds_sum") <= total + 5


def test_reconcile_passes_are_timed_and_errors_counted() -> None:
    metrics = Metrics()
    with metrics.reconciling():
        pass
    with pytest.raises(RuntimeError), metrics.reconciling():
        raise RuntimeError("the API server is gone")
    assert value(metrics, "densenet_operator_reconcile_duration_seconds_count") == 2
    assert value(metrics, "densenet_operator_reconcile_errors_total") == 1


# ------------------------------------------------------------------ exposition and serving


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics()
    metrics.pass_written("a", "cuda", first=True, finished=None, restart_cause=None)
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    (sample,) = [s for s in families["densenet_operator_jobs_created"].samples
                 if s.name.endswith("_total")]  # fmt: skip
    assert sample.labels == {"job_namespace": "a", "device_type": "cuda"} and sample.value == 1


def test_process_metrics_are_added_for_the_operator() -> None:
    names = set(scrape(Metrics().with_process_metrics()))
    assert {"process_resident_memory_bytes", "python_info"} <= names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read().decode()


@pytest.mark.asyncio
async def test_the_server_answers_metrics_and_a_shared_liveness_path() -> None:
    import asyncio

    metrics = Metrics()
    metrics.pass_written("a", "cpu", first=True, finished=None, restart_cause=None)
    metrics.serve_jobs(lambda: [job_body("fast", phase="Running", training={"fps": 5.5})])
    port = free_port()
    runner = await serve(f"http://127.0.0.1:{port}/metrics", metrics, "/healthz")
    try:
        status, content_type, text = await asyncio.to_thread(
            fetch, f"http://127.0.0.1:{port}/metrics"
        )
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["densenet_operator_jobs_created"].samples[0].value == 1
        (fps,) = families["densenet_operator_job_training_fps"].samples
        assert fps.labels == {"job_namespace": "team-a", "job_name": "fast"} and fps.value == 5.5
        assert await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/healthz") == (
            200, "application/json; charset=utf-8", "{}",
        )  # fmt: skip
    finally:
        await runner.cleanup()


def test_a_metrics_address_must_name_a_port() -> None:
    import asyncio

    with pytest.raises(ValueError, match="expected http://HOST:PORT/PATH"):
        asyncio.run(serve("http://0.0.0.0/metrics", Metrics()))


@pytest.mark.asyncio
async def test_the_api_client_counts_each_request_with_its_reply_code() -> None:
    """A real HTTP exchange with a stand-in API server (aiohttp): 404 for one pod, 201 for a
    created ConfigMap."""

    async def missing(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 404}, status=404)

    async def created(request: web.Request) -> web.Response:
        return web.json_response(await request.json(), status=201)

    app = web.Application()
    app.add_routes([web.get("/api/v1/namespaces/{ns}/pods/{name}", missing),
                    web.post("/api/v1/namespaces/{ns}/configmaps", created)])  # fmt: skip
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    api = CountedApiClient(configuration)
    api.metrics = metrics = Metrics()
    try:
        core = client.CoreV1Api(api)
        reply = await core.read_namespaced_pod("p", "a", _preload_content=False)
        assert reply.status == 404
        await core.create_namespaced_config_map("a", {"metadata": {"name": "c"}})
    finally:
        await api.close()
        await runner.cleanup()
    requests = "densenet_operator_api_requests_total"
    assert value(metrics, requests, verb="get", resource="pods", code="404") == 1
    assert value(metrics, requests, verb="create", resource="configmaps", code="201") == 1


@pytest.mark.parametrize(
    ("liveness", "scraped", "expected"),
    [
        ("http://0.0.0.0:8080/healthz", "http://0.0.0.0:8080/metrics", (None, "/healthz")),
        ("http://0.0.0.0:8080/healthz", "http://0.0.0.0:9090/metrics",
         ("http://0.0.0.0:8080/healthz", None)),
        ("http://0.0.0.0:8080/healthz", None, ("http://0.0.0.0:8080/healthz", None)),
        (None, "http://0.0.0.0:8080/metrics", (None, None)),
    ],
)  # fmt: skip
def test_liveness_and_metrics_on_one_port_share_one_server(
    liveness: str | None, scraped: str | None, expected: tuple[str | None, str | None]
) -> None:
    assert cli.http_endpoints(liveness, scraped) == expected

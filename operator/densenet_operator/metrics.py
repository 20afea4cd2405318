"""The operator's Prometheus metrics, served at /metrics on its HTTP port.

Job counters are named after Kubeflow training-operator's (`training_operator_jobs_*_total`)
with this operator's prefix, labelled by the job's namespace and device type. The jobs by phase
and each job's training figures (`status.training`) are read at scrape time from the jobs the
operator serves, so a deleted job's series go with it.

Counting rule: each event once. A job counter moves only when the operator's own write of the
transition has succeeded: created (the job's first phase), succeeded, failed and restarted when
the status that carries them is written by the pass that decided them; later passes, of this
process or of one started after it, plan from that status and find the transition done. Deleted
moves when the watch reports the deletion of a job this process served. With peering only the
active replica acts, so only its counters move (sum over the replicas). Counters live in the
process: they start at 0 after a restart (rate() and increase() expect that), and a transition
written just before a crash is not counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from densenet_contract import DEVICE_TYPES
from densenet_operator.ascend import ranktable
from densenet_operator.podrecord import PENDING
from densenet_operator.spec import Device
from densenet_operator.status import FAILED, PHASE_CONDITIONS, SUCCEEDED, parse_time

PREFIX = "densenet_operator"
# `job_namespace` as Kubeflow's, and `job_name` as kube-state-metrics' for a Job: Prometheus
# gives every series `job` (the scrape's) and, in Kubernetes, `namespace` (the operator's pod's)
# labels of its own, and would rename labels of those names to exported_job/exported_namespace.
JOB_LABELS = ("job_namespace", "device_type")
JOB_NAME_LABELS = ["job_namespace", "job_name"]
UNKNOWN = "unknown"  # a label value the operator does not know (bounded label sets)
FAILURE, DISRUPTION = "failure", "disruption"  # the causes of a gang restart
RANK_TABLE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# The trainer's report (status.training) -> (gauge suffix, help); only finite numbers are shown.
TRAINING_GAUGES = {
    "fps": ("job_training_fps", "Training speed in images per second (status.training.fps)"),
    "epoch": ("job_training_epoch", "Current epoch (status.training.epoch)"),
    "acc1": ("job_training_acc1_percent", "Top-1 accuracy in percent (status.training.acc1)"),
    "progress": ("job_training_progress_percent",
                 "Share of the planned steps done, in percent (status.training.progress)"),
}  # fmt: skip
# Verbs by HTTP method, as the API server's audit log names them.
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
JobSource = Callable[[], Iterable[Mapping[str, Any]]]
# No `<counter>_created` series: they double the series a scrape stores and say only when the
# process started.
disable_created_metrics()


DEFAULT_DEVICE = Device()  # what an unset spec.device means


def device_type_of(body: Mapping[str, Any]) -> str:
    """A job's spec.device.type as a label value (the spec model's default when unset)."""
    device = ((body.get("spec") or {}).get("device") or {}).get("type", DEFAULT_DEVICE.type)
    return device if device in DEVICE_TYPES else UNKNOWN


def phase_of(body: Mapping[str, Any]) -> str:
    phase = (body.get("status") or {}).get("phase") or PENDING
    return phase if phase in PHASE_CONDITIONS else UNKNOWN


def api_request_labels(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a Kubernetes API request, e.g. ("patch", "densenettrainings/status").

    The resource is the path segment after the version (and after namespaces/<ns>), with its
    subresource; names never become label values."""
    path = re.sub(r"^[a-z]+://[^/]+", "", url).split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    start = {"api": 2, "apis": 3}.get(parts[0], len(parts)) if parts else 0
    rest = parts[start:]
    if len(rest) >= 3 and rest[0] == "namespaces":  # namespaced; "namespaces/<ns>" is one
        rest = rest[2:]
    if not rest:
        return VERBS.get(method, method.lower()), UNKNOWN
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if method == "GET":
        return ("get" if len(rest) > 1 else "list"), resource
    return VERBS.get(method, method.lower()), resource


def _finite(value: Any) -> float | None:
    """A number the trainer reported, or None (a string, a bool, NaN, 10**400: not shown)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


class JobsCollector(Collector):
    """Jobs by phase and each job's training figures, from the jobs the operator serves now."""

    def __init__(self, source: JobSource) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily(f"{PREFIX}_jobs", "DenseNetTrainings the operator serves, "
                                     "by phase", labels=[*JOB_LABELS, "phase"])  # fmt: skip
        training = [GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=JOB_NAME_LABELS)
                    for name, text in TRAINING_GAUGES.values()]  # fmt: skip
        updated = GaugeMetricFamily(
            f"{PREFIX}_job_training_updated_timestamp_seconds",
            "When the trainer last reported (status.training.updated), in Unix seconds: "
            "time() minus this is the age of the figures above",
            labels=JOB_NAME_LABELS,
        )
        return [by_phase, *training, updated]

    def collect(self) -> Iterable[Metric]:
        by_phase, *training, updated = families = self._families()
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for body in self.source():
            meta = body.get("metadata") or {}
            namespace, name = meta.get("namespace", ""), meta.get("name", "")
            phases = counts.setdefault((namespace, device_type_of(body)), {})
            phases[phase_of(body)] = phases.get(phase_of(body), 0) + 1
            report = (body.get("status") or {}).get("training") or {}
            if not isinstance(report, Mapping):
                continue
            for family, field in zip(training, TRAINING_GAUGES, strict=True):
                if (value := _finite(report.get(field))) is not None:
                    family.add_metric([namespace, name], value)
            if isinstance(report.get("updated"), str):
                try:
                    moment = parse_time(report["updated"])
                except ValueError:
                    moment = None
                if moment is not None:  # a time without a zone is UTC, as the trainer writes
                    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
                    updated.add_metric([namespace, name], moment.timestamp())
        for (namespace, device), phases in sorted(counts.items()):
            for phase in (*PHASE_CONDITIONS, *((UNKNOWN,) if UNKNOWN in phases else ())):
                by_phase.add_metric([namespace, device, phase], phases.get(phase, 0))
        return families


class Metrics:
    """Every metric of the operator, in a registry of its own (tests make fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._jobs: JobSource = tuple
        self._snapshot: list[Mapping[str, Any]] | None = None  # the jobs a scrape shows
        self._scraping = threading.Lock()

        def counter(name: str, text: str, labels: Iterable[str] = JOB_LABELS) -> Counter:
            return Counter(name, text, list(labels), namespace=PREFIX, registry=self.registry)

        self.jobs_created = counter("jobs_created", "Jobs the operator started serving")
        self.jobs_successful = counter("jobs_successful", "Jobs that succeeded")
        self.jobs_failed = counter("jobs_failed", "Jobs that failed")
        self.jobs_deleted = counter("jobs_deleted", "Jobs deleted while the operator served them")
        self.jobs_restarted = counter(
            "jobs_restarted",
            "Gang restarts, by cause: failure (counts against backoffLimit) or disruption",
            [*JOB_LABELS, "cause"],
        )
        self.reconcile_errors = counter(
            "reconcile_errors", "Passes over a job that raised (retried with backoff)", ()
        )
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds", "Duration of one pass over one job",
            namespace=PREFIX, registry=self.registry,
        )  # fmt: skip
        self.rank_table_duration = Histogram(
            "rank_table_completed_seconds",
            "From a gang's creation to its completed rank table being published",
            namespace=PREFIX, registry=self.registry, buckets=RANK_TABLE_BUCKETS,
        )  # fmt: skip
        self.api_requests = counter(
            "api_requests", "Requests of the operator's Kubernetes client, by verb, resource "
            "and HTTP status code", ("verb", "resource", "code"),
        )  # fmt: skip
        self.registry.register(JobsCollector(self._served_jobs))

    def with_process_metrics(self) -> Metrics:
        """Adds the process, platform and garbage-collector metrics of prometheus_client."""
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        return self

    def _served_jobs(self) -> Iterable[Mapping[str, Any]]:
        return self._snapshot if self._snapshot is not None else self._jobs()

    def serve_jobs(self, source: JobSource) -> None:
        """Where the jobs the operator serves are read from at each scrape (their bodies)."""
        self._jobs = source

    # ---- the counting rule's events (see the module's docstring)

    def pass_written(
        self, namespace: str, device_type: str, *, first: bool, finished: str | None,
        restart_cause: str | None,
    ) -> None:  # fmt: skip
        """A pass's status was written: the job's `first` phase, a finish, a gang restart."""
        labels = (namespace, device_type if device_type in DEVICE_TYPES else UNKNOWN)
        if first:
            self.jobs_created.labels(*labels).inc()
        if finished == SUCCEEDED:
            self.jobs_successful.labels(*labels).inc()
        elif finished == FAILED:
            self.jobs_failed.labels(*labels).inc()
        if restart_cause is not None:
            self.jobs_restarted.labels(*labels, restart_cause).inc()

    def job_deleted(self, body: Mapping[str, Any]) -> None:
        namespace = (body.get("metadata") or {}).get("namespace", "")
        self.jobs_deleted.labels(namespace, device_type_of(body)).inc()

    def rank_table_written(
        self, previous: str | None, table: str, status: Mapping[str, Any]
    ) -> None:
        """A rank table was published: the time to completion, when it just completed."""
        completed = ranktable.COMPLETED
        if ranktable.table_status(table) != completed or (
            ranktable.table_status(previous) == completed
        ):
            return
        gang_start = parse_time(status.get("lastRestartTime")) or parse_time(
            status.get("startTime")
        )
        if gang_start is not None:
            elapsed = (dt.datetime.now(dt.UTC) - gang_start).total_seconds()
            self.rank_table_duration.observe(max(elapsed, 0.0))

    @contextmanager
    def reconciling(self) -> Iterator[None]:
        """Times one pass; counts it as an error when it raises."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.reconcile_errors.inc()
            raise
        finally:
            self.reconcile_duration.observe(time.perf_counter() - started)

    def api_request(self, method: str, url: str, code: int | str) -> None:
        self.api_requests.labels(*api_request_labels(method, url), str(code)).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """exposition() in a worker thread, so that a large scrape (about 0.1 s per thousand
        jobs) never holds up the operator's event loop; the jobs are read here, in the loop
        that changes them."""
        jobs = list(self._jobs())

        def expose() -> tuple[bytes, str]:
            with self._scraping:
                self._snapshot = jobs
                try:
                    return self.exposition(accept)
                finally:
                    self._snapshot = None

        return await asyncio.to_thread(expose)


METRICS = Metrics().with_process_metrics()  # the operator process's (tests make their own)


class CountedApiClient(client.ApiClient):  # type: ignore[misc]
    """The operator's Kubernetes client, counting every request it makes in `metrics`."""

    metrics: Metrics = METRICS

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().request(method, url, *args, **kwargs)
        except ApiException as error:
            self.metrics.api_request(method, url, error.status or "error")
            raise
        except Exception:
            self.metrics.api_request(method, url, "error")  # no reply: connection, timeout
            raise
        self.metrics.api_request(method, url, response.status)
        return response


async def serve(url: str, metrics: Metrics, liveness_path: str | None = None) -> web.AppRunner:
    """An HTTP server answering `url`'s path with the metrics, and `liveness_path` (when the
    liveness probe shares the port) with kopf's answer when it has no probe handlers: `{}`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.port is None:
        raise ValueError(f"metrics address {url!r}: expected http://HOST:PORT/PATH")

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = await metrics.scrape(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.get(parts.path or "/metrics", scrape)])
    if liveness_path:
        app.add_routes([web.get(liveness_path, alive)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port).start()
    return runner

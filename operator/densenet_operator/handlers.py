"""kopf handlers: thin. They gather inputs and hand them to the per-job tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf

from densenet_contract import GROUP, PLURAL, VERSION
from densenet_operator import backends, naming
from densenet_operator.apiclient import build_api_client
from densenet_operator.children import job_owner
from densenet_operator.diffbase import NoDiffBase
from densenet_operator.jobtasks import JobTasks, Key
from densenet_operator.lifecycle import Event
from densenet_operator.metrics import METRICS, serve
from densenet_operator.podrecord import PodRecord
from densenet_operator.reconcile import Reconciler
from densenet_operator.settings import TrainerDefaults

# The children the operator watches for deletion (pods have handlers of their own).
CHILD_RESOURCES = (
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("", "v1", "configmaps"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("networking.k8s.io", "v1", "networkpolicies"),
)
log = logging.getLogger(__name__)


def _record(body: Mapping[str, Any], event: Event) -> None:
    # kopf only reads the body's apiVersion, kind and metadata to address the event.
    kopf.event(
        cast(kopf.Body, dict(body)), type=event.type, reason=event.reason, message=event.message
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.INFO  # every transition becomes a Kubernetes Event
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.diffbase_storage = NoDiffBase()  # events only: see diffbase.py
    api = await build_api_client(trust_env=settings.networking.trust_env)
    defaults = TrainerDefaults.from_env(os.environ)
    log.info("%s", defaults.describe())  # which image pair each product gets, for a first run
    reconciler = Reconciler(api=api, defaults=defaults, record=_record)
    served = await reconciler.discover_gangs()
    log.info("gang: auto means %s (served: %s)", reconciler.defaults.auto_gangs or "none",
             ", ".join(sorted(served)) or "no gang API")  # fmt: skip

    async def run_pass(key: Key, body: Mapping[str, Any]) -> tuple[Any, float | None]:
        try:
            with METRICS.reconciling():
                return await reconciler.reconcile(body, list(indices["pods"].get(key, ())))
        except Exception as error:
            # Visible in `kubectl describe dnt`, not only in the operator's log; retried.
            _record(body, Event("Warning", "ReconcileError", str(error)[:1024]))
            raise

    # Each object's handlers get a shallow copy of this memo: share the index through a dict.
    indices: dict[str, Any] = {"pods": {}}
    memo.api = api
    memo.reconciler = reconciler
    memo.job_tasks = job_tasks = JobTasks(run_pass)
    memo.indices = indices
    METRICS.serve_jobs(lambda: [task.body for task in job_tasks.tasks.values()])
    memo.http = None
    if memo.get("metrics_url"):  # from `densenet-operator run --metrics URL`
        memo.http = await serve(memo.metrics_url, METRICS, memo.get("liveness_path"))


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    log.info(
        "made %d API requests for %d job(s)", memo.reconciler.requests, len(memo.reconciler.ensured)
    )
    await memo.job_tasks.stop_all()
    await memo.api.close()
    if memo.get("http"):
        await memo.http.cleanup()


def _job_of(body: Mapping[str, Any], labels: Mapping[str, str]) -> str | None:
    """The job a pod belongs to: its controlling DenseNetTraining, else its job label (a pod
    that only carries the label is seen, so that a name it takes is reported, never adopted)."""
    owner = job_owner(body)
    return owner.get("name") if owner else labels.get(naming.LABEL_JOB)


def _is_job_pod(body: kopf.Body, labels: kopf.Labels, **_: Any) -> bool:
    return _job_of(body, labels) is not None


@kopf.index("", "v1", "pods", when=_is_job_pod)
def job_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    # kopf fills every index before any other handler runs: after a restart, the operator
    # never mistakes "not listed yet" for "pod gone".
    return {(namespace or "", _job_of(body, labels) or ""): PodRecord.from_pod(body)}


@kopf.on.event("", "v1", "pods", when=_is_job_pod)
async def pod_changed(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    # async on purpose: kopf runs sync handlers in threads, and an asyncio.Event set from a
    # thread never wakes the job's task.
    memo.job_tasks.poke((namespace or "", _job_of(body, labels) or ""))


async def child_changed(
    event: kopf.RawEvent, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A child deleted (by a user, or a garbage collector) is made again within seconds."""
    owner = job_owner(body)
    if event.get("type") != "DELETED" or owner is None:
        return
    memo.reconciler.ensured.discard(owner.get("uid"))
    memo.job_tasks.poke((namespace or "", owner.get("name", "")))


async def gang_child_changed(
    event: kopf.RawEvent, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A gang backend's object changed (the scheduler's word on a PodGroup) or went: the job
    looks again at once. Where the cluster does not serve the kind, kopf only warns."""
    owner = job_owner(body)
    if owner is None:
        return
    if event.get("type") == "DELETED":
        memo.reconciler.ensured.discard(owner.get("uid"))
    memo.job_tasks.poke((namespace or "", owner.get("name", "")))


MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGER}
for _group, _version, _plural in CHILD_RESOURCES:
    # async on purpose, as pod_changed; one handler, registered for each kind.
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child-{_plural}")(child_changed)
for _kind in (kind for kind in backends.CUSTOM_KINDS.values() if kind.owned):
    kopf.on.event(_kind.group, _kind.version, _kind.plural, labels=MANAGED,
                  id=f"gang-{_kind.group}-{_kind.plural}")(gang_child_changed)  # fmt: skip


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    uid: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    memo.indices["pods"] = kwargs["job_pods"]  # the live index, passed by its function's name
    key = (namespace or "", name)
    if event.get("type") == "DELETED":
        if await memo.job_tasks.stop(key):  # once per job, however often the watch says so
            METRICS.job_deleted(event["object"])
            await memo.reconciler.release_deleted(event["object"])
        memo.reconciler.forget(uid)
        return
    memo.job_tasks.update(key, event["object"])

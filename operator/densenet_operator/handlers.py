"""kopf handlers: thin. They gather inputs and hand them to the per-job tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes_asyncio import client, config

from densenet_contract import GROUP, PLURAL, VERSION
from densenet_operator import naming
from densenet_operator.jobtasks import JobTasks, Key
from densenet_operator.lifecycle import Event
from densenet_operator.podrecord import PodRecord
from densenet_operator.reconcile import Reconciler

DEFAULT_TRAINER_IMAGE = "densenet-trainer:0.1.0"
log = logging.getLogger(__name__)


async def _api_client() -> client.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        await config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 64
    return client.ApiClient(configuration)


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
    api = await _api_client()
    reconciler = Reconciler(
        api=api,
        default_image=os.environ.get("DENSENET_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
        record=_record,
    )

    async def run_pass(key: Key, body: Mapping[str, Any]) -> tuple[Any, float | None]:
        try:
            return await reconciler.reconcile(body, list(indices["pods"].get(key, ())))
        except Exception as error:
            # Visible in `kubectl describe dnt`, not only in the operator's log; retried.
            _record(body, Event("Warning", "ReconcileError", str(error)[:1024]))
            raise

    # Each object's handlers get a shallow copy of this memo: share the index through a dict.
    indices: dict[str, Any] = {"pods": {}}
    memo.api = api
    memo.reconciler = reconciler
    memo.job_tasks = JobTasks(run_pass)
    memo.indices = indices


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    log.info(
        "made %d API requests for %d job(s)", memo.reconciler.requests, len(memo.reconciler.ensured)
    )
    await memo.job_tasks.stop_all()
    await memo.api.close()


@kopf.index("", "v1", "pods", labels={naming.LABEL_JOB: kopf.PRESENT})
def job_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    # kopf fills every index before any other handler runs: after a restart, the operator
    # never mistakes "not listed yet" for "pod gone".
    return {(namespace or "", labels[naming.LABEL_JOB]): PodRecord.from_pod(body)}


@kopf.on.event("", "v1", "pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def pod_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    # async on purpose: kopf runs sync handlers in threads, and an asyncio.Event set from a
    # thread never wakes the job's task.
    memo.job_tasks.poke((namespace or "", labels[naming.LABEL_JOB]))


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
        await memo.job_tasks.stop(key)
        memo.reconciler.forget(uid)
        return
    memo.job_tasks.update(key, event["object"])

"""Carries out a lifecycle plan against the API server.

The only module that writes to Kubernetes for a job. Every write is idempotent: children have
fixed names (AlreadyExists is success), deletions of what is gone are success, and the status
is written before the pods are touched, so an operator killed between two calls resumes
correctly from what the API server holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from densenet_contract import GROUP, MERGE_PATCH, PLURAL, RANK_TABLE_KEY, VERSION
from densenet_operator import lifecycle, naming, podgroup, pods, ranktable, rbac, service
from densenet_operator.podrecord import PodRecord
from densenet_operator.spec import Job, SpecError, parse_job
from densenet_operator.status import FAILED, format_time, now_utc

log = logging.getLogger(__name__)
EventSink = Callable[[Mapping[str, Any], lifecycle.Event], None]


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning `old` into `new` (keys gone from `new` become null), or None.

    The trainer's `training` block is never touched."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    for key in old:
        if key not in new and key != "training":
            patch[key] = None
    return patch or None


@dataclass
class Reconciler:
    api: client.ApiClient
    default_image: str
    record: EventSink
    # Per job uid: children known to exist, and the rank table last written.
    ensured: set[str] = field(default_factory=set)
    tables: dict[str, str] = field(default_factory=dict)
    requests: int = 0

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    async def _call(
        self, method: Callable[..., Any], *args: Any, ok: Iterable[int] = (), **kw: Any
    ) -> Any:
        """One API call, returning the JSON reply as a dict (no model deserialization: it is
        most of the CPU an operator spends). Statuses in `ok` (409 on create, 404 on delete)
        count as success and return None; any other error status raises ApiException."""
        self.requests += 1
        try:
            response = await method(*args, _preload_content=False, **kw)
        except ApiException as error:  # raised before a response exists (e.g. bad arguments)
            if error.status in ok:
                return None
            raise
        async with response:  # always release the connection back to the pool
            body = await response.read()
        if response.status >= 400:
            if response.status in ok:
                return None
            raise ApiException(status=response.status, reason=f"{response.reason}: {body[:500]!r}")
        return json.loads(body) if body else None

    async def ensure_children(self, job: Job) -> None:
        """Service, ServiceAccount, Role, RoleBinding and rank-table ConfigMap, once per job."""
        if job.ref.uid in self.ensured:
            return
        ns = job.ref.namespace
        await asyncio.gather(
            self._call(
                self.core.create_namespaced_service, ns, service.build_service(job.ref), ok=(409,)
            ),
            self._call(
                self.core.create_namespaced_service_account,
                ns,
                rbac.build_service_account(job.ref),
                ok=(409,),
            ),
            self._call(self.rbac.create_namespaced_role, ns, rbac.build_role(job.ref), ok=(409,)),
        )
        # After its Role: without `bind`, the API server refuses a binding to a missing Role.
        await self._call(
            self.rbac.create_namespaced_role_binding,
            ns,
            rbac.build_role_binding(job.ref),
            ok=(409,),
        )
        if job.spec.scheduling.scheduler_name == pods.VOLCANO_SCHEDULER:
            await self._ensure_pod_group(job)
        content = ranktable.initial_content(job.spec)
        created = await self._call(
            self.core.create_namespaced_config_map,
            ns,
            ranktable.build_configmap(job.ref, content),
            ok=(409,),
        )
        if created is None:  # it existed: an earlier instance of the operator made it
            existing = await self._call(
                self.core.read_namespaced_config_map,
                naming.rank_table_configmap_name(job.ref.name),
                ns,
            )
            content = (existing.get("data") or {}).get(RANK_TABLE_KEY, "")
        self.tables[job.ref.uid] = content
        self.ensured.add(job.ref.uid)

    async def _refuse(self, body: Mapping[str, Any], error: SpecError) -> Any:
        """A spec the schema let through but the operator cannot run: Failed, once."""
        status = body.get("status") or {}
        if status.get("phase") == FAILED:
            return None
        meta = body["metadata"]
        message = f"invalid spec: {error}"
        self.record(body, lifecycle.Event("Warning", "InvalidSpec", message))
        patch = {"phase": FAILED, "reason": "InvalidSpec", "message": message,
                 "completionTime": format_time(now_utc())}  # fmt: skip
        return await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": patch},
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def _ensure_pod_group(self, job: Job) -> None:
        try:
            await self._call(
                self.custom.create_namespaced_custom_object,
                podgroup.GROUP, podgroup.VERSION, job.ref.namespace, podgroup.PLURAL,
                podgroup.build_pod_group(job), ok=(409,),
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                raise RuntimeError(
                    "schedulerName is volcano but the PodGroup API (scheduling.volcano.sh/v1beta1) "
                    "is not installed: install Volcano, or drop spec.scheduling.schedulerName"
                ) from None
            raise

    def forget(self, uid: str) -> None:
        self.ensured.discard(uid)
        self.tables.pop(uid, None)

    async def reconcile(
        self, body: Mapping[str, Any], pod_records: Iterable[PodRecord]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """One pass for one job. Returns (the job as patched, if its status was written;
        seconds until the next pass is due, if a deadline or TTL is pending)."""
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return None, None
        try:
            job = parse_job(dict(body), default_image=self.default_image)
        except SpecError as error:
            return await self._refuse(body, error), None
        await self.ensure_children(job)
        records = list(pod_records)
        old_status = dict(body.get("status") or {})
        plan = lifecycle.plan(job, old_status, records, now_utc(), self.tables.get(job.ref.uid))
        log.debug(
            "%s/%s: %d pod(s) seen; phase %s; create %s; delete %s; table %s",
            job.ref.namespace, job.ref.name, len(records), plan.status.get("phase"), plan.create,
            plan.delete,
            "unchanged" if plan.rank_table is None else ranktable.table_status(plan.rank_table),
        )  # fmt: skip
        patched = await self._carry_out(job, old_status, plan)
        for event in plan.events:
            self.record(body, event)
        if plan.delete_job:
            await self._call(
                self.custom.delete_namespaced_custom_object,
                GROUP, VERSION, job.ref.namespace, PLURAL, job.ref.name,
                propagation_policy="Background", ok=(404,),
            )  # fmt: skip
            return None, None
        return patched, plan.requeue_after

    async def _carry_out(
        self, job: Job, old_status: Mapping[str, Any], plan: lifecycle.Plan
    ) -> dict[str, Any] | None:
        """Status first, then the rank table, then pod deletes and creates."""
        ns, name = job.ref.namespace, job.ref.name
        patched = None
        patch = status_patch(old_status, plan.status)
        if patch is not None:
            patched = await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, ns, PLURAL, name, {"status": patch}, _content_type=MERGE_PATCH,
            )  # fmt: skip
        if plan.rank_table is not None:
            await self._call(
                self.core.patch_namespaced_config_map,
                naming.rank_table_configmap_name(name), ns,
                {"data": {RANK_TABLE_KEY: plan.rank_table}}, _content_type=MERGE_PATCH,
            )  # fmt: skip
            self.tables[job.ref.uid] = plan.rank_table
        gang = int(plan.status.get("restarts") or 0)
        await asyncio.gather(
            *(self._call(self.core.delete_namespaced_pod, pod, ns, ok=(404,))
              for pod in plan.delete),
            *(self._call(self.core.create_namespaced_pod, ns,
                         pods.build_pod(job, index, gang=gang), ok=(409,))
              for index in plan.create),
        )  # fmt: skip
        return patched

"""Carries out a lifecycle plan against the API server.

The only module that writes to Kubernetes for a job. Every write is idempotent: children have
fixed names (AlreadyExists is success), deletions of what is gone are success, and the status
is written before the pods are touched, so an operator killed between two calls resumes
correctly from what the API server holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from densenet_contract import GROUP, MERGE_PATCH, PLURAL, RANK_TABLE_KEY, VERSION
from densenet_operator import (
    backends,
    children,
    lifecycle,
    naming,
    networkpolicy,
    pods,
    rbac,
    service,
)
from densenet_operator.ascend import ranktable
from densenet_operator.children import ChildConflict, ChildReplaced
from densenet_operator.expectations import PodExpectations
from densenet_operator.gang import CustomKind, GangBackend, GangState
from densenet_operator.metrics import METRICS, Metrics, device_type_of
from densenet_operator.podrecord import PodRecord
from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import Job, ParsedJobs, SpecError, parse_job
from densenet_operator.status import (
    FAILED,
    FINISHED,
    GANG_SCHEDULED,
    format_time,
    now_utc,
    set_condition,
    status_write_delay,
)

log = logging.getLogger(__name__)
CHILD_CONFLICT = "ChildConflict"
CONFLICT_RETRY_SECONDS = 15.0  # a name taken by someone else: look again this often
REPLACED_RETRY_SECONDS = 1.0  # a deleted job's child was deleted: make ours soon
# Child kind -> (kubernetes client API, the noun of its `<verb>_namespaced_<noun>` methods);
# each is created, read (an existing one's owner) and deleted (a deleted job's).
CHILD_APIS = {
    "Pod": ("core", "pod"),
    "Service": ("core", "service"),
    "ServiceAccount": ("core", "service_account"),
    "ConfigMap": ("core", "config_map"),
    "Role": ("rbac", "role"),
    "RoleBinding": ("rbac", "role_binding"),
    "NetworkPolicy": ("networking", "network_policy"),
}
CHILD_VERBS = ("create", "read", "delete")
EventSink = Callable[[Mapping[str, Any], lifecycle.Event], None]


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning `old` into `new`: nested objects are patched key
    by key, so a key gone from one of them (e.g. rankTable.ranks) must become null too."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            if nested := merge_patch(before, value):
                patch[key] = nested
        elif before != value or key not in old:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning `old` into `new` (keys gone from `new` become null), or None.

    The trainer's `training` block is never touched."""
    patch = merge_patch({k: v for k, v in old.items() if k != "training"},
                        {k: v for k, v in new.items() if k != "training"})  # fmt: skip
    return patch or None


@dataclass
class Reconciler:
    api: client.ApiClient
    defaults: TrainerDefaults  # images, rank-table host_ip and Ascend run-as user (settings.py)
    record: EventSink
    # Per job uid: children known to exist, the rank table and the status last written.
    ensured: set[str] = field(default_factory=set)
    tables: dict[str, str] = field(default_factory=dict)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected: PodExpectations = field(default_factory=PodExpectations)
    # Per job uid: clock() when its status was last written (progress is written at most
    # once per status.PROGRESS_WRITE_INTERVAL).
    status_written_at: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    requests: int = 0
    metrics: Metrics = METRICS

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.jobs = ParsedJobs(self.defaults)

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

    async def discover_gangs(self) -> frozenset[str]:
        """Which gang backends' APIs the cluster serves: `gang: auto` follows (settings.py)."""

        async def get(group: str, version: str) -> Any:
            return await self._call(self.custom.get_api_resources, group, version, ok=(404,))

        served = await backends.discover(get)
        self.defaults = dataclasses.replace(self.defaults, auto_gangs=backends.auto_gangs(served))
        self.jobs = ParsedJobs(self.defaults)
        return served

    def _custom_api(self, made: CustomKind) -> tuple[Callable[..., Any], ...]:
        """(create(ns, body), read(name, ns), delete(name, ns)) of a gang backend's kind."""
        where, plural, custom = (made.group, made.version), made.plural, self.custom
        return (
            lambda ns, body, **kw: custom.create_namespaced_custom_object(
                *where, ns, plural, body, **kw),
            lambda name, ns, **kw: custom.get_namespaced_custom_object(
                *where, ns, plural, name, **kw),
            lambda name, ns, **kw: custom.delete_namespaced_custom_object(
                *where, ns, plural, name, **kw),
        )  # fmt: skip

    def _child_api(self, body: Mapping[str, Any]) -> tuple[Callable[..., Any], ...]:
        """(create(ns, body), read(name, ns), delete(name, ns)) of a child's kind."""
        kind = body["kind"]
        made = backends.CUSTOM_KINDS.get((body.get("apiVersion", ""), kind))
        if made is not None:  # a gang backend's (gang.py)
            return self._custom_api(made)
        api_name, noun = CHILD_APIS[kind]
        api = {"core": self.core, "rbac": self.rbac, "networking": self.networking}[api_name]
        return tuple(getattr(api, f"{verb}_namespaced_{noun}") for verb in CHILD_VERBS)

    async def ensure(self, job: Job, body: dict[str, Any]) -> dict[str, Any]:
        """`body` created, or the existing object of that name when it is this job's own.
        Raises ChildReplaced (a deleted job's object, now deleted) or ChildConflict."""
        create, read, delete = self._child_api(body)
        kind = body["kind"]
        ns, name = job.ref.namespace, body["metadata"]["name"]
        created = await self._call(create, ns, body, ok=(409,))
        if created is not None:
            return dict(created)
        existing = await self._call(read, name, ns, ok=(404,))
        if existing is None:
            raise ChildReplaced(f"{kind} {name} was deleted while being created")
        owner = children.ownership(existing, job.ref)
        if owner == children.OURS:
            return dict(existing)
        if owner == children.OLD_JOB:
            uid = existing["metadata"]["uid"]
            await self._call(delete, name, ns, body={"preconditions": {"uid": uid}}, ok=(404, 409))
            raise ChildReplaced(f"{kind} {name} belonged to a deleted job of the same name")
        raise ChildConflict(kind, name, children.describe_owner(existing))

    async def ensure_children(self, job: Job) -> None:
        """Service, ServiceAccount, Role, RoleBinding, NetworkPolicy, the gang backend's
        children and the rank-table ConfigMap, each this job's own; checked once per job, and
        again after any child is deleted or a pass fails."""
        if job.ref.uid in self.ensured:
            return
        ref = job.ref
        first = [
            self.ensure(job, service.build_service(ref, job.spec.network.master_port)),
            self.ensure(job, rbac.build_service_account(ref)),
            self.ensure(job, rbac.build_role(ref)),
        ]
        if job.spec.network.policy.enabled:
            policy = networkpolicy.build_network_policy(job)
            first.append(self.ensure(job, policy))
        await asyncio.gather(*first)
        # After its Role: without `bind`, the API server refuses a binding to a missing Role.
        await self.ensure(job, rbac.build_role_binding(ref))
        backend = backends.backend_for(job)
        await self._ensure_gang(job, backend, backend.children(job))
        configmap = await self.ensure(
            job, ranktable.build_configmap(ref, ranktable.initial_content(job.spec))
        )
        self.tables[ref.uid] = (configmap.get("data") or {}).get(RANK_TABLE_KEY, "")
        self.ensured.add(ref.uid)

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
        patched = await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": patch},
            _content_type=MERGE_PATCH,
        )  # fmt: skip
        self.metrics.pass_written(meta["namespace"], device_type_of(body),
                                  first=not status.get("phase"), finished=FAILED,
                                  restart_cause=None)  # fmt: skip
        return patched

    async def _ensure_gang(
        self, job: Job, backend: GangBackend, made: list[dict[str, Any]]
    ) -> None:
        """A gang backend's children (its once-per-job ones, or a generation's), each this
        job's own, before the pods that need them."""
        for child in made:
            try:
                await self.ensure(job, child)
            except ApiException as error:
                if error.status == 404:
                    raise RuntimeError(backend.kinds[child["kind"]].missing) from None
                raise

    async def _gang_state(self, job: Job, status: Mapping[str, Any],
                          records: list[PodRecord]) -> GangState | None:  # fmt: skip
        """What the scheduler says of the current gang, read until it says "placed" (which a
        PodGroup never takes back), and whenever a pod of the gang is gated (a queue may take
        its admission back: Kueue's eviction)."""
        backend = backends.backend_for(job)
        gang = int(status.get("restarts") or 0)
        where = backend.state_of(job, gang)
        placed = any(c.get("type") == GANG_SCHEDULED and c.get("status") == "True"
                     for c in status.get("conditions") or ())  # fmt: skip
        current = [r for r in records if r.gang == gang and not r.terminating]
        gated = any(r.gates for r in current)
        if (
            where is None
            or not current
            or (placed and not gated)
            or status.get("phase") in FINISHED
        ):
            return None
        made, name = where
        child = await self._call(self._custom_api(made)[1], name, job.ref.namespace, ok=(404,))
        if made.owned and child is not None and children.ownership(child, job.ref) != children.OURS:
            return None
        # Another controller's object (Kueue's Workload) is judged by the backend.
        return backend.read_state(job, child)

    async def release(self, job: Job) -> None:
        """What holds the job's place (a queue's quota) given back: gang.py released_children."""
        for made, name in backends.backend_for(job).released_children(job):
            await self._call(self._custom_api(made)[2], name, job.ref.namespace, ok=(404,))

    async def release_deleted(self, body: Mapping[str, Any]) -> None:
        """A deleted job's place given back (its pods go with it; a queue would keep them)."""
        try:
            job = parse_job(dict(body), defaults=self.defaults)
        except SpecError:
            return
        await self.release(job)

    async def _ensure_gang_generation(self, job: Job, gang: int) -> None:
        """The objects generation `gang` needs (a native PodGroup), and the previous
        generation's deleted (their pods are already being deleted)."""
        backend = backends.backend_for(job)
        await self._ensure_gang(job, backend, backend.gang_children(job, gang))
        if gang == 0:
            return
        for made, name in backend.retired_children(job, gang - 1):
            await self._call(self._custom_api(made)[2], name, job.ref.namespace, ok=(404,))

    def forget(self, uid: str) -> None:
        self.ensured.discard(uid)
        self.tables.pop(uid, None)
        self.written.pop(uid, None)
        self.expected.forget(uid)
        self.jobs.forget(uid)
        self.status_written_at.pop(uid, None)

    def _believed_status(self, job: Job, body: Mapping[str, Any]) -> dict[str, Any]:
        """The status to plan from: what this operator last wrote, when someone else has since
        changed its fields (the trainer's `training` block is the trainer's to write)."""
        status = dict(body.get("status") or {})
        written = self.written.get(job.ref.uid)
        if written is None:
            return status
        changed = sorted(
            key for key in set(written) | set(status)
            if key != "training" and written.get(key) != status.get(key)
        )  # fmt: skip
        if not changed:
            return status
        self.record(body, lifecycle.Event("Warning", "StatusCorrected", "status fields written "
                                          f"by someone else were restored: {', '.join(changed)}"))  # fmt: skip
        return {**written, **({"training": status["training"]} if "training" in status else {})}

    async def reconcile(
        self, body: Mapping[str, Any], pod_records: Iterable[PodRecord]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """One pass for one job. Returns (the job as patched, if its status was written;
        seconds until the next pass is due, if a deadline or TTL is pending)."""
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return None, None
        try:
            job = self.jobs.parse(dict(body))
        except SpecError as error:
            self.written.pop((body.get("metadata") or {}).get("uid", ""), None)
            return await self._refuse(body, error), None
        try:
            return await self._pass(job, body, list(pod_records))
        except ChildConflict as conflict:
            self.ensured.discard(job.ref.uid)
            self.written.pop(job.ref.uid, None)  # this write is not a plan's: trust what is stored
            return await self._report_conflict(body, conflict), CONFLICT_RETRY_SECONDS
        except ChildReplaced as replaced:
            log.info("%s/%s: %s", job.ref.namespace, job.ref.name, replaced)
            self.ensured.discard(job.ref.uid)
            return None, REPLACED_RETRY_SECONDS
        except Exception:
            # A child may have gone (404) or changed: check every child again next pass.
            self.ensured.discard(job.ref.uid)
            raise

    async def _clear_conflict(self, job: Job, body: Mapping[str, Any]) -> Any:
        """Every child is this job's again (the pass carried out): the condition turns False."""
        conditions = (body.get("status") or {}).get("conditions") or ()
        if not any(
            c.get("type") == CHILD_CONFLICT and c.get("status") == "True" for c in conditions
        ):
            return None
        conditions = set_condition(conditions, CHILD_CONFLICT, False, "Resolved",
                                   "every child is this job's own", now_utc())  # fmt: skip
        self.written.pop(job.ref.uid, None)
        return await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, job.ref.namespace, PLURAL, job.ref.name,
            {"status": {"conditions": conditions}}, _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def _report_conflict(self, body: Mapping[str, Any], conflict: ChildConflict) -> Any:
        status = body.get("status") or {}
        message = str(conflict)
        if status.get("reason") == "ChildConflict" and status.get("message") == message:
            return None
        self.record(body, lifecycle.Event("Warning", "ChildConflict", message))
        conditions = set_condition(
            status.get("conditions") or (), CHILD_CONFLICT, True, "NameTaken", message, now_utc()
        )
        patch = {"reason": "ChildConflict", "message": message, "conditions": conditions}
        meta = body["metadata"]
        return await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": patch},
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def _pass(
        self, job: Job, body: Mapping[str, Any], records: list[PodRecord]
    ) -> tuple[dict[str, Any] | None, float | None]:
        await self.ensure_children(job)
        records = self.expected.with_expected(job.ref.uid, records)
        old_status = dict(body.get("status") or {})
        believed = self._believed_status(job, body)
        gang_state = await self._gang_state(job, believed, records)
        plan = lifecycle.plan(
            job, believed, records, now_utc(), self.tables.get(job.ref.uid), gang_state
        )
        log.debug(
            "%s/%s: %d pod(s) seen; phase %s; create %s; delete %s; table %s",
            job.ref.namespace, job.ref.name, len(records), plan.status.get("phase"), plan.create,
            plan.delete,
            "unchanged" if plan.rank_table is None else ranktable.table_status(plan.rank_table),
        )  # fmt: skip
        # A status someone else changed is restored at once, whatever changed in it.
        patched = await self._carry_out(
            job, old_status, plan, records, correcting=believed != old_status
        )
        patched = await self._clear_conflict(job, patched or body) or patched
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
        self,
        job: Job,
        old_status: Mapping[str, Any],
        plan: lifecycle.Plan,
        records: list[PodRecord],
        *,
        correcting: bool = False,
    ) -> dict[str, Any] | None:
        """Status first (progress only, written moments ago and not `correcting`: on the pass
        due when the interval ends), then the rank table, then pod deletes and creates."""
        ns, name = job.ref.namespace, job.ref.name
        patched = None
        if plan.release:  # before the status that says so: a crash in between releases again
            await self.release(job)
        patch = status_patch(old_status, plan.status)
        now = self.clock()
        last_written = None if correcting else self.status_written_at.get(job.ref.uid)
        delay = 0.0
        if patch is not None:
            delay = status_write_delay(old_status, plan.status, last_written, now)
        if delay > 0:  # progress only, written moments ago: the pass due then writes it
            plan.requeue_within(delay)
        elif patch is not None:
            patched = await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, ns, PLURAL, name, {"status": patch}, _content_type=MERGE_PATCH,
            )  # fmt: skip
            self.status_written_at[job.ref.uid] = now
            self.metrics.pass_written(ns, job.spec.device_type, first=plan.first,
                                      finished=plan.finished, restart_cause=plan.restart_cause)  # fmt: skip
        if delay == 0:
            self.written[job.ref.uid] = {k: v for k, v in plan.status.items() if k != "training"}
        if plan.rank_table is not None:
            await self._call(
                self.core.patch_namespaced_config_map,
                naming.rank_table_configmap_name(name), ns,
                {"data": {RANK_TABLE_KEY: plan.rank_table}}, _content_type=MERGE_PATCH,
            )  # fmt: skip
            self.metrics.rank_table_written(self.tables.get(job.ref.uid), plan.rank_table,
                                            plan.status)  # fmt: skip
            self.tables[job.ref.uid] = plan.rank_table
        gang = int(plan.status.get("restarts") or 0)
        # Deleted by UID: a name may meanwhile belong to another pod, which is never ours to end.
        uids = {r.name: r.uid for r in records}
        for pod in plan.delete:
            self.expected.deleted(job.ref.uid, pod)
        if plan.create:
            await self._ensure_gang_generation(job, gang)
        results = await asyncio.gather(
            *(self._call(self.core.delete_namespaced_pod, pod, ns, ok=(404, 409),
                         body={"preconditions": {"uid": uids.get(pod)}})
              for pod in plan.delete),
            *(self.ensure(job, pods.build_pod(job, index, gang=gang,
                                                     run_as=self.defaults.ascend_run_as))
              for index in plan.create),
        )  # fmt: skip
        for created in results[len(plan.delete) :]:
            self.expected.created(job.ref.uid, PodRecord.from_pod(created))
        return patched

"""Names, labels and owner references shared by every child object of a job."""

from __future__ import annotations

from typing import Any

from densenet_contract import API_VERSION, GROUP, KIND, rank_table_configmap
from densenet_operator.spec import JobRef

LABEL_JOB = f"{GROUP}/job-name"
LABEL_REPLICA_INDEX = f"{GROUP}/replica-index"
LABEL_REPLICA_TYPE = f"{GROUP}/replica-type"
# Which gang a pod belongs to: status.restarts when it was created. Pods of an older gang are
# leftovers of a restart and never count towards the new one.
LABEL_GANG = f"{GROUP}/gang"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "densenet-operator"
WORKER = "worker"  # the replica type: every pod of a job is a worker pod


def pod_hostname(job: str, index: int) -> str:
    """Replica `index`'s host name in the job's headless service, whatever its pod's name."""
    return f"{job}-{WORKER}-{index}"


def pod_name(job: str, index: int, gang: int | None = None) -> str:
    """Replica `index`'s pod: its host name, or with `gang` (a backend whose pods are named per
    gang generation, gang.py) `<host name>-g<gang>`."""
    hostname = pod_hostname(job, index)
    return hostname if gang is None else f"{hostname}-g{gang}"


def service_name(job: str) -> str:
    return job


def rank_table_configmap_name(job: str) -> str:
    return rank_table_configmap(job)


def service_account_name(job: str) -> str:
    return f"{job}-trainer"


def pod_group_name(job: str) -> str:
    return job


def master_address(job: str) -> str:
    """Worker 0's DNS name through the headless service (hostname.subdomain)."""
    return f"{pod_hostname(job, 0)}.{service_name(job)}"


def job_labels(job: JobRef) -> dict[str, str]:
    return {LABEL_JOB: job.name, LABEL_MANAGED_BY: MANAGER}


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: JobRef, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**job_labels(job), **(labels or {})},
        "ownerReferences": [owner_reference(job)],
    }

"""Per-job identity of the trainer: it may report its own job's status and read its own rank
table, nothing more."""

from __future__ import annotations

from typing import Any

from densenet_contract import GROUP, PLURAL
from densenet_operator import naming
from densenet_operator.spec import JobRef


def build_service_account(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": naming.child_metadata(job, naming.service_account_name(job.name)),
    }


def build_role(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": naming.child_metadata(job, naming.service_account_name(job.name)),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [job.name],
                "verbs": ["get", "patch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "resourceNames": [job.name],
                "verbs": ["get"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [naming.rank_table_configmap_name(job.name)],
                # list and watch by name (a metadata.name field selector): the launcher
                # watches its table rather than wait for the kubelet to refresh the mount.
                "verbs": ["get", "list", "watch"],
            },
        ],
    }


def build_role_binding(job: JobRef) -> dict[str, Any]:
    name = naming.service_account_name(job.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": naming.child_metadata(job, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.namespace}],
    }

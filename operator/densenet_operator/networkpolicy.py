"""The job's NetworkPolicy: its ranks reach each other on every port (torchrun's rendezvous,
gloo/NCCL/HCCL's own connections on ports they pick), other ingress only as
`spec.network.policy.ingress` allows. Egress is open unless `spec.network.policy.egress` is
set; then the ranks, cluster DNS and those rules are allowed, nothing else.

Pods with hostNetwork are outside any NetworkPolicy's reach in most network plugins: the
policy is still made, and docs/security.md says so.
"""

from __future__ import annotations

from typing import Any

from densenet_operator import naming
from densenet_operator.spec import Job

DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def network_policy_name(job: str) -> str:
    return job


def build_network_policy(job: Job) -> dict[str, Any]:
    settings = job.spec.network.policy
    ranks = {"podSelector": {"matchLabels": {naming.LABEL_JOB: job.ref.name}}}
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {naming.LABEL_JOB: job.ref.name}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [ranks]}, *map(dict, settings.ingress)],
    }
    if settings.egress is not None:
        spec["policyTypes"].append("Egress")
        cluster_dns = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}  # fmt: skip
        spec["egress"] = [
            {"to": [ranks]},
            {"to": [cluster_dns], "ports": DNS_PORTS},
            *map(dict, settings.egress),
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": naming.child_metadata(job.ref, network_policy_name(job.ref.name)),
        "spec": spec,
    }

"""The headless Service that gives each worker a stable DNS name (MASTER_ADDR)."""

from __future__ import annotations

from typing import Any

from densenet_contract import MASTER_PORT
from densenet_operator import naming
from densenet_operator.spec import JobRef


def build_service(job: JobRef, port: int = MASTER_PORT) -> dict[str, Any]:
    """`port`: the job's rendezvous port (spec.network.masterPort)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(job, naming.service_name(job.name)),
        "spec": {
            "clusterIP": "None",
            # Workers resolve the master before it is Ready; DNS must answer from the start.
            "publishNotReadyAddresses": True,
            "selector": {naming.LABEL_JOB: job.name},
            "ports": [{"name": "dist", "port": port, "targetPort": "dist"}],
        },
    }

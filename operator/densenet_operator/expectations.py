"""Pods this operator has created that its pod index does not show yet.

A pass runs on whatever woke it, often the operator's own status write, and that can come
before the watch events of the pods the previous pass created. Planned from the index alone,
such a pass would create those pods again: each attempt an "already exists" (409) and a read
back, about two wasted requests per pod in a wave of jobs (bench/side_by_side.py). Like
Kubeflow's "expectations", a created pod counts as present until the index shows it or a short
time passes (after which the index is trusted again, so a pod deleted meanwhile is recreated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from densenet_operator.podrecord import PodRecord

EXPECTED_POD_SECONDS = 15.0


@dataclass
class PodExpectations:
    ttl: float = EXPECTED_POD_SECONDS
    clock: Callable[[], float] = time.monotonic
    # job uid -> pod name -> (when created, the created pod)
    _pending: dict[str, dict[str, tuple[float, PodRecord]]] = field(default_factory=dict)

    def created(self, job_uid: str, pod: PodRecord) -> None:
        self._pending.setdefault(job_uid, {})[pod.name] = (self.clock(), pod)

    def deleted(self, job_uid: str, name: str) -> None:
        self._pending.get(job_uid, {}).pop(name, None)

    def forget(self, job_uid: str) -> None:
        self._pending.pop(job_uid, None)

    def with_expected(self, job_uid: str, indexed: list[PodRecord]) -> list[PodRecord]:
        """The index's pods, plus those created since that it does not show yet."""
        pending = self._pending.get(job_uid)
        if not pending:
            return indexed
        seen, now = {record.name for record in indexed}, self.clock()
        for name, (created, _) in list(pending.items()):
            if name in seen or now - created > self.ttl:
                del pending[name]
        if not pending:
            del self._pending[job_uid]
            return indexed
        return [*indexed, *(record for _, record in pending.values())]

"""Who owns a child object: this job, a deleted job of the same name, or someone else.

The operator acts only on children whose controller owner reference carries the job's UID. A
same-name object of a deleted job (its owner is a DenseNetTraining of this name with another
UID, e.g. left by `kubectl delete --cascade=orphan` or a lagging garbage collector) is deleted
and made anew; an object of anyone else is never touched nor adopted: the job waits, and its
status names the object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from densenet_contract import API_VERSION, KIND
from densenet_operator.spec import JobRef

OURS, OLD_JOB, FOREIGN = "ours", "old-job", "foreign"


def controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The controller owner reference of `obj`, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return next((ref for ref in refs if ref.get("controller")), None)


def job_owner(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The DenseNetTraining that controls `obj`, as its owner reference says."""
    ref = controller(obj)
    if ref is None or ref.get("kind") != KIND or ref.get("apiVersion") != API_VERSION:
        return None
    return ref


def ownership(obj: Mapping[str, Any], job: JobRef) -> str:
    ref = job_owner(obj)
    if ref is None:
        return FOREIGN
    if ref.get("uid") == job.uid:
        return OURS
    return OLD_JOB if ref.get("name") == job.name else FOREIGN


def describe_owner(obj: Mapping[str, Any]) -> str:
    ref = controller(obj)
    if ref is None:
        return "no owner"
    return f"owner {ref.get('kind')}/{ref.get('name')} (uid {ref.get('uid')})"


@dataclass(frozen=True)
class ChildConflict(Exception):
    """A child's name is taken by an object this job does not own."""

    kind: str
    name: str
    owner: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.name} exists and is not this job's ({self.owner}): "
            "delete or rename it; the job waits until the name is free"
        )


class ChildReplaced(Exception):
    """A child of a deleted job was deleted; the next pass creates this job's own."""

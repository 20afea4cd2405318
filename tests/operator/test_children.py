from densenet_operator import children, naming
from tests.operator.factories import JOB


def owned_by(uid: str, name: str = JOB.name, kind: str = "DenseNetTraining") -> dict:
    ref = {**naming.owner_reference(JOB), "uid": uid, "name": name, "kind": kind}
    return {"metadata": {"ownerReferences": [ref]}}


def test_a_child_is_ours_only_by_the_job_s_uid():
    assert children.ownership(owned_by(JOB.uid), JOB) == children.OURS
    assert children.ownership(owned_by("older-uid"), JOB) == children.OLD_JOB
    assert children.ownership(owned_by("other", name="other-job"), JOB) == children.FOREIGN
    assert children.ownership(owned_by(JOB.uid, kind="Deployment"), JOB) == children.FOREIGN
    assert children.ownership({"metadata": {}}, JOB) == children.FOREIGN


def test_a_conflict_names_the_object_and_its_owner():
    conflict = children.ChildConflict("Pod", "dn161-worker-0", children.describe_owner({}))
    assert str(conflict).startswith("Pod dn161-worker-0 exists and is not this job's (no owner)")

"""Created pods count as present until the pod index shows them, or for a short time."""

from __future__ import annotations

from densenet_operator.expectations import PodExpectations
from densenet_operator.podrecord import PodRecord


def record(name: str, uid: str = "") -> PodRecord:
    return PodRecord.from_pod({"metadata": {"name": name, "uid": uid or f"uid-{name}"}})


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_created_pod_counts_until_the_index_shows_it() -> None:
    expected = PodExpectations(ttl=15, clock=Clock())
    expected.created("job", record("dn-worker-0"))
    expected.created("job", record("dn-worker-1"))
    # The index has seen worker-0 only: worker-1 is added, worker-0 not twice.
    names = [r.name for r in expected.with_expected("job", [record("dn-worker-0")])]
    assert sorted(names) == ["dn-worker-0", "dn-worker-1"]
    # Once the index shows both, nothing is held for the job any more.
    both = [record("dn-worker-0"), record("dn-worker-1")]
    assert expected.with_expected("job", both) == both
    assert expected.with_expected("job", []) == []


def test_after_the_ttl_the_index_is_trusted_again() -> None:
    clock = Clock()
    expected = PodExpectations(ttl=15, clock=clock)
    expected.created("job", record("dn-worker-0"))
    clock.now += 10
    assert [r.name for r in expected.with_expected("job", [])] == ["dn-worker-0"]
    clock.now += 6  # a pod deleted before the index saw it is recreated after this
    assert expected.with_expected("job", []) == []


def test_deleted_and_forgotten_pods_are_not_held_and_jobs_are_apart() -> None:
    expected = PodExpectations(clock=Clock())
    expected.created("job-a", record("a-worker-0"))
    expected.created("job-a", record("a-worker-1"))
    expected.created("job-b", record("b-worker-0"))
    expected.deleted("job-a", "a-worker-0")
    assert [r.name for r in expected.with_expected("job-a", [])] == ["a-worker-1"]
    expected.forget("job-a")
    assert expected.with_expected("job-a", []) == []
    assert [r.name for r in expected.with_expected("job-b", [])] == ["b-worker-0"]

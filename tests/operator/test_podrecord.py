from densenet_operator.podrecord import PodRecord, newest_gang
from tests.operator.factories import make_pod


def test_a_pod_is_read_once_into_what_the_operator_needs():
    record = PodRecord.from_pod(make_pod(1, phase="Failed", exit_code=137, gang=2))
    assert (record.name, record.index, record.gang) == ("dn161-worker-1", 1, 2)
    assert (record.phase, record.exit_code, record.reason) == ("Failed", 137, "Error")
    assert (record.pod_ip, record.host_ip) == ("10.244.1.7", "10.0.0.12")
    assert record.device_config is not None and not record.terminating


def test_labels_that_are_not_plain_numbers_give_no_index():
    pod = make_pod(0)
    pod["metadata"]["labels"]["training.densenet.dev/replica-index"] = "²"
    assert PodRecord.from_pod(pod).index is None


def test_newest_gang_leaves_out_old_and_terminating_pods():
    records = [
        PodRecord.from_pod(p)
        for p in (make_pod(0, gang=1), make_pod(1, gang=0), make_pod(1, gang=1, terminating=True))
    ]
    assert [r.name for r in newest_gang(records)] == ["dn161-worker-0"]

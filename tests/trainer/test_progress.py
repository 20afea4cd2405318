"""The progress reporter against an unreachable API server and a recording HTTP server."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from densenet_contract import TRAINING_FIELDS
from densenet_trainer.progress import (
    ACTIVITIES,
    Activity,
    NullReporter,
    ProgressReporter,
    clean_fields,
    merge_patch_body,
    reporter_from_env,
)

from .conftest import WAIT_LIMIT, FakeApiServer, RecordingReporter, write_kubeconfig

STATUS_PATH = "/apis/training.densenet.dev/v1alpha1/namespaces/team-a/densenettrainings/dn/status"


def test_fields_are_coerced_to_the_contract_types() -> None:
    cleaned = clean_fields(
        {"epoch": 3.0, "step": 120, "fps": 12, "loss": float("nan"), "checkpoint": Path("/c")}
    )
    assert cleaned == {"epoch": 3, "step": 120, "fps": 12.0, "checkpoint": "/c"}
    assert type(cleaned["fps"]) is float and type(cleaned["epoch"]) is int
    with pytest.raises(KeyError):
        clean_fields({"accuracy": 1.0})
    assert merge_patch_body({"epoch": 1}) == {"status": {"training": {"epoch": 1}}}


def test_patches_are_json_merge_patches_of_status_training(
    api_server: tuple[FakeApiServer, str], tmp_path: Path
) -> None:
    fake, url = api_server
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    reporter = ProgressReporter("dn", "team-a", kubeconfig=str(kubeconfig), interval=3600)
    reporter.update({"epoch": 0, "totalEpochs": 90, "step": 10, "loss": 6.9})
    (first,) = fake.wait_for(1)
    # Within the interval, updates only merge into the pending patch ...
    reporter.update({"step": 20, "loss": 6.5, "fps": 550.5})
    reporter.update({"step": 30, "lr": 0.1})
    # ... until an epoch end forces it out.
    reporter.update({"epoch": 1, "acc1": 5.25, "checkpoint": "/ckpt/c.pth"}, force=True)
    second = fake.wait_for(2)[1]
    reporter.close(timeout=WAIT_LIMIT)

    assert first.method == "PATCH" and first.path == STATUS_PATH
    assert first.content_type == "application/merge-patch+json"
    assert first.authorization == "Bearer test-token"
    training = first.body["status"]["training"]
    assert set(first.body) == {"status"} and set(first.body["status"]) == {"training"}
    assert {k: training[k] for k in ("epoch", "totalEpochs", "step", "loss")} == {
        "epoch": 0,
        "totalEpochs": 90,
        "step": 10,
        "loss": 6.9,
    }
    assert training["updated"].endswith("Z") and "T" in training["updated"]
    assert {k: v for k, v in second.body["status"]["training"].items() if k != "updated"} == {
        "step": 30,
        "loss": 6.5,
        "fps": 550.5,
        "lr": 0.1,
        "epoch": 1,
        "acc1": 5.25,
        "checkpoint": "/ckpt/c.pth",
    }
    assert len(fake.requests) == 2 and reporter.patches_sent == 2


def test_a_failed_patch_is_retried_with_its_values(
    api_server: tuple[FakeApiServer, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = api_server
    fake.fail_first = 1
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    reporter = ProgressReporter("dn", "team-a", kubeconfig=str(kubeconfig), interval=0.05)
    with caplog.at_level(logging.WARNING, logger="densenet_trainer"):
        reporter.update({"epoch": 2, "step": 200})
        fake.wait_for(1)
        reporter.update({"step": 210})
        retried = fake.wait_for(2)[1]
    reporter.close(timeout=WAIT_LIMIT)
    training = retried.body["status"]["training"]
    assert (training["epoch"], training["step"]) == (2, 210)  # old value kept, newer one wins
    assert reporter.patches_failed == 1
    assert "HTTP 500" in caplog.text


def test_an_unreachable_api_server_never_stops_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="densenet_trainer"):
        reporter = ProgressReporter(
            "dn", "team-a", kubeconfig=str(kubeconfig), interval=0.0, request_timeout=(1, 1)
        )
        for step in range(1, 201):  # a training loop's worth of updates, none of them raising
            reporter.update({"step": step, "loss": 1.0 / step, "fps": 100.0})
        reporter.update({"epoch": 1, "acc1": 50.0}, force=True)
        assert reporter.close(timeout=WAIT_LIMIT) is True
    assert reporter.patches_sent == 0
    assert reporter.patches_failed >= 1
    assert "patching team-a/dn status failed" in caplog.text
    reporter.update({"step": 201})  # after close: ignored, still no error


def test_close_returns_even_while_a_patch_hangs(tmp_path: Path) -> None:
    """A server that accepts connections but never answers: close() gives up at its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        reporter = ProgressReporter(
            "dn", "team-a", kubeconfig=str(kubeconfig), request_timeout=(5, 5)
        )
        reporter.update({"step": 1}, force=True)
        assert reporter.close(timeout=0.2) is False  # returned while the patch still hangs
    finally:
        listener.close()


def test_reporter_only_on_rank_0_of_an_operator_job(tmp_path: Path) -> None:
    env = {"DENSENET_JOB_NAME": "dn", "DENSENET_JOB_NAMESPACE": "team-a"}
    assert isinstance(reporter_from_env(True, 10, env={}), NullReporter)
    assert isinstance(reporter_from_env(False, 10, env=env), NullReporter)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1")
    reporter = reporter_from_env(True, 10, env={**env, "KUBECONFIG": str(kubeconfig)})
    assert isinstance(reporter, ProgressReporter)
    assert (reporter.name, reporter.namespace) == ("dn", "team-a")
    reporter.close(timeout=WAIT_LIMIT)


def test_no_cluster_config_turns_reporting_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "DENSENET_JOB_NAME": "dn",
        "DENSENET_JOB_NAMESPACE": "team-a",
        "KUBECONFIG": str(tmp_path / "missing"),
    }
    with caplog.at_level(logging.WARNING, logger="densenet_trainer"):
        reporter = reporter_from_env(True, 10, env=env)
    assert isinstance(reporter, NullReporter)
    assert "status reporting is off" in caplog.text


def test_values_are_rounded_for_kubectl_get() -> None:
    from densenet_trainer.progress import clean_fields

    cleaned = clean_fields({"fps": 3650.2371, "acc1": 75.98765, "lr": 0.00012345678, "epoch": 3.0})
    assert cleaned == {"fps": 3650.2, "acc1": 75.99, "lr": 0.0001235, "epoch": 3}


def test_the_fields_their_types_and_digits_are_the_contracts() -> None:
    value = 1.23456789
    sent = {name: "x" if field.type is str else value for name, field in TRAINING_FIELDS.items()}
    cleaned = clean_fields(sent)
    assert set(cleaned) == set(TRAINING_FIELDS)
    for name, field in TRAINING_FIELDS.items():
        assert type(cleaned[name]) is field.type, name
        if field.decimals is not None:
            assert cleaned[name] == round(value, field.decimals), name


def test_activity_changes_are_forced_and_repetitions_dropped() -> None:
    updates = RecordingReporter()
    activity = Activity(updates)
    for value in ("starting", "training", "training", "checkpointing", "training"):
        activity.set(value)
    activity.set("stopping", {"step": 7})
    assert updates.updates == [
        ({"activity": "starting"}, True),
        ({"activity": "training"}, True),
        ({"activity": "checkpointing"}, True),
        ({"activity": "training"}, True),
        ({"step": 7, "activity": "stopping"}, True),
    ]
    with pytest.raises(ValueError, match="unknown activity"):
        activity.set("sleeping")
    # the contract describes exactly these values, and the field takes them
    assert all(value in TRAINING_FIELDS["activity"].meaning for value in ACTIVITIES)
    assert clean_fields({"activity": "training"}) == {"activity": "training"}


def test_progress_and_eta_come_from_the_planned_steps_and_the_measured_speed():
    from densenet_trainer.progress import progress_fields

    # 1000 planned steps of 8 x 128 images at 1024 img/s: one step a second.
    assert progress_fields(250, 1000, 1024.0, 1024) == {"progress": 25.0, "etaSeconds": 750}
    assert progress_fields(250, 1000, None, 1024) == {"progress": 25.0}  # no speed yet
    assert progress_fields(1200, 1000, 1024.0, 1024) == {"progress": 100.0, "etaSeconds": 0}
    assert progress_fields(5, 0, 1024.0, 1024) == {}

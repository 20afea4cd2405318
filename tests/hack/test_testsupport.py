"""hack/testsupport.py: the polling helper, the kubectl wrapper (against a stand-in binary) and
the pod helpers. No cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testsupport import (
    Kubectl,
    KubectlError,
    TimedOut,
    condition,
    is_running,
    wait_for,
)


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, [], {"ready": True}])
    assert wait_for(lambda: next(answers), 5, interval=0) == {"ready": True}


def test_wait_for_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(TimedOut, match=r"waiting for the moon; last: \[\]") as raised:
        wait_for(list, 0.05, interval=0.01, what="the moon")
    assert isinstance(raised.value, AssertionError)  # a test reads it as a failed check


def test_wait_for_retries_only_the_exceptions_it_is_told_to() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KubectlError(("get", "x"), 1, "connection refused")
        return "ok"

    assert wait_for(flaky, 5, interval=0, retry_on=(KubectlError,)) == "ok"
    calls.clear()
    with pytest.raises(KubectlError):
        wait_for(flaky, 5, interval=0)
    calls.clear()
    with pytest.raises(TimedOut, match="connection refused"):
        wait_for(flaky, 0, interval=0, retry_on=(KubectlError,))


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Kubectl:
    """A kubectl that prints its arguments and stdin as JSON, and fails on `fail`."""
    binary = tmp_path / "kubectl"
    binary.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "if 'fail' in sys.argv: sys.exit('boom: ' + sys.argv[-1])\n"
        "print(json.dumps({'args': sys.argv[1:], 'stdin': sys.stdin.read()}))\n"
    )
    binary.chmod(0o755)
    return Kubectl(binary, tmp_path / "kubeconfig")


def test_kubectl_binds_its_kubeconfig_and_sends_manifests_as_json(
    fake_kubectl: Kubectl, tmp_path: Path
) -> None:
    got = fake_kubectl.json("get", "pods")
    assert got["args"] == [
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        "get",
        "pods",
        "-o",
        "json",
    ]
    pod = {"kind": "Pod", "metadata": {"name": "p"}}
    sent = json.loads(json.loads(fake_kubectl.apply(pod, "-n", "ns").stdout)["stdin"])
    assert sent == pod
    sent = json.loads(json.loads(fake_kubectl("create", "-f", "-", input=[pod]).stdout)["stdin"])
    assert sent == {"apiVersion": "v1", "kind": "List", "items": [pod]}


def test_kubectl_raises_with_stderr_unless_told_not_to(fake_kubectl: Kubectl) -> None:
    with pytest.raises(KubectlError, match="boom: it") as raised:
        fake_kubectl("fail", "it")
    assert raised.value.returncode == 1
    assert fake_kubectl("fail", "it", check=False).returncode == 1
    assert not fake_kubectl.succeeds("fail", "it") and fake_kubectl.succeeds("get", "x")


def test_pod_helpers() -> None:
    pod = {
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.5",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    assert is_running(pod)
    assert not is_running({"status": {"phase": "Running"}})  # KWOK has not given it an IP yet
    assert not is_running({})
    assert condition(pod, "Ready") == {"type": "Ready", "status": "True"}
    assert condition(pod, "PodScheduled") is None and condition({}, "Ready") is None

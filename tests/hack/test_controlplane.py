"""hack/controlplane.py: finding and ending the processes of a cluster (psutil), no cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import controlplane
import psutil
import pytest
from testsupport import wait_for

# Stands in for a component: kwokctl runs each through a link in <cluster dir>/bin/.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def component(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "python"
    link.symlink_to(os.path.realpath(sys.executable))
    process = subprocess.Popen([str(link), "-c", STUBBORN], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_leftover_components_are_found_by_their_binary_and_killed(
    tmp_path: Path, component: subprocess.Popen[bytes]
) -> None:
    found = controlplane.processes_under(tmp_path)
    assert [p.pid for p in found] == [component.pid]
    assert controlplane.pid_running(component.pid)
    assert controlplane.processes_under(tmp_path / "elsewhere") == []
    # It ignores SIGTERM: the SIGKILL after the timeout ends it.
    controlplane.terminate(found, timeout=0.5)
    assert found[0].returncode == -signal.SIGKILL  # psutil.wait_procs reaped it
    assert not psutil.pid_exists(component.pid)


def test_pid_running_says_no_for_missing_and_zombie_processes() -> None:
    assert controlplane.pid_running(os.getpid())
    assert not controlplane.pid_running(None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10, interval=0.05)
    assert not controlplane.pid_running(child.pid)  # exited, not yet reaped
    child.wait()
    assert not controlplane.pid_running(child.pid)


def test_the_kwokctl_configuration_takes_an_audit_policy_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DENSENET_AUDIT_POLICY", raising=False)
    options = controlplane.render_kwokctl_config(tmp_path, tmp_path / "kubectl", tmp_path)[
        "options"
    ]
    assert "kubeAuditPolicy" not in options
    policy = tmp_path / "audit-policy.yaml"
    monkeypatch.setenv("DENSENET_AUDIT_POLICY", str(policy))
    options = controlplane.render_kwokctl_config(tmp_path, tmp_path / "kubectl", tmp_path)[
        "options"
    ]
    assert options["kubeAuditPolicy"] == str(policy)
    assert (options["securePort"], options["kubeAuthorization"]) == (True, True)


def test_kwok_ends_a_held_pod_as_a_kubelet_does() -> None:
    stages = controlplane.kwok_stages(controlplane.kwok_module_dir())
    by_name = {stage["metadata"]["name"]: stage for stage in stages}
    # kwokctl's own stages, all of them: given one Stage, kwokctl uses only what it is given.
    assert set(by_name) == {"node-initialize", "node-heartbeat-with-lease", "pod-ready",
                            "pod-complete", "pod-delete", "pod-terminate-on-delete"}  # fmt: skip
    delete = by_name["pod-delete"]["spec"]["selector"]["matchExpressions"]
    assert {"key": ".metadata.finalizers", "operator": "DoesNotExist"} in delete
    terminate = by_name["pod-terminate-on-delete"]["spec"]
    assert {(e["key"], e["operator"]) for e in terminate["selector"]["matchExpressions"]} == {
        (".metadata.deletionTimestamp", "Exists"), (".metadata.finalizers", "Exists"),
        (".status.phase", "In")}  # fmt: skip
    status = terminate["next"]["statusTemplate"]
    assert "phase: Failed" in status and "exitCode: 143" in status

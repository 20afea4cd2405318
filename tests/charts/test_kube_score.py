"""kube-score on what the project ships: the rendered chart and the operator's trainer pods have
no critical finding, except the ignores justified in hack/kube-score-ignores.yaml, each of them
still needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from testsupport import REPO_ROOT, find_tool

from densenet_operator import networkpolicy, pods, service
from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import Job, JobRef, parse_spec

IGNORES = yaml.safe_load((REPO_ROOT / "hack" / "kube-score-ignores.yaml").read_text())
CRITICAL = 1  # kube-score's grade of a critical finding (warnings are 5, ok 10)
JOB = JobRef(name="dn121", namespace="team-a", uid="uid-1")


@pytest.fixture(scope="module")
def kube_score() -> Path:
    """Built from the Go module proxy once per machine, cached (a minute the first time)."""
    script = REPO_ROOT / "hack" / "build-kube-score.sh"
    built = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(built.stdout.strip().splitlines()[-1])


def trainer_objects(device: str) -> list[dict[str, Any]]:
    spec = parse_spec({"model": "densenet121", "data": {"synthetic": True},
                       "device": {"type": device}, "devicesPerReplica": 2},
                      defaults=TrainerDefaults())  # fmt: skip
    job = Job(ref=JOB, spec=spec)
    return [pods.build_pod(job, 0), service.build_service(JOB),
            networkpolicy.build_network_policy(job)]  # fmt: skip


def chart_objects() -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(find_tool("helm")), "template", "dn", str(REPO_ROOT / "charts" / "densenet-operator"),
         "-n", "densenet-system"], check=True, capture_output=True, text=True)  # fmt: skip
    # The CRD and the admission policies are no workload: kube-score has nothing to say on them.
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def criticals(binary: Path, objects: list[dict[str, Any]], target: str,
              tmp_path: Path, skip: str | None = None) -> set[tuple[str, str]]:  # fmt: skip
    """(object, check id) of each critical finding, with `target`'s flags and ignores, less
    `skip` (an ignore to leave out)."""
    manifest = tmp_path / f"{target}.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    args = [str(binary), "score", "-o", "json"]
    args += [entry["flag"] for entry in IGNORES[target]["flags"]]
    for entry in IGNORES[target]["ignore"]:
        if entry["check"] != skip:
            args += ["--ignore-test", entry["check"]]
    scored = subprocess.run([*args, str(manifest)], capture_output=True, text=True)
    assert scored.stdout, scored.stderr
    return {(obj["object_name"], check["check"]["id"])
            for obj in json.loads(scored.stdout) for check in obj["checks"]
            if check["grade"] == CRITICAL and not check["skipped"]}  # fmt: skip


def test_every_ignore_says_why_and_names_a_real_check(kube_score: Path) -> None:
    listed = subprocess.run([str(kube_score), "list"], check=True, capture_output=True, text=True)
    checks = {line.split(",")[0] for line in listed.stdout.splitlines() if line}
    usage = subprocess.run([str(kube_score), "score", "--help"], capture_output=True, text=True)
    flags = {word for word in (usage.stdout + usage.stderr).split() if word.startswith("--")}
    for target in ("chart", "trainer-pod"):
        for entry in IGNORES[target]["ignore"]:
            assert entry["check"] in checks and len(entry["why"].split()) >= 10, entry
        for entry in IGNORES[target]["flags"]:
            assert entry["flag"] in flags and len(entry["why"].split()) >= 10, entry


def test_the_chart_has_no_critical_finding(kube_score: Path, tmp_path: Path) -> None:
    assert criticals(kube_score, chart_objects(), "chart", tmp_path) == set()


@pytest.mark.parametrize("device", ["cpu", "cuda", "ascend"])
def test_trainer_pods_have_no_critical_finding(
    kube_score: Path, tmp_path: Path, device: str
) -> None:
    assert criticals(kube_score, trainer_objects(device), "trainer-pod", tmp_path) == set()


@pytest.mark.parametrize("check", [e["check"] for e in IGNORES["trainer-pod"]["ignore"]])
def test_each_trainer_pod_ignore_is_still_needed(
    kube_score: Path, tmp_path: Path, check: str
) -> None:
    found = {
        found_check
        for device in ("cpu", "cuda", "ascend")
        for _, found_check in criticals(
            kube_score, trainer_objects(device), "trainer-pod", tmp_path, skip=check
        )
    }
    assert check in found, f"{check} is ignored but kube-score no longer finds it: drop it"


def test_the_cpu_limit_flag_is_still_needed(kube_score: Path, tmp_path: Path) -> None:
    objects = trainer_objects("cpu")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    plain = subprocess.run([str(kube_score), "score", "-o", "json", str(manifest)],
                           capture_output=True, text=True)  # fmt: skip
    comments = [c for obj in json.loads(plain.stdout) for check in obj["checks"]
                if check["check"]["id"] == "container-resources" for c in check["comments"] or ()]  # fmt: skip
    assert any("CPU limit" in c["summary"] for c in comments), comments

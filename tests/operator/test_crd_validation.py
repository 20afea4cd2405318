"""Bad specs are refused by the API server itself (OpenAPI + CEL in crds/), with a message a
user understands, before the operator ever sees them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.operator.ascend.test_products import MATRIX
from tests.operator.test_overrides import TEMPLATE

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

VALID: dict[str, Any] = {
    "apiVersion": "training.densenet.dev/v1alpha1",
    "kind": "DenseNetTraining",
    "metadata": {"name": "job"},
    "spec": {
        "model": "densenet161",
        "replicas": 1,
        "devicesPerReplica": 8,
        "data": {"path": "/data"},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    manifest["spec"].update(changes)
    return manifest


def renamed(name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    manifest["metadata"]["name"] = name
    return manifest


# (manifest, a fragment the refusal must contain)
INVALID = {
    "unknown model": (with_spec(model="resnet50"), 'spec.model: Unsupported value: "resnet50"'),
    "ascend devices not 1/2/4/8": (
        with_spec(devicesPerReplica=3),
        "devicesPerReplica must be 1, 2, 4 or 8",
    ),
    "zero replicas": (with_spec(replicas=0), "spec.replicas: Invalid value: 0"),
    "batch size below 1": (with_spec(recipe={"batchSize": 0}), "spec.recipe.batchSize"),
    "zero epochs": (with_spec(recipe={"epochs": 0}), "spec.recipe.epochs"),
    "negative seed": (with_spec(recipe={"seed": -1}), "spec.recipe.seed"),
    "non-positive lr": (with_spec(recipe={"lr": 0}), "spec.recipe.lr"),
    "momentum of 1": (with_spec(recipe={"momentum": 1}), "spec.recipe.momentum"),
    "negative weight decay": (with_spec(recipe={"weightDecay": -0.1}), "spec.recipe.weightDecay"),
    "warmup not shorter than training": (
        with_spec(recipe={"epochs": 5, "warmupEpochs": 5}),
        "warmupEpochs must be smaller than recipe.epochs",
    ),
    "unknown lr schedule": (
        with_spec(recipe={"lrSchedule": {"type": "linear"}}),
        'Unsupported value: "linear"',
    ),
    "unknown mode": (
        with_spec(recipe={"mode": "infer"}),
        'spec.recipe.mode: Unsupported value: "infer"',
    ),
    "unknown device type": (
        with_spec(device={"type": "tpu"}),
        'spec.device.type: Unsupported value: "tpu"',
    ),
    "unknown rank table format": (
        with_spec(rankTable={"format": "2.0"}),
        'Unsupported value: "2.0"',
    ),
    "negative backoff limit": (
        with_spec(runPolicy={"backoffLimit": -1}),
        "spec.runPolicy.backoffLimit",
    ),
    "unknown clean pod policy": (
        with_spec(runPolicy={"cleanPodPolicy": "Some"}),
        'Unsupported value: "Some"',
    ),
    "zero active deadline": (
        with_spec(runPolicy={"activeDeadlineSeconds": 0}),
        "activeDeadlineSeconds",
    ),
    "data without path": (
        with_spec(data={"synthetic": False}),
        "data.path is required unless data.synthetic is true",
    ),
    "a named data volume": (
        with_spec(data={"path": "/d", "volume": {"name": "rank-table", "emptyDir": {}}}),
        "data.volume is a volume source",
    ),
    "a named checkpoint volume": (
        with_spec(checkpoint={"volume": {"name": "dshm", "emptyDir": {}}}),
        "checkpoint.volume is a volume source",
    ),
    "relative data path": (with_spec(data={"path": "data/imagenet"}), "spec.data.path"),
    "no model": (
        {**VALID, "spec": {k: v for k, v in VALID["spec"].items() if k != "model"}},
        "spec.model: Required value",
    ),
    "misspelt field": (with_spec(replcias=2), 'unknown field "spec.replcias"'),
    "name too long for pod hostnames": (renamed("a" * 41), "at most 40 characters"),
    "a super-pod block on another product": (
        with_spec(device={"ascend": {"product": "a3", "superPodBlock": 32}}, devicesPerReplica=16),
        "superPodBlock is for device.ascend.product a3-superpod only",
    ),
    "a super-pod block that is not whole nodes": (
        with_spec(
            replicas=4,
            devicesPerReplica=16,
            device={"ascend": {"product": "a3-superpod", "superPodBlock": 24}},
        ),
        "superPodBlock must divide the world size",
    ),
    "rank table 1.2 outside a super pod": (
        with_spec(rankTable={"format": "1.2"}),
        'rankTable.format "1.2" is for A3 super pods',
    ),
    "unknown Ascend product": (
        with_spec(device={"ascend": {"product": "910c"}}),
        'spec.device.ascend.product: Unsupported value: "910c"',
    ),
    # Pod overrides that cannot work (spec.podTemplate, spec.network; podtemplate.py).
    "an override volume named like the operator's": (
        with_spec(podTemplate={"spec": {"volumes": [{"name": "checkpoints", "emptyDir": {}}]}}),
        "may not be named rank-table, dshm",
    ),
    "a sidecar named trainer": (
        with_spec(podTemplate={"spec": {"sidecars": [{"name": "trainer", "image": "x:1"}]}}),
        "may not be named trainer",
    ),
    "two sidecars of one name": (
        with_spec(
            podTemplate={
                "spec": {"sidecars": [{"name": "a", "image": "x:1"}, {"name": "a", "image": "y:1"}]}
            }
        ),
        'spec.podTemplate.spec.sidecars[1]: Duplicate value: {"name":"a"}',
    ),
    "a sidecar without an image": (
        with_spec(podTemplate={"spec": {"sidecars": [{"name": "a"}]}}),
        "spec.podTemplate.spec.sidecars[0].image: Required value",
    ),
    "a restart policy override": (
        with_spec(podTemplate={"spec": {"restartPolicy": "OnFailure"}}),
        "restartPolicy is the operator's",
    ),
    "an unknown pod field": (
        with_spec(podTemplate={"spec": {"nodeName": "n1"}}),
        'unknown field "spec.podTemplate.spec.nodeName"',
    ),
    "a mount of a missing volume": (
        with_spec(podTemplate={"trainer": {"volumeMounts": [{"name": "x", "mountPath": "/x"}]}}),
        "may mount only volumes of podTemplate.spec.volumes",
    ),
    "a mount over the rank table": (
        with_spec(
            podTemplate={
                "spec": {"volumes": [{"name": "x", "emptyDir": {}}]},
                "trainer": {"volumeMounts": [{"name": "x", "mountPath": "/dev/shm"}]},
            }
        ),
        "may not mount at the operator's paths",
    ),
    "a sidecar on the rendezvous port": (
        with_spec(
            network={"masterPort": 30000},
            podTemplate={
                "spec": {
                    "sidecars": [{"name": "s", "image": "x:1", "ports": [{"containerPort": 30000}]}]
                }
            },
        ),
        "may not use network.masterPort",
    ),
    "a host port unlike its container port": (
        with_spec(
            podTemplate={
                "spec": {
                    "hostNetwork": True,
                    "sidecars": [
                        {
                            "name": "s",
                            "image": "x:1",
                            "ports": [{"containerPort": 80, "hostPort": 81}],
                        }
                    ],
                }
            }
        ),
        "hostPort must equal containerPort",
    ),
    "a privileged master port": (with_spec(network={"masterPort": 80}), "spec.network.masterPort"),
    "the job's own label": (
        with_spec(podTemplate={"metadata": {"labels": {"training.densenet.dev/gang": "0"}}}),
        "the operator finds the job's pods by them",
    ),
    "a topology variable": (
        with_spec(env=[{"name": "PET_MASTER_ADDR", "value": "elsewhere"}]),
        "the operator sets them",
    ),
    "too many pull secrets": (
        with_spec(imagePullSecrets=[{"name": f"s{i}"} for i in range(9)]),
        "spec.imagePullSecrets: Too many: 9: must have at most 8 items",
    ),
    "world size too large": (
        with_spec(replicas=4096, devicesPerReplica=8),
        "world size) must be at most 16384",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_is_refused_with_a_readable_message(
    kubectl: Any, crd: None, namespace: str, case: str
) -> None:
    manifest, fragment = INVALID[case]
    result = kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert fragment in result.stderr, f"{case}: {result.stderr}"


def test_the_valid_base_is_accepted(kubectl: Any, crd: None, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=VALID)


def test_a_full_pod_template_is_accepted(kubectl: Any, crd: None, namespace: str) -> None:
    manifest = with_spec(podTemplate=TEMPLATE, imagePullSecrets=[{"name": "regcred"}],
                         network={"masterPort": 31500, "policy": {"egress": []}})  # fmt: skip
    kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest)


def test_the_network_settings_cannot_change(kubectl: Any, crd: None, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=VALID)
    changed = with_spec(network={"masterPort": 31000})
    result = kubectl("apply", "-n", namespace, "-f", "-", input=changed, check=False)
    assert result.returncode != 0
    assert "network is immutable" in result.stderr


def test_replicas_cannot_change_under_a_running_job(
    kubectl: Any, crd: None, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=VALID)
    result = kubectl("apply", "-n", namespace, "-f", "-", input=with_spec(replicas=2), check=False)
    assert result.returncode != 0
    assert "replicas is immutable" in result.stderr


def _product_case(product: str, replicas: int, devices: int) -> dict[str, Any]:
    return with_spec(replicas=replicas, devicesPerReplica=devices,
                     device={"type": "ascend", "ascend": {"product": product}})  # fmt: skip


@pytest.mark.parametrize(
    ("product", "replicas", "devices", "allowed"),
    MATRIX,
)
def test_each_product_s_device_counts_on_the_api_server(
    kubectl: Any,
    crd: None,
    namespace: str,
    product: str,
    replicas: int,
    devices: int,
    allowed: bool,
) -> None:
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                     input=_product_case(product, replicas, devices), check=False)  # fmt: skip
    if allowed:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert f"(device.ascend.product {product})" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_is_accepted_by_the_api_server(
    kubectl: Any, crd: None, namespace: str, example: Path
) -> None:
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr

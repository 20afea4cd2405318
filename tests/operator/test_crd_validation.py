"""Bad specs are refused by the API server itself (OpenAPI + CEL in crds/), with a message a
user understands, before the operator ever sees them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.operator.test_ascend import MATRIX

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

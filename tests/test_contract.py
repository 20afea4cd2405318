"""The contract package: light enough for both images, and the one source of docs/contract.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import densenet_contract
from densenet_contract import cann
from densenet_contract.__main__ import render

ROOT = Path(__file__).resolve().parents[1]


def test_docs_contract_is_generated_from_the_package():
    written = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert written == render(), "run `python -m densenet_contract --write`"


def test_the_contract_imports_neither_side_s_dependencies():
    code = (
        "import sys, densenet_contract, densenet_contract.recipe, densenet_contract.schema,"
        " densenet_contract.cann;"
        "heavy = {'torch', 'kopf', 'kubernetes', 'kubernetes_asyncio', 'yaml'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=ROOT, env={"PYTHONPATH": str(ROOT / "operator")},
    ).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_every_device_type_maps_to_a_torch_device_and_backend():
    assert densenet_contract.BACKEND_BY_TORCH_DEVICE == {
        "npu": "hccl",
        "cuda": "nccl",
        "cpu": "gloo",
    }
    assert tuple(densenet_contract.DEVICE_KINDS) == densenet_contract.DEVICE_TYPES


# ---------------------------------------------------------------- CANN, torch_npu, the images


def test_cann_8_3_rc1_pairs_only_with_the_torch_npu_of_its_branch():
    assert [(r.torch_npu, r.torch) for r in cann.torch_npu_for("8.3.RC1")] == [
        ("2.8.0", "2.8.0"), ("2.7.1", "2.7.1"), ("2.6.0.post3", "2.6.0"), ("2.1.0.post17", "2.1.0"),
    ]  # fmt: skip
    assert cann.pairs("8.3.RC1", "2.8.0", "2.8.0")
    # What `torch-npu>=2.4` took before: the newest, built for another CANN.
    assert not cann.pairs("8.3.RC1", "2.14.0", "2.14.0")
    assert not cann.pairs("8.3.RC1", "2.8.0.post2", "2.8.0")  # CANN 8.5.0's
    assert not cann.pairs("8.3.RC1", "2.8.0", "2.7.1")


def test_each_table_row_names_its_release_branch_and_torch():
    for release in cann.COMPATIBILITY:
        assert release.branch.startswith(f"v{release.torch}-"), release
        assert release.torch_npu.startswith(release.torch), release
        cann.cann_version_key(release.cann)  # a CANN version it can order


@pytest.mark.parametrize(
    ("older", "newer"),
    [("8.0.RC3", "8.0.0"), ("8.2.RC1", "8.3.RC1"), ("8.3.RC1", "8.3.RC2"), ("8.3.RC2", "8.5.0"),
     ("8.5.0", "9.0.0"), ("9.0.0", "9.1.0")],
)  # fmt: skip
def test_cann_versions_order_release_candidates_before_their_release(older, newer):
    assert cann.cann_version_key(older) < cann.cann_version_key(newer)


def test_host_ip_is_written_for_cann_8_3_rc1_on_only():
    assert cann.HOST_IP_SINCE_CANN == "8.3.RC1"
    assert not cann.rank_table_host_ip_safe("8.2.RC1")
    assert cann.rank_table_host_ip_safe("8.3.RC1") and cann.rank_table_host_ip_safe("9.0.0")
    with pytest.raises(ValueError, match="not a CANN version"):
        cann.cann_version_key("latest")


def test_each_family_has_its_own_cann_base_image_with_its_kernels():
    images = cann.IMAGE_PAIRS
    assert {family: image.base_image for family, image in images.items()} == {
        "910": "ascendai/cann:8.3.rc1-910-ubuntu22.04-py3.11",
        "910b": "ascendai/cann:8.3.rc1-910b-ubuntu22.04-py3.11",
        "a3": "ascendai/cann:8.3.rc1-a3-ubuntu22.04-py3.11",
    }
    assert len({image.kernels for image in images.values()}) == len(images)
    for image in images.values():
        first = image.base_image.split("/")[0]
        assert "." not in first and ":" not in first, f"no registry host: {image.base_image}"
    assert cann.trainer_image_tag("0.1.0", "910b") == "0.1.0-910b"

"""The contract package: light enough for both images, and the one source of docs/contract.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import densenet_contract
from densenet_contract.__main__ import render

ROOT = Path(__file__).resolve().parents[1]


def test_docs_contract_is_generated_from_the_package():
    written = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert written == render(), "run `python -m densenet_contract --write`"


def test_the_contract_imports_neither_side_s_dependencies():
    code = (
        "import sys, densenet_contract, densenet_contract.recipe, densenet_contract.schema;"
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

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from densenet_trainer.checkpoint import (
    checkpoint_name,
    extract_state_dict,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    load_pretrained,
    plain_args,
    prune_checkpoints,
    save_atomic,
)


class Unpicklable:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("killed mid-write")


def test_save_atomic_replaces_the_file_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.pth"
    save_atomic({"epoch": 1, "w": torch.ones(2)}, path)
    save_atomic({"epoch": 2, "w": torch.zeros(2)}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert os.listdir(path.parent) == ["checkpoint.pth"]  # no temp file left


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_atomic({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_newest_checkpoint_is_found_by_step_and_old_ones_pruned(tmp_path: Path) -> None:
    for epochs, step in [(1, 10), (2, 20), (10, 100), (3, 30)]:
        save_atomic({"epoch": epochs - 1, "step": step}, tmp_path / checkpoint_name(epochs, step))
    (tmp_path / "model_best.pth").write_bytes(b"")
    (tmp_path / f".{checkpoint_name(11, 110)}.abc.tmp").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        checkpoint_name(1, 10),
        checkpoint_name(2, 20),
        checkpoint_name(3, 30),
        checkpoint_name(10, 100),
    ]
    found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 100
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == [checkpoint_name(1, 10), checkpoint_name(2, 20)]
    assert len(list_checkpoints(tmp_path)) == 2
    assert (tmp_path / "model_best.pth").exists()
    assert prune_checkpoints(tmp_path, keep=0) == []


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    save_atomic({"step": 10}, tmp_path / checkpoint_name(1, 10))
    (tmp_path / checkpoint_name(2, 20)).write_bytes(b"garbage")
    found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1] == {"step": 10}


def test_no_checkpoint_is_not_an_error(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "does-not-exist") is None


def test_args_are_stored_as_plain_values() -> None:
    assert plain_args({"data": Path("/d"), "lr": 0.1, "amp": True, "resume": None}) == {
        "data": "/d",
        "lr": 0.1,
        "amp": True,
        "resume": None,
    }


def legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as in torchvision's published DenseNet files (norm.1, no num_batches_tracked),
    saved from a DDP-wrapped model ("module." prefix)."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for name in ("norm", "relu", "conv"):
            for index in ("1", "2"):
                key = key.replace(f".{name}{index}.", f".{name}.{index}.")
        renamed["module." + key] = value
    return renamed


def test_pretrained_weights_load_from_legacy_and_ddp_files(tmp_path: Path) -> None:
    source = torchvision.models.densenet121(weights=None, num_classes=10)
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy_keys(source.state_dict()), path)
    assert any(".norm.1." in key for key in torch.load(path, weights_only=True))
    target = torchvision.models.densenet121(weights=None, num_classes=10)
    assert load_pretrained(target, path) == []
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_pretrained_with_another_class_count_keeps_a_fresh_classifier(tmp_path: Path) -> None:
    source = torchvision.models.densenet121(weights=None, num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save({"model": source.state_dict(), "epoch": 89}, path)
    target = torchvision.models.densenet121(weights=None, num_classes=10)
    fresh = load_pretrained(target, path)
    assert fresh == ["classifier.bias", "classifier.weight"]
    assert torch.equal(target.features.conv0.weight, source.features.conv0.weight)


def test_pretrained_from_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d161.pth"
    torch.save(torchvision.models.densenet161(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not match"):
        load_pretrained(torchvision.models.densenet121(weights=None), path)


def test_extract_state_dict_accepts_a_checkpoint() -> None:
    weights = {"module.fc.weight": torch.ones(1)}
    assert list(extract_state_dict({"model": weights, "epoch": 3})) == ["fc.weight"]


# ---------------------------------------------------------------- checkpoints load anywhere

# A fresh interpreter in which `import torch_npu` fails, as on any host without CANN: it loads
# the checkpoint as --mode evaluate, --pretrained and a resume on another device type do, and
# prints the devices its storages were saved on (from the pickle's persistent ids).
LOAD_WITHOUT_TORCH_NPU = """
import pickle, sys, zipfile
sys.modules["torch_npu"] = None  # importing it now raises ImportError
import torch
path = sys.argv[1]
checkpoint = torch.load(path, map_location="cpu", weights_only=True)
assert "torch_npu" not in sys.modules or sys.modules["torch_npu"] is None
locations = set()
class Storages(pickle.Unpickler):
    def persistent_load(self, pid):
        locations.add(pid[3])  # ('storage', storage type, key, location, numel)
        return None
    def find_class(self, module, name):
        return Anything
class Anything(dict):  # stands in for every class, so only the storages are looked at
    def __init__(self, *args, **kwargs): pass
    def __call__(self, *args, **kwargs): return Anything()
    def __setstate__(self, state): pass
    def append(self, value): pass
    def extend(self, values): pass
with zipfile.ZipFile(path) as archive:
    pickled = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
    Storages(archive.open(pickled)).load()
print(sorted(locations), len(checkpoint["model"]), sorted(checkpoint["optimizer"]["state"])[:1])
"""

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_of_device_tensors_loads_where_torch_npu_never_was(
    tmp_path: Path, device: str
) -> None:
    """Saved from the device (weights and SGD momentum live there), loaded with
    weights_only=True in a process that cannot import torch_npu: every storage is a host one.
    On an NPU the same save would otherwise pickle torch_npu's rebuild function."""
    import subprocess
    import sys

    # Weights, BatchNorm buffers and SGD momentum: every kind of tensor a checkpoint holds.
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(3),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8, device=device)).sum().backward()
    optimizer.step()
    path = save_atomic(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pth"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_TORCH_NPU, str(path)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    locations, tensors, _ = loaded.stdout.split(" ", 2)
    assert locations == "['cpu']"  # not one storage of the device it was saved from
    assert int(tensors) == len(model.state_dict())


def test_to_cpu_keeps_the_structure_and_a_state_dicts_metadata() -> None:
    from collections import OrderedDict

    from densenet_trainer.checkpoint import to_cpu

    state = torchvision.models.densenet121(num_classes=3).state_dict()
    nested = {"model": state, "rng": [torch.ones(2), (torch.zeros(1), 3)], "epoch": 4}
    copied = to_cpu(nested)
    assert isinstance(copied["model"], OrderedDict)
    assert copied["model"]._metadata == state._metadata  # type: ignore[attr-defined]
    assert list(copied["model"]) == list(state)
    assert isinstance(copied["rng"][1], tuple) and copied["rng"][1][1] == 3
    assert copied["epoch"] == 4
    assert all(t.device.type == "cpu" for t in copied["model"].values())

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from densenet_trainer.data import (
    DecodeTolerantImageFolder,
    SyntheticBatches,
    UnpaddedDistributedSampler,
    build_train_loader,
    build_val_loader,
    collate_skipping_failed,
    train_transform,
    val_resize_size,
    val_transform,
)
from densenet_trainer.distributed import DistContext

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def write_image_folder(root: Path, per_class: int = 3, corrupt: tuple[str, ...] = ()) -> Path:
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                color = (40 * i, 200 if label == "cat" else 0, 90)
                Image.new("RGB", (20, 14), color).save(folder / f"{i}.jpg", format="JPEG")
    for relative in corrupt:
        (root / relative).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def test_val_resize_keeps_the_seeds_256_to_224_ratio() -> None:
    assert val_resize_size(224) == 256
    assert val_resize_size(32) == 36
    image = Image.new("RGB", (50, 40))
    assert val_transform(32)(image).shape == (3, 32, 32)
    assert train_transform(32)(image).shape == (3, 32, 32)


def test_a_corrupt_training_image_is_replaced_and_counted(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, corrupt=("train/cat/bad.jpg",))
    dataset = DecodeTolerantImageFolder(root / "train", train_transform(16), replace_failed=True)
    bad = [i for i, (path, _) in enumerate(dataset.samples) if path.endswith("bad.jpg")]
    assert len(bad) == 1
    image, _, failed = dataset[bad[0]]
    assert image is not None and image.shape == (3, 16, 16)
    assert failed == (str(root / "train/cat/bad.jpg"),)
    # in a loader with a loader-worker process the failure still travels back with the batch
    loader, _, _ = build_train_loader(root, 16, batch_size=7, loader_workers=1, ctx=CPU, seed=0)
    images, targets, failed_paths = next(iter(loader))
    assert images.shape == (7, 3, 16, 16) and targets.shape == (7,)
    assert failed_paths == [str(root / "train/cat/bad.jpg")]


def test_a_corrupt_validation_image_is_dropped_and_counted(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, corrupt=("val/dog/bad.jpg",))
    loader, dataset = build_val_loader(root, 16, batch_size=4, loader_workers=0, ctx=CPU)
    assert len(dataset) == 7
    batches = list(loader)
    assert sum(images.shape[0] for images, _, _ in batches) == 6  # only real images
    assert [path for _, _, paths in batches for path in paths] == [str(root / "val/dog/bad.jpg")]


def test_a_batch_of_only_failures_collates_to_empty_tensors() -> None:
    images, targets, failed = collate_skipping_failed([(None, 1, ("a",)), (None, 0, ("b",))])
    assert images.shape[0] == 0 and targets.shape == (0,) and failed == ["a", "b"]


def test_a_broken_dataset_fails_loudly(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "x"
    folder.mkdir(parents=True)
    for i in range(20):
        (folder / f"{i}.png").write_bytes(b"not a png")
    dataset = DecodeTolerantImageFolder(tmp_path / "train", train_transform(8), replace_failed=True)
    with pytest.raises(RuntimeError, match="in a row failed to decode"):
        dataset[0]


@pytest.mark.parametrize(("length", "world_size"), [(7, 2), (10, 3), (2, 4)])
def test_unpadded_sampler_covers_every_sample_once(length: int, world_size: int) -> None:
    shards = [list(UnpaddedDistributedSampler(length, r, world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert [len(UnpaddedDistributedSampler(length, r, world_size)) for r in range(world_size)] == [
        len(shard) for shard in shards
    ]


def test_train_loader_gives_every_rank_the_same_number_of_full_batches(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, per_class=5)  # 10 images over 3 ranks
    lengths = set()
    for rank in range(3):
        ctx = DistContext(rank, 3, rank, torch.device("cpu"), "gloo")
        loader, _, sampler = build_train_loader(
            root, 8, batch_size=2, loader_workers=0, ctx=ctx, seed=0
        )
        sampler.set_epoch(1)
        lengths.add(tuple(images.shape[0] for images, _, _ in loader))
    assert lengths == {(2, 2)}


def test_synthetic_batches_are_made_once_on_the_device() -> None:
    batches = SyntheticBatches(4, 16, 10, steps=3, device=CPU.device, channels_last=True)
    seen = list(batches)
    assert len(seen) == len(batches) == 3
    images, targets, failed = seen[0]
    assert images.shape == (4, 3, 16, 16) and images.device == CPU.device
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert int(targets.max()) < 10 and failed == []
    assert all(batch[0] is images for batch in seen)  # no per-step generation or copy


@pytest.mark.parametrize(
    ("device_type", "version", "expected"),
    [
        ("cpu", "2.8.0", {"pin_memory": False}),
        ("cuda", "2.4.1", {"pin_memory": True}),
        # Before 2.6 the DataLoader pins only for CUDA unless told the device.
        ("npu", "2.4.0", {"pin_memory": True, "pin_memory_device": "npu"}),
        ("npu", "2.5.1+cpu", {"pin_memory": True, "pin_memory_device": "npu"}),
        # From 2.6 on it pins for the current accelerator (torch_npu's).
        ("npu", "2.8.0+cpu", {"pin_memory": True}),
        ("npu", "2.10.0", {"pin_memory": True}),
    ],
)
def test_npu_batches_are_pinned_on_every_torch(
    device_type: str, version: str, expected: dict[str, object]
) -> None:
    from densenet_trainer.data import pinning

    assert pinning(device_type, version) == expected


def test_the_pinning_settings_are_ones_this_torchs_dataloader_takes() -> None:
    from densenet_trainer.data import pinning

    loader = DataLoader(list(range(4)), batch_size=2, **pinning("npu", "2.4.0"))  # type: ignore[arg-type]
    assert loader.pin_memory and loader.pin_memory_device == "npu"

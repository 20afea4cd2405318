"""Data: ImageFolder train/ and val/ with the seeds' transforms, and on-device synthetic batches."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets, transforms

from densenet_trainer.distributed import DistContext
from densenet_trainer.stopping import ignore_stop_signals_in_loader_worker

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What PIL raises for a truncated, corrupt or unsupported file (UnidentifiedImageError is an
# OSError); anything else is a bug and should surface.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
# A training sample whose image fails is replaced by the next one; this many failures in a
# row means the dataset itself is broken.
MAX_CONSECUTIVE_DECODE_FAILURES = 16

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]
# What the training sampler yields and the training dataset takes: (epoch, sample index).
SampleKey = tuple[int, int]


def val_resize_size(image_size: int) -> int:
    """The seeds resize to 256 for a 224 crop; keep that ratio at other sizes."""
    return image_size * 256 // 224


def train_transform(image_size: int, min_crop_scale: float = 0.08) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def val_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(val_resize_size(image_size)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as file:
        image = Image.open(file)
        # convert() forces the full decode inside the caller's try block.
        return image.convert("RGB")


class DecodeTolerantImageFolder(datasets.ImageFolder):
    """An ImageFolder whose undecodable images are skipped and reported, not fatal.

    Each item is ``(image or None, target, failed_paths)``. With ``replace_failed`` (training)
    a failed image is replaced by the next decodable one, so every rank keeps the same batch
    size: DDP needs all ranks to step together and BatchNorm needs more than one sample.
    Without it (evaluation) the item's image is None and the collate function drops it, so
    accuracy counts only real images.
    """

    def __init__(self, root: str | Path, transform: transforms.Compose, *, replace_failed: bool):
        super().__init__(str(root), transform=transform, loader=load_rgb)
        self.replace_failed = replace_failed

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, ...]]:  # type: ignore[override]
        failed: list[str] = []
        attempts = MAX_CONSECUTIVE_DECODE_FAILURES if self.replace_failed else 1
        target = self.samples[index][1]
        for offset in range(attempts):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)
            except DECODE_ERRORS:
                failed.append(path)
                continue
            assert self.transform is not None
            return self.transform(image), target, tuple(failed)
        if self.replace_failed:
            raise RuntimeError(
                f"{attempts} images in a row failed to decode, starting at {failed[0]}; "
                "is the dataset readable?"
            )
        return None, target, tuple(failed)


def collate_skipping_failed(
    items: Sequence[tuple[torch.Tensor | None, int, tuple[str, ...]]],
) -> Batch:
    """Stack the decoded samples; return the paths of the failed ones beside them."""
    failed = [path for _, _, paths in items for path in paths]
    kept = [(image, target) for image, target, _ in items if image is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), failed
    images = torch.stack([image for image, _ in kept])
    targets = torch.tensor([target for _, target in kept], dtype=torch.long)
    return images, targets, failed


class UnpaddedDistributedSampler(Sampler[int]):
    """Rank r takes indices r, r+W, r+2W, ...: every sample exactly once over all ranks.

    DistributedSampler pads the last round with repeated samples so all ranks get the same
    count; that would count some validation images twice.
    """

    def __init__(self, dataset_len: int, rank: int, world_size: int):
        self.indices = range(rank, dataset_len, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random transforms: a function of (seed, epoch, index) only,
    never of which loader process drew the sample or what it drew before."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch.manual_seed takes < 2**63


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's CPU generator and Python's ``random`` seeded with ``seed`` inside, and back to
    their previous states after (with --workers 0 this runs in the training process)."""
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


class SeededSamples(Dataset[Any]):
    """Wraps a dataset so that item ``(epoch, index)`` is ``dataset[index]`` drawn with the
    random transforms seeded by :func:`sample_seed`: a resumed run sees exactly the augmented
    images of an uninterrupted one, whatever the number of loader processes."""

    def __init__(self, dataset: Dataset[Any], seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        epoch, index = key
        with seeded_rng(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]


class ResumableDistributedSampler(DistributedSampler[int]):
    """DistributedSampler's order (one permutation per epoch from seed + epoch, padded, split
    by rank), yielding ``(epoch, index)`` keys, and able to start an epoch at ``position``:
    the samples this rank already trained are skipped without being loaded."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.position = 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """The next pass is epoch ``epoch`` from this rank's ``position``-th sample on."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"position {position} outside the epoch's {self.num_samples}")
        super().set_epoch(epoch)
        self.position = position

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        indices = list(super().__iter__())[self.position :]
        return ((self.epoch, index) for index in indices)

    def __len__(self) -> int:
        return self.num_samples - self.position

    def state(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "num_replicas": self.num_replicas,
            "num_samples": self.num_samples,
        }


def pinning(device_type: str, torch_version: str = torch.__version__) -> dict[str, object]:
    """The DataLoader's pin_memory settings for a device type.

    Pinned host memory makes the host-to-device copy asynchronous; it buys nothing on cpu.
    Before torch 2.6 the DataLoader pins for CUDA unless told another device
    (``pin_memory_device``), and pins nothing at all without CUDA: on npu it was silently off.
    From 2.6 on it pins for the current accelerator, which torch_npu registers.
    """
    if device_type not in ("cuda", "npu"):
        return {"pin_memory": False}
    if device_type == "npu" and _release(torch_version) < (2, 6):
        return {"pin_memory": True, "pin_memory_device": "npu"}
    return {"pin_memory": True}


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _loader_kwargs(loader_workers: int, device: torch.device) -> dict[str, object]:
    """DataLoader settings; ``loader_workers`` are its processes (0: load in this process)."""
    kwargs: dict[str, object] = {
        "num_workers": loader_workers,
        **pinning(device.type),
        # Keeping loader workers across epochs avoids re-forking (and re-importing) each epoch.
        "persistent_workers": loader_workers > 0,
        "collate_fn": collate_skipping_failed,
        "worker_init_fn": ignore_stop_signals_in_loader_worker,
    }
    if loader_workers > 0:
        kwargs["prefetch_factor"] = 4
    return kwargs


def build_train_loader(
    root: str | Path,
    image_size: int,
    batch_size: int,
    loader_workers: int,
    ctx: DistContext,
    seed: int | None,
    min_crop_scale: float = 0.08,
) -> tuple[DataLoader[Batch], DecodeTolerantImageFolder, ResumableDistributedSampler]:
    """The training loader: ``seed`` (0 when None) orders the samples and seeds each one's
    augmentation (:class:`SeededSamples`); the sampler can start an epoch mid-way."""
    dataset = DecodeTolerantImageFolder(
        Path(root) / "train", train_transform(image_size, min_crop_scale), replace_failed=True
    )
    seed = 0 if seed is None else seed
    sampler = ResumableDistributedSampler(dataset, ctx.world_size, ctx.rank, seed)
    generator = torch.Generator()
    generator.manual_seed(seed + ctx.rank)  # loader-process seeds; augmentation has its own
    loader: DataLoader[Batch] = DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        # Every rank then runs the same number of equal-sized steps, and no step sees a
        # single-sample batch, which BatchNorm cannot train on.
        drop_last=True,
        generator=generator,
        **_loader_kwargs(loader_workers, ctx.device),  # type: ignore[arg-type]
    )
    if len(loader) == 0:
        raise ValueError(
            f"{root}/train has {len(dataset)} images: fewer than one batch of {batch_size} "
            f"per rank over {ctx.world_size} ranks"
        )
    return loader, dataset, sampler


def build_val_loader(
    root: str | Path,
    image_size: int,
    batch_size: int,
    loader_workers: int,
    ctx: DistContext,
) -> tuple[DataLoader[Batch], DecodeTolerantImageFolder]:
    dataset = DecodeTolerantImageFolder(
        Path(root) / "val", val_transform(image_size), replace_failed=False
    )
    sampler = UnpaddedDistributedSampler(len(dataset), ctx.rank, ctx.world_size)
    loader: DataLoader[Batch] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        **_loader_kwargs(loader_workers, ctx.device),  # type: ignore[arg-type]
    )
    return loader, dataset


@dataclass
class SyntheticBatches:
    """One random batch made once on the device and yielded ``steps`` times.

    The point of synthetic mode is to measure the model and the collectives without the
    input pipeline, so the tensors never go through a loader or a host-to-device copy.
    """

    batch_size: int
    image_size: int
    num_classes: int
    steps: int
    device: torch.device
    channels_last: bool = False
    seed: int = 0
    position: int = 0  # steps of the current epoch already trained (a mid-epoch resume)

    def __post_init__(self) -> None:
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        images = torch.randn(
            self.batch_size, 3, self.image_size, self.image_size, generator=generator
        )
        targets = torch.randint(0, self.num_classes, (self.batch_size,), generator=generator)
        self.images = images.to(self.device)
        if self.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.targets = targets.to(self.device)

    def __len__(self) -> int:
        return self.steps - self.position

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(len(self)):
            yield self.images, self.targets, []

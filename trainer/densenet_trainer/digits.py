"""Write scikit-learn's bundled digits (1797 8x8 images, 10 classes) as an ImageFolder.

Real image files in ``train/<class>/`` and ``val/<class>/``, upscaled so a DenseNet's
stride-32 stem has something to work on: a small dataset that needs no download, for tests
and demos. ``python -m densenet_trainer.digits OUT_DIR [--size 32] [--format png]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": "PNG", "jpeg": "JPEG"}


@dataclass(frozen=True)
class DigitsSplit:
    root: Path
    train_count: int
    val_count: int
    classes: tuple[str, ...]


def write_digits_imagefolder(
    out_dir: str | Path,
    size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_format: str = "png",
) -> DigitsSplit:
    """Write a stratified train/val split of the digits as ``size`` x ``size`` images."""
    # Imported here: scikit-learn is a test/demo dependency, not one of the trainer's.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {sorted(FORMATS)}")
    digits = load_digits()
    images = np.asarray(digits.images)  # (n, 8, 8), values 0..16
    labels = np.asarray(digits.target)
    val_count = max(1, round(len(labels) * val_fraction))
    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        index, test_size=val_count, stratify=labels, random_state=seed
    )
    root = Path(out_dir)
    classes = tuple(str(c) for c in sorted(set(labels.tolist())))
    extension = "jpg" if image_format == "jpeg" else image_format
    for split, split_idx in (("train", train_idx), ("val", val_idx)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in split_idx:
            pixels = (images[i] * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC)
            path = root / split / str(labels[i]) / f"digit_{i:04d}.{extension}"
            image.save(path, format=FORMATS[image_format])
    return DigitsSplit(
        root=root, train_count=len(train_idx), val_count=len(val_idx), classes=classes
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m densenet_trainer.digits",
        description="Write scikit-learn's digits as an ImageFolder (train/ and val/).",
    )
    parser.add_argument("out_dir", help="directory to create train/ and val/ in")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument("--format", choices=sorted(FORMATS), default="png", help="file format")
    args = parser.parse_args(argv)
    split = write_digits_imagefolder(
        args.out_dir, args.size, args.val_fraction, args.seed, args.format
    )
    print(
        f"wrote {split.train_count} train and {split.val_count} val images of "
        f"{len(split.classes)} classes to {split.root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

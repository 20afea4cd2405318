from __future__ import annotations

from pathlib import Path

from PIL import Image

from densenet_trainer.digits import main, write_digits_imagefolder


def test_digits_are_written_as_an_image_folder(tmp_path: Path) -> None:
    split = write_digits_imagefolder(tmp_path, size=16, val_fraction=0.2, seed=0)
    assert (split.train_count, split.val_count) == (1438, 359)
    assert split.classes == tuple(str(d) for d in range(10))
    train = sorted((tmp_path / "train").glob("*/*.png"))
    val = sorted((tmp_path / "val").glob("*/*.png"))
    assert (len(train), len(val)) == (1438, 359)
    assert not {p.name for p in train} & {p.name for p in val}  # disjoint split
    with Image.open(train[0]) as image:
        assert image.format == "PNG" and image.size == (16, 16)
        assert image.getextrema()[1] > 128  # upscaled real strokes, not a blank


def test_module_cli_writes_jpeg(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([str(tmp_path), "--size", "24", "--format", "jpeg", "--val-fraction", "0.5"]) == 0
    assert "wrote 899 train and 898 val images of 10 classes" in capsys.readouterr().out
    with Image.open(next((tmp_path / "val" / "7").glob("*.jpg"))) as image:
        assert image.format == "JPEG" and image.size == (24, 24)

"""Checkpoints: atomic writes, finding the newest, pruning, and loading local weights."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("densenet_trainer")

BEST_MODEL_NAME = "model_best.pth"
_CHECKPOINT_RE = re.compile(r"^checkpoint-epoch(?P<epoch>\d+)-step(?P<step>\d+)\.pth$")
# torchvision's published DenseNet weights predate a module rename ("norm.1" -> "norm1");
# torchvision remaps them with this pattern when it downloads them, so do the same for a
# local copy of those files.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def checkpoint_name(epochs_completed: int, step: int) -> str:
    """File name of a checkpoint; the step orders them (it only grows within a job)."""
    return f"checkpoint-epoch{epochs_completed:04d}-step{step:09d}.pth"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it copied to host memory (containers rebuilt, a state
    dict's ``_metadata`` kept).

    A tensor saved on its device is pickled with that device's rebuild function: torch_npu
    2.7/2.8 pickles NPU tensors through ``torch_npu.utils.storage._rebuild_npu_tensor``, which
    ``torch.load(weights_only=True)`` refuses in any process without torch_npu. Host copies
    load anywhere (evaluation, --pretrained, a resume on another device type); loading puts
    them back on the device (load_state_dict copies, the optimizer casts its state).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        copied = type(obj)() if isinstance(obj, OrderedDict) else {}
        copied.update((key, to_cpu(value)) for key, value in obj.items())
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            copied._metadata = metadata  # type: ignore[attr-defined]  # load_state_dict reads it
        return copied
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save (tensors as host copies: :func:`to_cpu`) to a temporary file in the same
    directory, then os.replace it into place.

    A reader (or a restarted job) sees either the previous complete file or the new
    complete file, never a partial one, even if this process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(to_cpu(obj), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by step, then epoch)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: list[tuple[int, int, Path]] = []
    for entry in directory.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match["step"]), int(match["epoch"]), entry))
    return [path for _, _, path in sorted(found)]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data; it must not be able to run code when loaded.
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_latest_checkpoint(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; an unreadable one is logged and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except Exception as exc:  # a damaged file must not block resuming from an older one
            logger.warning("skipping unreadable checkpoint %s: %s", path, exc)
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (keep=0 keeps everything)."""
    if keep <= 0:
        return []
    removed = list_checkpoints(directory)[:-keep]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def capture_rng_state(device_type: str) -> dict[str, Any]:
    """This process's random generators: torch's CPU one, the device's, Python's ``random``
    (the trainer uses no numpy randomness)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif device_type == "npu":
        state["npu"] = torch.npu.get_rng_state_all()  # type: ignore[attr-defined]
    return state


def restore_rng_state(state: Mapping[str, Any], device_type: str) -> None:
    """Put the generators back where :func:`capture_rng_state` found them."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device_type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    elif device_type == "npu" and "npu" in state:
        torch.npu.set_rng_state_all(state["npu"])  # type: ignore[attr-defined]


def plain_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The run's arguments as plain values (what a weights_only load accepts)."""
    return {
        key: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in args.items()
    }


def extract_state_dict(loaded: Any) -> dict[str, torch.Tensor]:
    """The model weights from a raw state_dict, a checkpoint, or a DDP-saved state_dict."""
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]
    elif isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"not a state_dict or checkpoint: {type(loaded).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        key = key.removeprefix("module.")
        match = _LEGACY_DENSENET_KEY.match(key)
        if match:
            key = match[1] + match[2]
        state[key] = value
    return state


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load local weights into ``model``; returns the keys left at their fresh initialization.

    A classifier trained for another number of classes is skipped (fine-tuning); any other
    mismatch is an error.
    """
    state = extract_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
    own = model.state_dict()
    skipped = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    if any(not key.startswith("classifier.") for key in skipped):
        raise ValueError(f"{path}: shapes do not match this architecture for {skipped}")
    for key in skipped:
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Files saved before BatchNorm had num_batches_tracked lack it; the counter only matters
    # for momentum=None, which DenseNet does not use.
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if unexpected or any(not key.startswith("classifier.") for key in missing):
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    return sorted(set(missing) | set(skipped))

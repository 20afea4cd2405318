"""Trainer throughput: the trainer's speed features on and off, against a plain reference loop.

    .venv/bin/python bench/trainer_bench.py --models densenet121 --sizes 64 --batches 32 \\
        --variants ref ours ours,sgd=loop --steps 12 --epochs 1

Each *variant* is one training run of a model at an image size, batch size (per process) and
data source. ``ours`` is the trainer itself (``densenet_trainer.train.run`` with
``--mode performance`` and the flags below), so the bench measures what users run;
``ref`` is the loop a user would otherwise write, in the style of torchvision's reference
``train.py``: fp32, NCHW, no compile, ``torch.optim.SGD(model.parameters(), ...)`` with
torch's default implementation, ``cudnn.benchmark`` on, same model, batch and data.
``loader`` iterates the trainer's training DataLoader alone (and copies each batch to the
device): the input pipeline's capacity, to compare with the model's img/s on synthetic data.
Modifiers after a comma change one setting of ``ours`` (or of ``ref`` where it applies):

    amp=0|1      autocast (bf16 where supported); ``ours`` has it on cuda, off on cpu
    cl=0|1       channels_last; ``ours`` leaves it to the trainer (on for cuda and cpu)
    sgd=auto|fused|foreach|loop     --sgd-impl
    compile=0|default|max-autotune-no-cudagraphs   --compile / --compile-mode
    cudnn=0|1    --cudnn-benchmark
    workers=N    loader worker processes (ImageFolder data)
    pin=0        no pinned host memory (patches the trainer's loader settings)
    threads=N    torch CPU threads per process
    fused=0|1    --fused-dense (fused_dense.py: shared batch statistics, no concatenation)

Data: ``synthetic`` (one random batch made on the device, the trainer's --synthetic) or
``jpeg``: an ImageFolder of JPEGs of ImageNet-like size (320-500 x 280-400 px, smooth random
content) built once, whose train/ lists ``--jpeg-unique`` distinct files hard-linked until
every epoch has ``--steps`` batches per process; decoding and augmenting them is real work.

Every run does ``--epochs`` epochs of ``--steps`` steps; img/s (over all ranks) and the
data-wait share are the last epoch's, without its first 5 steps (the trainer's own FPS, as
it reports to status.training). ``--repeat N`` runs all variants N times, round by round, and
keeps each one's fastest run (on a shared machine other work only ever slows a run down). Peak memory: ``torch.cuda.max_memory_allocated`` on cuda,
the process's peak RSS on cpu (rank 0). On cuda the eager variants of one model/size/batch/data
share a process (peak memory is reset between them); every compiled variant gets its own,
and on cpu every variant does (RSS only grows). ``--nproc 1 2`` also runs ``ours`` variants
under torchrun (gloo on cpu): scaling efficiency = img/s(N) / (N x img/s(1)).

``--interleave`` instead runs the eager ``ours`` variants' training steps in one process,
taking turns step by step, and prints each one's median and fastest step: on a shared machine
all variants then see the same load, which separate runs do not. ``--profile`` instead prints one bf16 channels_last training step's GPU time by kernel
category (torch.profiler): where the time goes; once per ``fused=`` setting of the ``ours``
variants given (``--variants ours ours,fused=1`` profiles both). See docs/performance.md for the results.

Prints a table; writes JSON (default bench/results/trainer-<device>.json), merged with the
runs already there (a run measured again replaces its old entry).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))  # the bootstrap: this checkout's trainer, venv or not
sys.path.insert(0, str(ROOT / "operator"))  # densenet_contract, which the trainer imports

SCHEMA = 1
JPEG_CLASSES = 10
DEFAULT_TIMEOUT = 900.0

MODIFIERS = ("amp", "cl", "sgd", "compile", "cudnn", "workers", "pin", "threads", "fused")


# ---------------------------------------------------------------- run configurations


@dataclass(frozen=True)
class RunConfig:
    variant: str  # as given: "ours", "ours,amp=0", "ref", ...
    arch: str
    image_size: int
    batch_size: int
    data: str  # synthetic | jpeg
    nproc: int
    steps: int
    epochs: int
    device: str  # cpu | cuda
    jpeg_root: str = ""
    workers: int = 8
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.variant.split(",", 1)[0]

    @property
    def key(self) -> str:
        return (
            f"{self.arch}/{self.image_size}px/b{self.batch_size}/{self.data}/"
            f"{self.nproc}p/{self.variant}"
        )

    @property
    def compiled(self) -> bool:
        return self.settings.get("compile", "0") not in ("0", "")


def parse_variant(variant: str) -> tuple[str, dict[str, str]]:
    base, *mods = variant.split(",")
    if base not in ("ours", "ref", "loader"):
        raise ValueError(f"variant {variant!r}: must start with 'ours', 'ref' or 'loader'")
    settings: dict[str, str] = {}
    for mod in mods:
        name, sep, value = mod.partition("=")
        if not sep or name not in MODIFIERS:
            raise ValueError(f"variant {variant!r}: unknown modifier {mod!r} (know {MODIFIERS})")
        settings[name] = value
    if base != "ours" and set(settings) - {"workers", "threads", "pin"}:
        raise ValueError(f"variant {variant!r}: {base} takes only workers=, threads=, pin=")
    return base, settings


def trainer_flags(cfg: RunConfig) -> list[str]:
    """The densenet-train command line of an ``ours`` variant."""
    s = cfg.settings
    amp = s.get("amp", "1" if cfg.device == "cuda" else "0") == "1"
    flags = [
        "--mode", "performance",
        "--arch", cfg.arch,
        "--batch-size", str(cfg.batch_size),
        "--image-size", str(cfg.image_size),
        "--epochs", str(cfg.epochs),
        "--device", cfg.device,
        "--seed", "0",
        "--workers", s.get("workers", str(cfg.workers)),
        "--sgd-impl", s.get("sgd", "auto"),
        "--cudnn-benchmark" if s.get("cudnn", "1") == "1" else "--no-cudnn-benchmark",
    ]  # fmt: skip
    if cfg.data == "synthetic":
        flags += ["--synthetic", "--synthetic-steps", str(cfg.steps)]
    else:
        flags += ["--data", cfg.jpeg_root]
    if amp:
        flags += ["--amp"]
    if "cl" in s:
        flags += ["--channels-last" if s["cl"] == "1" else "--no-channels-last"]
    if cfg.compiled:
        flags += ["--compile", "--compile-mode", s["compile"]]
    if s.get("fused", "0") == "1":
        flags += ["--fused-dense"]
    return flags


# ---------------------------------------------------------------- the worker side


class EpochRecorder:
    """A status reporter that keeps the trainer's end-of-epoch FPS and data-wait share."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.epochs: list[dict[str, Any]] = []

    def update(self, fields: Mapping[str, Any], *, force: bool = False) -> None:
        if force and "fps" in fields:
            self.epochs.append({**fields, "at_s": time.perf_counter() - self.start})

    def close(self, timeout: float = 10.0) -> bool:
        return True


@contextlib.contextmanager
def unpinned_loaders() -> Iterator[None]:
    """Make the trainer's DataLoaders use pageable host memory (the pin=0 variant)."""
    from densenet_trainer import data

    original = data._loader_kwargs

    def kwargs(workers: int, device: Any) -> dict[str, object]:
        return {**original(workers, device), "pin_memory": False}

    data._loader_kwargs = kwargs  # type: ignore[assignment]
    try:
        yield
    finally:
        data._loader_kwargs = original  # type: ignore[assignment]


def run_ours(cfg: RunConfig) -> dict[str, Any]:
    from densenet_trainer.flags import parse_args
    from densenet_trainer.train import run

    recorder = EpochRecorder()
    pinned = cfg.settings.get("pin", "1") == "1"
    with contextlib.nullcontext() if pinned else unpinned_loaders():
        code = run(parse_args(trainer_flags(cfg)), reporter=recorder)
    if code != 0 or not recorder.epochs:
        raise RuntimeError(f"the trainer exited {code} with epochs {recorder.epochs}")
    last = recorder.epochs[-1]
    return {
        "img_per_s": float(last["fps"]),
        "data_wait_share": float(last["dataWaitShare"]),
        "first_epoch_s": recorder.epochs[0]["at_s"],
        "flags": trainer_flags(cfg),
    }


def run_reference(cfg: RunConfig) -> dict[str, Any]:
    """The plain loop: what torchvision's reference train.py does, minus its logging."""
    import torch
    import torchvision
    from torch import nn

    from densenet_trainer.data import SyntheticBatches, train_transform
    from densenet_trainer.distributed import synchronize
    from densenet_trainer.engine import FPS_WARMUP_STEPS

    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the reference does by default
    torch.manual_seed(0)
    loader: Any
    if cfg.data == "synthetic":
        num_classes = 1000
        loader = SyntheticBatches(
            cfg.batch_size, cfg.image_size, num_classes, cfg.steps, device, seed=0
        )
    else:
        dataset = torchvision.datasets.ImageFolder(
            str(Path(cfg.jpeg_root) / "train"), train_transform(cfg.image_size)
        )
        num_classes = len(dataset.classes)
        workers = int(cfg.settings.get("workers", cfg.workers))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda" and cfg.settings.get("pin", "1") == "1",
            drop_last=True,
            persistent_workers=workers > 0,
        )
    model = torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes)
    model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    start = time.perf_counter()
    first_epoch_s = 0.0
    fps = wait_share = 0.0
    for epoch in range(cfg.epochs):
        model.train()
        warmup = min(FPS_WARMUP_STEPS, len(loader) // 2)
        images_timed, wait, t0 = 0, 0.0, time.perf_counter()
        batches = iter(loader)
        step = 0
        while True:
            w0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            waited = time.perf_counter() - w0
            image, target = batch[0].to(device), batch[1].to(device)
            output = model(image)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step > warmup:
                images_timed += image.shape[0]
                wait += waited
            if step == warmup:
                synchronize(device)
                t0 = time.perf_counter()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        fps, wait_share = images_timed / elapsed, min(1.0, wait / elapsed)
        if epoch == 0:
            first_epoch_s = time.perf_counter() - start
    return {"img_per_s": fps, "data_wait_share": wait_share, "first_epoch_s": first_epoch_s}


def run_loader_only(cfg: RunConfig) -> dict[str, Any]:
    """The trainer's training DataLoader alone (plus the copy to the device): its capacity."""
    import torch

    from densenet_trainer.data import build_train_loader
    from densenet_trainer.distributed import DistContext, synchronize
    from densenet_trainer.engine import FPS_WARMUP_STEPS

    device = torch.device(cfg.device)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device, backend="none")
    workers = int(cfg.settings.get("workers", cfg.workers))
    pinned = cfg.settings.get("pin", "1") == "1"
    with contextlib.nullcontext() if pinned else unpinned_loaders():
        loader, _, sampler = build_train_loader(
            cfg.jpeg_root, cfg.image_size, cfg.batch_size, workers, ctx, seed=0
        )
    start = time.perf_counter()
    first_epoch_s = fps = 0.0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        warmup = min(FPS_WARMUP_STEPS, len(loader) // 2)
        images, t0 = 0, time.perf_counter()
        for step, (batch, _targets, _failed) in enumerate(loader, start=1):
            batch = batch.to(device, non_blocking=True)
            if step > warmup:
                images += batch.shape[0]
            if step == warmup:
                synchronize(device)
                t0 = time.perf_counter()
        synchronize(device)
        fps = images / (time.perf_counter() - t0)
        if epoch == 0:
            first_epoch_s = time.perf_counter() - start
    return {"img_per_s": fps, "data_wait_share": 1.0, "first_epoch_s": first_epoch_s}


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    # ru_maxrss is in KiB on Linux: the peak of the whole process so far.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_between_runs(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def worker(config_path: str, result_path: str) -> int:
    """Run each configuration in the file, in order, in this process; rank 0 writes results."""
    configs = [RunConfig(**c) for c in json.loads(Path(config_path).read_text())]
    rank = int(os.environ.get("RANK", "0"))
    threads = configs[0].settings.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    results = []
    for cfg in configs:
        reset_between_runs(cfg.device)
        load_before = os.getloadavg()[0]  # other work on the machine skews cpu numbers
        began = time.perf_counter()
        try:
            runner = {"ours": run_ours, "ref": run_reference, "loader": run_loader_only}
            measured = runner[cfg.base](cfg)
            entry: dict[str, Any] = {**measured, "peak_memory_bytes": peak_memory_bytes(cfg.device)}
        except Exception as exc:  # one broken variant must not lose the others' numbers
            import traceback

            traceback.print_exc()
            entry = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        entry["wall_s"] = time.perf_counter() - began
        entry["loadavg_1m"] = [load_before, os.getloadavg()[0]]
        results.append({"key": cfg.key, "config": asdict(cfg), **entry})
        if rank == 0:  # written after every run, so a timeout keeps what finished
            Path(result_path).write_text(json.dumps(results))
    return 0


KERNEL_CATEGORIES = (
    ("optimizer", ("sgd", "multi_tensor", "foreach")),
    ("fused norm+relu (Triton)", ("normalize_relu",)),
    ("batch_norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("concat/copy", ("cat", "copy", "direct_copy")),
    ("relu/elementwise", ("relu", "threshold", "elementwise", "vectorized", "add")),
    ("convolution/gemm", ("conv", "gemm", "xmma", "sm90", "cutlass", "implicit", "winograd")),
)


def profile_one(
    arch: str, batch: int, size: int, device_name: str, fused: bool = False, steps: int = 5
) -> None:
    """GPU time of ``ours``'s training step (bf16, channels_last, auto SGD; --fused-dense
    with ``fused``) by kernel category."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from densenet_trainer.engine import amp_settings
    from densenet_trainer.flags import parse_args
    from densenet_trainer.train import build_model, build_optimizer

    device = torch.device(device_name)
    model = build_model(arch, 1000, fused).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, parse_args(["--synthetic"]), device)
    amp = amp_settings(True, "auto", device)
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch,), device=device)
    criterion = torch.nn.CrossEntropyLoss()
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    prof = profile(activities=activities)
    for i in range(steps + 3):  # 3 warm-up steps, then the profiled ones
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            prof.start()
        with amp.autocast():
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    prof.stop()
    totals: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        us = float(getattr(event, "device_time_total", 0.0) or 0.0)
        if device.type != "cuda":
            us = float(event.self_cpu_time_total)
        if us <= 0:
            continue
        name = event.key.lower()
        category = next(
            (c for c, words in KERNEL_CATEGORIES if any(w in name for w in words)), "other"
        )
        totals[category] = totals.get(category, 0.0) + us
        kernels.append((us, event.key[:90]))
    total = sum(totals.values())
    runs = steps
    print(
        f"{arch}{' --fused-dense' if fused else ''} b{batch} {size}px bf16 channels_last on "
        f"{device.type}: {total / runs / 1e3:.1f} ms "
        f"of kernels per step ({batch * runs / (total / 1e6):.0f} img/s if the device never idled)"
    )
    for category, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {category:<24} {us / runs / 1e3:8.2f} ms  {100 * us / total:5.1f}%")
    for us, name in sorted(kernels, reverse=True)[:12]:
        print(f"    {us / runs / 1e3:7.2f} ms  {name}")


def profile_step(args: argparse.Namespace) -> int:
    """One profile per model, batch and --fused-dense setting among the ``ours`` variants."""
    fused_settings = sorted(
        {
            parse_variant(v)[1].get("fused", "0") == "1"
            for v in args.variants
            if v.startswith("ours")
        }
    )
    for arch in args.models:
        for batch in args.batches:
            for fused in fused_settings or [False]:
                profile_one(arch, batch, args.sizes[0], args.device, fused)
    return 0


def interleaved_step_times(
    arch: str, batch: int, size: int, device_name: str, variants: Sequence[str], steps: int
) -> dict[str, list[float]]:
    """Seconds per training step of each eager ``ours`` variant (its amp=, cl=, fused=),
    the variants taking turns step by step; the first 2 rounds are warm-up."""
    import torch

    from densenet_trainer.distributed import synchronize
    from densenet_trainer.engine import amp_settings
    from densenet_trainer.flags import parse_args
    from densenet_trainer.train import build_model, build_optimizer

    device = torch.device(device_name)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, 1000, (batch,), device=device)
    runs = {}
    for variant in variants:
        settings = parse_variant(variant)[1]
        torch.manual_seed(0)
        model = build_model(arch, 1000, settings.get("fused", "0") == "1").to(device)
        channels_last = settings.get("cl", "1") == "1"
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)  # type: ignore[call-overload]
        optimizer = build_optimizer(model, parse_args(["--synthetic"]), device)
        amp = amp_settings(
            settings.get("amp", str(int(device.type == "cuda"))) == "1", "auto", device
        )
        runs[variant] = (model, optimizer, amp, images.contiguous(memory_format=layout))
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_index in range(steps + 2):
        for variant, (model, optimizer, amp, batch_images) in runs.items():
            synchronize(device)
            began = time.perf_counter()
            with amp.autocast():
                loss = torch.nn.functional.cross_entropy(model(batch_images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            synchronize(device)
            if round_index >= 2:
                times[variant].append(time.perf_counter() - began)
    return times


def interleaved_steps(args: argparse.Namespace) -> int:
    import statistics

    variants = [v for v in args.variants if v.startswith("ours") and "compile" not in v]
    for arch in args.models:
        for batch in args.batches:
            times = interleaved_step_times(
                arch, batch, args.sizes[0], args.device, variants, args.steps
            )
            print(f"{arch} b{batch} {args.sizes[0]}px on {args.device}, interleaved steps:")
            first = variants[0]
            for variant, seconds in times.items():
                ratios = [a / b for a, b in zip(times[first], seconds, strict=True)]
                print(
                    f"  {variant:<24} median {statistics.median(seconds):.3f} s "
                    f"({batch / statistics.median(seconds):.1f} img/s), fastest "
                    f"{min(seconds):.3f} s; {first} time / this, per round: median "
                    f"{statistics.median(ratios):.2f}"
                )
    return 0


# ---------------------------------------------------------------- the orchestrating side


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_jpeg_folder(root: Path, total: int, unique: int, seed: int = 0) -> Path:
    """train/<class>/ with ``total`` entries: ``unique`` distinct JPEGs, hard-linked around."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{total}-{unique}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    source = root / "unique"
    source.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(unique):
        width, height = int(rng.integers(320, 501)), int(rng.integers(280, 401))
        coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        path = source / f"img_{i:05d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        files.append(path)
    for i in range(total):
        target = root / "train" / f"class_{i % JPEG_CLASSES:02d}" / f"img_{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(files[i % unique], target)
            except OSError:
                target.write_bytes(files[i % unique].read_bytes())
    marker.touch()
    return root


def run_group(
    configs: list[RunConfig], timeout: float, workdir: Path
) -> tuple[list[dict[str, Any]], str]:
    """One worker process (torchrun for nproc > 1) over ``configs``; returns results, log."""
    config_path = workdir / f"configs-{os.getpid()}-{time.monotonic_ns()}.json"
    result_path = config_path.with_suffix(".result.json")
    config_path.write_text(json.dumps([asdict(c) for c in configs]))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "trainer"), env.get("PYTHONPATH")])
    )
    for name in ("DENSENET_JOB_NAME", "DENSENET_JOB_NAMESPACE", "RANK", "WORLD_SIZE"):
        env.pop(name, None)
    threads = configs[0].settings.get("threads")
    if threads:
        env["OMP_NUM_THREADS"] = threads
    nproc = configs[0].nproc
    command = [sys.executable]
    if nproc > 1:
        command += [
            "-m", "torch.distributed.run",
            "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()),
        ]  # fmt: skip
    command += [str(Path(__file__).resolve()), "--worker", str(config_path), str(result_path)]
    try:
        proc = subprocess.run(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        log, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        log = (out.decode(errors="replace") if isinstance(out, bytes) else out) + "\n[timed out]"
        code = -1
    results = json.loads(result_path.read_text()) if result_path.exists() else []
    done = {r["key"] for r in results}
    for cfg in configs:
        if cfg.key not in done:
            results.append(
                {
                    "key": cfg.key,
                    "config": asdict(cfg),
                    "error": f"worker exited {code} before finishing: {log[-1500:]}",
                }
            )
    return results, log


def best_of(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of the repeated runs of one configuration (other load only slows a run)."""
    measured = [r for r in samples if "img_per_s" in r]
    if not measured:
        return samples[-1]
    best = dict(max(measured, key=lambda r: r["img_per_s"]))
    best["samples_img_per_s"] = [r["img_per_s"] for r in measured]
    return best


def groups_of(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """cuda: the eager variants of one model/size/batch/data share a process; else one each."""
    groups: list[list[RunConfig]] = []
    shared: dict[tuple[Any, ...], list[RunConfig]] = {}
    for cfg in configs:
        if cfg.device == "cuda" and cfg.nproc == 1 and not cfg.compiled:
            key = (cfg.arch, cfg.image_size, cfg.batch_size, cfg.data, cfg.settings.get("threads"))
            if key not in shared:
                shared[key] = []
                groups.append(shared[key])
            shared[key].append(cfg)
        else:
            groups.append([cfg])
    return groups


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    import torch
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return info


def device_slug(info: Mapping[str, Any], device: str) -> str:
    if device == "cpu":
        return "cpu"
    match = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", str(info.get("gpu", "")))
    return match.group(1).lower() if match else "cuda"


def reference_fps(results: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> float | None:
    """img/s of the reference loop on the same model, size, batch and data (plain ``ref``
    first, else a ``ref`` with modifiers, e.g. its loader workers)."""
    candidates = [
        r
        for r in results
        if r["config"]["variant"].split(",")[0] == "ref"
        and "img_per_s" in r
        and all(r["config"][k] == cfg[k] for k in ("arch", "image_size", "batch_size", "data"))
        and r["config"]["settings"].get("threads") == cfg["settings"].get("threads")
    ]
    candidates.sort(key=lambda r: r["config"]["variant"] != "ref")
    return float(candidates[0]["img_per_s"]) if candidates else None


def single_process_fps(
    results: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]
) -> float | None:
    for r in results:
        c = r["config"]
        if (
            c["nproc"] == 1
            and "img_per_s" in r
            and all(c[k] == cfg[k] for k in ("variant", "arch", "image_size", "batch_size", "data"))
        ):
            return float(r["img_per_s"])
    return None


def annotate(results: list[dict[str, Any]]) -> None:
    """Add the ratio to the reference loop and the scaling efficiency over processes."""
    for r in results:
        r.pop("vs_ref", None)
        r.pop("scaling_efficiency", None)
        if "img_per_s" not in r or r["config"]["variant"].startswith("loader"):
            continue
        ref = reference_fps(results, r["config"])
        if ref:
            r["vs_ref"] = r["img_per_s"] / ref
        if r["config"]["nproc"] > 1:
            one = single_process_fps(results, r["config"])
            if one:
                r["scaling_efficiency"] = r["img_per_s"] / (r["config"]["nproc"] * one)


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    header = (
        f"{'model':<12} {'px':>4} {'batch':>5} {'data':<9} {'procs':>5} {'variant':<40} "
        f"{'img/s':>8} {'vs ref':>7} {'wait':>6} {'peak mem':>9} {'1st ep':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        c = r["config"]
        head = (
            f"{c['arch']:<12} {c['image_size']:>4} {c['batch_size']:>5} {c['data']:<9} "
            f"{c['nproc']:>5} {c['variant']:<40}"
        )
        if "img_per_s" not in r:
            lines.append(f"{head} FAILED: {r.get('error', '?').splitlines()[0][:100]}")
            continue
        ratio = f"{r['vs_ref']:.2f}x" if "vs_ref" in r else ""
        if "scaling_efficiency" in r:
            ratio = f"eff {100 * r['scaling_efficiency']:.0f}%"
        wait = "-" if c["variant"].startswith("loader") else f"{100 * r['data_wait_share']:.1f}%"
        lines.append(
            f"{head} {r['img_per_s']:>8.1f} {ratio:>7} {wait:>6} "
            f"{r['peak_memory_bytes'] / 2**30:>7.2f}Gi {r['first_epoch_s']:>6.1f}s"
        )
    return "\n".join(lines)


def build_configs(args: argparse.Namespace, jpeg_root: str) -> list[RunConfig]:
    configs = []
    for arch in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for data in args.data:
                    for nproc in args.nproc:
                        for variant in args.variants:
                            base, settings = parse_variant(variant)
                            if nproc > 1 and base != "ours":
                                continue  # the reference loop is single-process
                            if base == "loader" and data != "jpeg":
                                continue  # measures the ImageFolder pipeline
                            configs.append(
                                RunConfig(
                                    variant=variant,
                                    arch=arch,
                                    image_size=size,
                                    batch_size=batch,
                                    data=data,
                                    nproc=nproc,
                                    steps=args.steps,
                                    epochs=args.epochs,
                                    device=args.device,
                                    jpeg_root=jpeg_root if data == "jpeg" else "",
                                    workers=args.workers,
                                    settings=settings,
                                )
                            )
    return configs


def parse_cli(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", nargs="+", default=["densenet121", "densenet161"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224], help="image sizes (px)")
    parser.add_argument("--batches", nargs="+", type=int, default=[128], help="per process")
    parser.add_argument("--data", nargs="+", choices=("synthetic", "jpeg"), default=["synthetic"])
    parser.add_argument("--nproc", nargs="+", type=int, default=[1], help="processes (torchrun)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["ref", "ours"],
        help="ref, ours, or either with ,name=value modifiers (see the module docstring)",
    )
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch and process")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    parser.add_argument("--workers", type=int, default=8, help="loader workers (jpeg data)")
    parser.add_argument("--jpeg-dir", default=None, help="where to build the JPEG ImageFolder")
    parser.add_argument("--jpeg-unique", type=int, default=384, help="distinct JPEG files")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all variants, interleaved; each keeps its fastest round",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per process (s)")
    parser.add_argument("--out", default=None, help="JSON file (merged with its earlier runs)")
    parser.add_argument("--fresh", action="store_true", help="overwrite --out instead of merging")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: GPU time of one bf16 channels_last step by kernel category (cuda)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="instead: the eager 'ours' variants' training steps in one process, alternating, "
        "so that all see the same machine load (a shared CPU); median and fastest step",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2])
    args = parse_cli(argv)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.profile:
        return profile_step(args)
    if args.interleave:
        return interleaved_steps(args)
    info = machine_info(args.device)
    out = Path(
        args.out or ROOT / "bench" / "results" / f"trainer-{device_slug(info, args.device)}.json"
    )

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        jpeg_root = ""
        if "jpeg" in args.data:
            total = max(args.batches) * max(args.nproc) * args.steps
            began = time.perf_counter()
            jpeg_root = str(
                make_jpeg_folder(Path(args.jpeg_dir or Path(tmp) / "jpeg"), total, args.jpeg_unique)
            )
            print(
                f"JPEG ImageFolder: {total} entries at {jpeg_root} ({time.perf_counter() - began:.1f}s)"
            )
        configs = build_configs(args, jpeg_root)
        rounds: dict[str, list[dict[str, Any]]] = {}
        for round_index in range(args.repeat):
            for group in groups_of(configs):
                began = time.perf_counter()
                group_results, log = run_group(group, args.timeout, Path(tmp))
                for r in group_results:
                    rounds.setdefault(r["key"], []).append(r)
                    shown = f"{r['img_per_s']:.1f} img/s" if "img_per_s" in r else "FAILED"
                    print(f"[{round_index + 1}/{args.repeat}] {r['key']}: {shown}", flush=True)
                if any("error" in r for r in group_results):
                    print(log[-3000:], flush=True)
                print(f"  ({time.perf_counter() - began:.0f}s)", flush=True)
        results = [best_of(samples) for samples in rounds.values()]

    previous: list[dict[str, Any]] = []
    if out.exists() and not args.fresh:
        previous = json.loads(out.read_text()).get("runs", [])
    measured = {r["key"] for r in results}
    merged = [r for r in previous if r["key"] not in measured] + results
    annotate(merged)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"schema": SCHEMA, "machine": info, "runs": merged}, indent=1))
    print()
    print(f"{info.get('gpu', info['cpu'])}, torch {info['torch']}")
    print(format_table([r for r in merged if r["key"] in measured]))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

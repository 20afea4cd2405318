"""--fused-dense: the fused DenseNet computes what torchvision's DenseNet computes.

For all four models, from the same weights: outputs, input gradients, parameter gradients,
running statistics and num_batches_tracked after two training steps, then evaluation outputs
and gradients; state dicts load both ways; and the trainer trains the digits with it, writing a
checkpoint that torchvision's model evaluates to the same accuracy.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import DenseNet

from densenet_trainer.checkpoint import BEST_MODEL_NAME, load_checkpoint
from densenet_trainer.digits import DigitsSplit
from densenet_trainer.flags import parse_args
from densenet_trainer.fused_dense import ARCH_CONFIGS, FusedDenseNet, fused_densenet
from densenet_trainer.train import build_model, main

from .conftest import DIGITS_SIZE

ARCHS = tuple(ARCH_CONFIGS)
NUM_CLASSES = 10
# Largest error allowed, relative to the largest magnitude of the tensor compared. In float64
# what remains is summation order (BatchNorm's reductions against var_mean, a convolution
# against its split backward): about 2e-12 here, as between torchvision's own NCHW and
# channels_last models.
FLOAT64 = 1e-9
EVAL_LINE = re.compile(r"epoch: 1 Acc@1: (?P<acc1>[\d.]+) ")
LOADED_EVAL_LINE = re.compile(r"evaluate: Acc@1: (?P<acc1>[\d.]+) ")


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DENSENET_JOB_NAME", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


def model_pair(arch: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module]:
    """torchvision's ``arch`` and the fused one, built from the same seed."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    fused = fused_densenet(arch, NUM_CLASSES)
    return reference.to(dtype), fused.to(dtype)


def forward_backward(model: nn.Module, images: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The model's output and the input's gradient for an upstream gradient ``grad``; the
    parameters' gradients accumulate in ``.grad``."""
    images = images.clone().requires_grad_(True)
    out = model(images)
    out.backward(grad)
    assert images.grad is not None
    return out.detach(), images.grad


def assert_close(actual: Tensor, expected: Tensor, rel: float, what: str) -> None:
    """Every element within ``rel`` x the largest magnitude of ``expected`` (integers: equal)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), f"{what}: {actual} != {expected}"
        return
    error = (actual.double() - expected.double()).abs().max().item()
    bound = rel * expected.double().abs().max().item()
    assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g} ({rel} x max)"


def assert_same_model_state(reference: nn.Module, fused: nn.Module, rel: float) -> None:
    """Parameters, their gradients and every buffer (running stats, num_batches_tracked)."""
    fused_params = dict(fused.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(fused_params[name], param), name
        assert param.grad is not None and fused_params[name].grad is not None, name
        assert_close(fused_params[name].grad, param.grad, rel, f"{name}.grad")
    fused_buffers = dict(fused.named_buffers())
    assert fused_buffers.keys() == dict(reference.named_buffers()).keys()
    for name, buffer in reference.named_buffers():
        assert_close(fused_buffers[name], buffer, rel, name)


def test_models_are_torchvisions() -> None:
    """Same class tree, state dict names, shapes and seeded values as torchvision's builders."""
    for arch in ARCHS:
        reference, fused = model_pair(arch, torch.float32)
        assert isinstance(fused, DenseNet) and isinstance(fused, FusedDenseNet)
        reference_state, fused_state = reference.state_dict(), fused.state_dict()
        assert list(fused_state) == list(reference_state)
        for name, value in reference_state.items():
            assert torch.equal(fused_state[name], value), f"{arch}: {name}"


@pytest.mark.parametrize("arch", ARCHS)
def test_training_and_evaluation_match_torchvision(arch: str) -> None:
    """Two training steps' outputs, gradients and statistics, then evaluation, in float64."""
    reference, fused = model_pair(arch)
    generator = torch.Generator().manual_seed(1)
    for step in range(2):
        images = torch.randn(4, 3, 32, 32, generator=generator, dtype=torch.float64)
        grad = torch.randn(4, NUM_CLASSES, generator=generator, dtype=torch.float64)
        expected_out, expected_grad = forward_backward(reference.train(), images, grad)
        out, input_grad = forward_backward(fused.train(), images, grad)
        assert_close(out, expected_out, FLOAT64, f"{arch} step {step} output")
        assert_close(input_grad, expected_grad, FLOAT64, f"{arch} step {step} input grad")
    assert_same_model_state(reference, fused, FLOAT64)
    assert int(fused.features.norm5.num_batches_tracked) == 2

    for model in (reference, fused):
        model.zero_grad(set_to_none=True)
    expected_out, expected_grad = forward_backward(reference.eval(), images, grad)
    out, input_grad = forward_backward(fused.eval(), images, grad)
    assert_close(out, expected_out, FLOAT64, f"{arch} eval output")
    assert_close(input_grad, expected_grad, FLOAT64, f"{arch} eval input grad")
    assert_same_model_state(reference, fused, FLOAT64)  # evaluation left the stats alone


def relative_l2_errors(
    model: nn.Module, exact: nn.Module, images: Tensor, grad: Tensor, autocast: bool
) -> dict[str, float]:
    """How far ``model`` (float32, maybe under bf16 autocast) is from ``exact`` (float64, the
    same weights): relative L2 error of the output, the input grad and all parameter grads."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, input_grad = forward_backward(model.train(), images, grad)
    exact_out, exact_grad = forward_backward(exact.train(), images.double(), grad.double())

    def error(pairs: list[tuple[Tensor, Tensor]]) -> float:
        diff = sum(float((a.double() - b).square().sum()) for a, b in pairs)
        return (diff / sum(float(b.square().sum()) for _, b in pairs)) ** 0.5

    exact_params = dict(exact.named_parameters())
    params = [(p.grad, exact_params[n].grad) for n, p in model.named_parameters()]
    return {
        "output": error([(out, exact_out)]),
        "input grad": error([(input_grad, exact_grad)]),
        "parameter grads": error(params),  # type: ignore[list-item]
    }


@pytest.mark.parametrize(
    ("make", "autocast"),
    [
        (lambda cls: cls(32, (6, 12, 24, 16), 64, num_classes=NUM_CLASSES), False),
        # a small model: bf16 on CPUs without native support is slow
        (lambda cls: cls(8, (2, 2), 16, num_classes=NUM_CLASSES), True),
    ],
    ids=["densenet121-float32-channels_last", "small-bf16-autocast"],
)
def test_low_precision_is_as_accurate_as_torchvisions(make, autocast: bool) -> None:  # type: ignore[no-untyped-def]
    """In float32 with channels_last (the trainer's CPU default) and under bf16 autocast (the
    1x1 convolutions in bf16, statistics in float32): the fused model is as close to the
    float64 result as torchvision's own model is (BatchNorm over 4 values per channel in the
    last block amplifies rounding, in both)."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images = images.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, NUM_CLASSES, generator=torch.Generator().manual_seed(3))
    errors = {}
    for cls in (DenseNet, FusedDenseNet):
        torch.manual_seed(0)
        model = make(cls).to(memory_format=torch.channels_last)
        exact = copy.deepcopy(model).double()
        errors[cls] = relative_l2_errors(model, exact, images, grad, autocast)
    for what, reference_error in errors[DenseNet].items():
        fused_error = errors[FusedDenseNet][what]
        assert fused_error <= 2 * reference_error + 1e-6, (what, errors)


def test_cumulative_momentum_and_dropout_match() -> None:
    """BatchNorm's momentum=None (cumulative average) and dense-layer dropout, seeded alike."""
    models = []
    for cls in (DenseNet, FusedDenseNet):
        torch.manual_seed(0)
        model = cls(4, (2, 3), 8, drop_rate=0.3, num_classes=NUM_CLASSES).double()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
        models.append(model)
    reference, fused = models
    for step in range(3):
        images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        grad = torch.ones(3, NUM_CLASSES, dtype=torch.float64)
        torch.manual_seed(10 + step)
        expected = forward_backward(reference, images.double(), grad)
        torch.manual_seed(10 + step)
        got = forward_backward(fused, images.double(), grad)
        assert_close(got[0], expected[0], FLOAT64, f"step {step} output")
        assert_close(got[1], expected[1], FLOAT64, f"step {step} input grad")
    assert_same_model_state(reference, fused, FLOAT64)


def test_one_value_per_channel_is_refused_as_batchnorm_refuses_it() -> None:
    """Batch 1 at 32 px leaves 1x1 maps in the last block: no batch variance to normalize by."""
    _, fused = model_pair("densenet121", torch.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fused.train()(torch.randn(1, 3, 32, 32))


def test_state_dicts_load_both_ways() -> None:
    """A torchvision state dict loads strictly into the fused model and back, unchanged."""
    for arch in ("densenet121", "densenet161"):
        torch.manual_seed(5)
        trained = torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES)
        torch.manual_seed(6)
        fused = fused_densenet(arch, NUM_CLASSES)
        fused.load_state_dict(trained.state_dict())
        plain = torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES)
        plain.load_state_dict(fused.state_dict())
        for name, value in trained.state_dict().items():
            assert torch.equal(plain.state_dict()[name], value), f"{arch}: {name}"
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(fused.eval()(images), trained.eval()(images))


def digits_subset(digits: DigitsSplit, root: Path, per_class: dict[str, int]) -> Path:
    """The first images of each class of the digits (hard links): an epoch this slow CPU
    trains in a minute."""
    for split, count in per_class.items():
        for class_dir in sorted((digits.root / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.glob("digit_*.png"))[:count]:
                (target / image.name).hardlink_to(image)
    return root


def read_losses(path: Path) -> list[tuple[int, float]]:
    lines = path.read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines)]


@pytest.mark.slow
def test_trainer_trains_digits_like_torchvision_and_checkpoints_stay_torchvisions(
    digits: DigitsSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One real epoch on digits with and without --fused-dense from the same seed: the same
    losses and the same accuracy; then the plain (torchvision) model evaluates the fused run's
    checkpoint to the accuracy the fused run reported."""
    data = digits_subset(digits, tmp_path / "digits", {"train": 10, "val": 5})
    common = [
        *("--data", str(data), "--arch", "densenet121", "--image-size", str(DIGITS_SIZE)),
        *("--batch-size", "50", "--workers", "0", "--device", "cpu", "--seed", "0"),
    ]
    train = [*common, "--mode", "train_and_evaluate", "--epochs", "1", "--lr", "0.01"]
    accuracy, losses = {}, {}
    for variant in ("fused", "plain"):
        out = tmp_path / variant
        flags = ["--checkpoint-dir", str(out), "--loss-log", str(out / "losses.jsonl")]
        assert main([*train, *flags, *(["--fused-dense"] if variant == "fused" else [])]) == 0
        log = capsys.readouterr().out
        assert f"fused dense blocks {'on' if variant == 'fused' else 'off'}" in log
        evaluated = EVAL_LINE.search(log)
        assert evaluated is not None, log[-3000:]
        accuracy[variant] = float(evaluated["acc1"])
        losses[variant] = read_losses(out / "losses.jsonl")
        assert [step for step, _ in losses[variant]] == [1, 2]  # 100 images, batch 50
    (_, fused_first), (_, fused_second) = losses["fused"]
    (_, plain_first), (_, plain_second) = losses["plain"]
    assert fused_first == pytest.approx(plain_first, rel=1e-5)  # the same weights and batch
    # After an update float32 rounding differences grow (BatchNorm over the last block's few
    # values per channel): as much as between torchvision's model in NCHW and channels_last.
    assert fused_second == pytest.approx(plain_second, rel=2e-3)
    one_image = 100 / 50 + 1e-6  # a near-tie may round to the other class
    assert accuracy["fused"] == pytest.approx(accuracy["plain"], abs=one_image)

    best = tmp_path / "fused" / BEST_MODEL_NAME
    plain_model = torchvision.models.get_model("densenet121", weights=None, num_classes=10)
    plain_model.load_state_dict(load_checkpoint(best)["model"])  # strict: names and shapes
    assert main([*common, "--mode", "evaluate", "--resume", str(best)]) == 0
    evaluated = LOADED_EVAL_LINE.search(capsys.readouterr().out)
    assert evaluated is not None
    assert float(evaluated["acc1"]) == pytest.approx(accuracy["fused"], abs=one_image)


def test_the_flag_picks_the_model() -> None:
    assert parse_args(["--synthetic"]).fused_dense is False
    assert parse_args(["--synthetic", "--fused-dense"]).fused_dense is True
    assert type(build_model("densenet169", 10, fused_dense=True)) is FusedDenseNet
    assert type(build_model("densenet169", 10)) is DenseNet


def test_compile_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--synthetic", "--fused-dense", "--compile"])
    assert "--fused-dense does not work with --compile" in capsys.readouterr().err

"""The speed flags: --compile/--compile-mode, --sgd-impl, --cudnn-benchmark."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from densenet_trainer.flags import parse_args
from densenet_trainer.train import (
    build_optimizer,
    channels_last_default,
    compile_model,
    main,
    sgd_impl_kwargs,
)

from .conftest import free_port, run_cli
from .test_train import TINY


def test_defaults() -> None:
    args = parse_args(["--synthetic"])
    assert args.compile is False
    assert args.compile_mode == "default"
    assert args.sgd_impl == "auto"
    assert args.cudnn_benchmark is True


@pytest.mark.parametrize(
    ("device_type", "expected"), [("cuda", True), ("cpu", True), ("npu", False)]
)
def test_channels_last_default(device_type: str, expected: bool) -> None:
    assert channels_last_default(device_type) is expected


def test_compile_on_npu_is_refused_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--synthetic", "--device", "npu", "--compile"])
    assert "--compile does not work on npu" in capsys.readouterr().err
    assert parse_args(["--synthetic", "--device", "cuda", "--compile"]).compile


def test_compile_is_refused_when_auto_picks_npu() -> None:
    from densenet_trainer.distributed import DistContext
    from densenet_trainer.train import configure

    args = parse_args(["--synthetic", "--compile"])  # --device auto: not known yet
    # torch.device("npu") exists only once torch_npu has registered it: a device whose type
    # is what configure() reads.
    npu = DistContext(0, 1, 0, SimpleNamespace(type="npu"), "hccl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--compile does not work on npu"):
        configure(args, npu)


def test_flags_are_parsed() -> None:
    args = parse_args(
        [
            "--synthetic",
            "--compile",
            "--compile-mode",
            "max-autotune-no-cudagraphs",
            "--sgd-impl",
            "loop",
            "--no-cudnn-benchmark",
        ]
    )
    assert (args.compile, args.compile_mode) == (True, "max-autotune-no-cudagraphs")
    assert (args.sgd_impl, args.cudnn_benchmark) == ("loop", False)
    assert parse_args(["--synthetic", "--compile", "--no-compile"]).compile is False


@pytest.mark.parametrize(
    "argv",
    [["--sgd-impl", "adam"], ["--compile-mode", "reduce-overhead"]],
)
def test_bad_values_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--synthetic", *argv])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("impl", "device_type", "expected"),
    [
        ("auto", "cuda", {"fused": True}),
        ("auto", "cpu", {"fused": True}),
        ("auto", "npu", {}),  # torch_npu's own default
        ("fused", "npu", {"fused": True}),
        ("foreach", "cuda", {"foreach": True}),
        ("loop", "cpu", {"foreach": False}),
    ],
)
def test_sgd_impl_kwargs(impl: str, device_type: str, expected: dict[str, bool]) -> None:
    assert sgd_impl_kwargs(impl, device_type) == expected


def test_unknown_sgd_impl_raises() -> None:
    with pytest.raises(ValueError, match="unknown SGD implementation"):
        sgd_impl_kwargs("lion", "cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))


@pytest.mark.parametrize("no_bn_bias_decay", [False, True])
def test_every_sgd_impl_takes_the_same_step(no_bn_bias_decay: bool) -> None:
    """fused, foreach and the loop are one algorithm: the same weights after a few steps."""
    cpu = torch.device("cpu")
    inputs = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    weights = {}
    for impl in ("auto", "fused", "foreach", "loop"):
        flags = ["--synthetic", "--sgd-impl", impl, "--lr", "0.1", "--wd", "0.01"]
        if no_bn_bias_decay:
            flags.append("--no-bn-bias-decay")
        model = _model()
        optimizer = build_optimizer(model, parse_args(flags), cpu)
        assert len(optimizer.param_groups) == (2 if no_bn_bias_decay else 1)
        expected = sgd_impl_kwargs(impl, "cpu")
        assert {k: optimizer.defaults[k] for k in expected} == expected
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
        weights[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for impl, flat in weights.items():
        torch.testing.assert_close(flat, weights["loop"], msg=impl)


def test_compile_model_wraps_and_keeps_the_module() -> None:
    model = _model()
    compiled = compile_model(model, "default")
    assert compiled is not model
    assert compiled._orig_mod is model  # type: ignore[attr-defined]
    # the state_dict the trainer saves is the unwrapped module's: no "_orig_mod." prefix
    assert set(model.state_dict()) == {k.removeprefix("_orig_mod.") for k in compiled.state_dict()}


@pytest.mark.slow
def test_compiled_training_runs_in_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    """--compile end to end on cpu (inductor compiles C++: minutes on a small machine)."""
    argv = [*TINY, "--synthetic", "--synthetic-steps", "2", "--epochs", "1"]
    assert main([*argv, "--mode", "performance", "--compile", "--no-cudnn-benchmark"]) == 0
    assert "compile default" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_training_runs_under_ddp() -> None:
    """Two gloo ranks train a compiled DDP model (dynamo splits the graph at DDP's buckets)."""
    out = run_cli(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
            *("--master-addr", "127.0.0.1", "--master-port", str(free_port())),
            *("-m", "densenet_trainer.train", *TINY, "--synthetic", "--synthetic-steps", "3"),
            *("--epochs", "1", "--mode", "performance", "--compile"),
        ],
    ).stdout
    assert "compile default" in out
    assert "performance: FPS:" in out

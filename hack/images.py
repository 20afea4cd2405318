"""The project's images, built for real with buildah from docker/*.Dockerfile, cached by content.

    python hack/images.py build [operator] [trainer]     # prints each image's ref, size and time

No Docker engine and no container registry are reachable here, so the bases are made locally
from Debian packages: `mmdebstrap` writes a minimal Debian root as a tar, buildah turns it into
an image (`localhost/densenet-base-*:<hash>`), and `buildah build --isolation chroot` builds the
Dockerfiles on it through their base-image build args, exactly as a user's `docker build` would
on a registry's base:

- operator: docker/operator.Dockerfile on Debian bookworm's Python 3.11 (`PYTHON_IMAGE`);
- trainer (CPU flavour): docker/trainer.Dockerfile with `EXTRAS=trainer` (`BASE_IMAGE`) on the
  same root with a virtualenv on PATH. torch comes from PyPI, whose Linux wheels need the CUDA
  libraries (nvidia-* wheels) to import even on a CPU: libtorch links them. The smaller CPU
  builds are out of reach or broken here (docs/images.md): none on PyPI, bookworm's torch is
  1.13, and trixie's torch 2.6 lacks libuv, which torchrun's TCPStore requires.

Each image is saved as a docker-archive tar (what containerd's `ctr -n k8s.io images import`
takes, tag included) under `$DENSENET_CACHE/images` (default ~/.cache/densenet-operator/images).
Its ref's tag is a hash of everything that goes into it: the Dockerfile, the base's recipe, the
build args, pyproject.toml and the package sources. A warm call hashes and finds the
archive; nothing is built. A cross-process lock keeps two callers from building at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bumped when the way images are made changes, so old archives are not reused.
RECIPE_VERSION = "1"
# What the Dockerfiles' build context holds that goes into an image (.dockerignore drops the rest).
# README.md is copied in too, but reaches the image only as the wheel's long description: an
# edit of it (frequent) does not rebuild GBs of trainer.
CONTEXT_FILES = ("pyproject.toml",)
CONTEXT_TREES = ("operator", "trainer")
SKIPPED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Archives kept per image besides the current one. None: a trainer archive is GBs, and a
# machine's disk (CI's too) holds it several times over already (buildah's base, containerd).
KEEP_PREVIOUS = 0
# Debian's CA bundle, which Debian's pip (the bases' pip) reads.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class BaseRecipe:
    """A minimal Debian root made by mmdebstrap with `packages`, then `setup` run in it."""

    name: str
    suite: str
    packages: tuple[str, ...]
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def root_digest(self) -> str:
        """The Debian root's: suite and packages (its tar is reused when only `setup` changes)."""
        text = "\n".join([RECIPE_VERSION, self.suite, *sorted(self.packages)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def digest(self) -> str:
        text = "\n".join([self.root_digest(), *self.setup, *map(str, self.env)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def ref(self) -> str:
        return f"localhost/densenet-base-{self.name}:{self.digest()}"


# Debian's python3 with venv for the operator's build stage, `python` on PATH as in python:*
# images, useradd/groupadd (passwd) and the CA bundle for pip.
PYTHON_BASE = BaseRecipe(
    name="python",
    suite="bookworm",
    packages=("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates"),
)
# The same root with a virtualenv first on PATH, as the python in python:* and pytorch/* images
# is: the trainer's `python3 -m pip install` goes there (Debian's own Python refuses pip
# installs, PEP 668). torch comes from PyPI through the trainer extra.
PYTHON_VENV_BASE = dataclasses.replace(
    PYTHON_BASE,
    name="python-venv",
    setup=("python3 -m venv /opt/venv",),
    env=(("PATH", "/opt/venv/bin:" + DEBIAN_PATH),),
)


def trainer_requirements(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, ...]:
    """What the trainer extra installs (pyproject.toml), base dependencies included."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return (*project["dependencies"], *project["optional-dependencies"]["trainer"])


SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"
# The CPU flavour leaves out what only a GPU loads, lazily: Triton (torch.compile's GPU code
# generator) and cuDNN's engine libraries (dlopened by libcudnn.so.9 on a GPU's first
# convolution). The libraries torch links (cuBLAS, cuDNN's front, NCCL, ...) stay: without them
# `import torch` fails. Their package metadata stays, so pip still sees the requirements met.
CPU_ONLY_PRUNE = f"rm -rf {SITE_PACKAGES}/triton {SITE_PACKAGES}/nvidia/cudnn/lib/libcudnn_*.so*"
# The trainer's dependencies as a base of their own (GBs: torch and the CUDA libraries PyPI's
# torch links), rebuilt only when pyproject.toml's requirements change. The trainer's
# Dockerfile then finds every requirement met and adds only the package: a source change
# rebuilds a layer of a few hundred kB, not the GBs.
TRAINER_DEPS_BASE = dataclasses.replace(
    PYTHON_VENV_BASE,
    name="python-trainer-deps",
    setup=(
        *PYTHON_VENV_BASE.setup,
        "/opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check "
        + " ".join(shlex.quote(r) for r in trainer_requirements()),
        CPU_ONLY_PRUNE,
    ),
)


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    dockerfile: str
    base: BaseRecipe
    base_arg: str
    build_args: tuple[tuple[str, str], ...] = ()

    @property
    def repository(self) -> str:
        return f"localhost/densenet-{self.name}"

    def all_build_args(self) -> dict[str, str]:
        return {self.base_arg: self.base.ref, **dict(self.build_args)}


RECIPES: Mapping[str, ImageRecipe] = {
    "operator": ImageRecipe("operator", "docker/operator.Dockerfile", PYTHON_BASE, "PYTHON_IMAGE"),
    "trainer": ImageRecipe(
        "trainer",
        "docker/trainer.Dockerfile",
        TRAINER_DEPS_BASE,
        "BASE_IMAGE",
        # The CPU flavour: no torch_npu, so it declares no Ascend family or CANN.
        (("EXTRAS", "trainer"), ("ASCEND_FAMILY", "none"), ("CANN_VERSION", "none")),
    ),
}


@dataclass(frozen=True)
class BuiltImage:
    """An image as a docker-archive tar (`ctr images import` takes it; `ensure_in_storage` puts it
    into buildah's storage for `buildah run`)."""

    name: str
    ref: str
    archive: Path
    size_bytes: int
    seconds: float
    cached: bool = field(default=True)


def cache_dir() -> Path:
    root = Path(os.environ.get("DENSENET_CACHE") or Path.home() / ".cache" / "densenet-operator")
    return root / "images"


# ---------------------------------------------------------------------------------------------
# Content hash


def context_files(root: Path = ROOT) -> list[Path]:
    """The files of the build context that go into an image, sorted, relative to `root`."""
    found = [root / name for name in CONTEXT_FILES]
    for tree in CONTEXT_TREES:
        for path in (root / tree).rglob("*"):
            relative = path.relative_to(root)
            if not path.is_file() or SKIPPED_PARTS & set(relative.parts):
                continue
            if path.name.endswith(SKIPPED_SUFFIXES) or ".egg-info" in str(relative):
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def content_hash(recipe: ImageRecipe, root: Path = ROOT) -> str:
    """16 hex digits over the Dockerfile, .dockerignore, build args (base included) and sources."""
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    inputs = [root / recipe.dockerfile, root / ".dockerignore", *context_files(root)]
    for path in inputs:
        digest.update(b"\0" + path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    for key, value in sorted(recipe.all_build_args().items()):
        digest.update(f"\0arg {key}={value}".encode())
    return digest.hexdigest()[:16]


def image_ref(recipe: ImageRecipe, root: Path = ROOT) -> str:
    return f"{recipe.repository}:{content_hash(recipe, root)}"


def archive_path(ref: str, cache: Path) -> Path:
    repository, _, tag = ref.rpartition(":")
    return cache / f"{repository.rsplit('/', 1)[-1]}-{tag}.tar"


# ---------------------------------------------------------------------------------------------
# Building


def _run(command: Sequence[str], log: Path | None = None) -> None:
    """Run a build step; on failure the error names the step and shows its log's tail."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:] if log else ""
        raise RuntimeError(f"{' '.join(command[:3])}... exited {proc.returncode}\n{tail}")


def in_storage(ref: str) -> bool:
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _debian_root(recipe: BaseRecipe, tar: Path, log: Path) -> None:
    """mmdebstrap's minimal root with `recipe.packages`, no recommends, docs or locales."""
    partial = tar.with_suffix(".partial")
    _run(
        ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(recipe.packages),
         "--aptopt=APT::Install-Recommends \"false\"",
         "--dpkgopt=path-exclude=/usr/share/doc/*",
         "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*",
         "--format=tar", recipe.suite, str(partial)],
        log,
    )  # fmt: skip
    partial.rename(tar)


def ensure_base(recipe: BaseRecipe, cache: Path) -> None:
    """The base image in buildah's storage, from its cached root tar or a new mmdebstrap."""
    if in_storage(recipe.ref):
        return
    tar = cache / f"debian-{recipe.suite}-{recipe.root_digest()}.tar"
    log = cache / f"base-{recipe.name}.log"
    log.write_text("")
    if not tar.exists():
        _debian_root(recipe, tar, log)
    container = subprocess.run(
        ["buildah", "from", "--pull-never", "scratch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        _run(["buildah", "add", container, str(tar), "/"], log)
        # pip in a setup step trusts what this machine trusts (see _build), for that step only.
        ca = [f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
        for command in recipe.setup:
            _run(
                ["buildah", "run", "--isolation", "chroot", *ca, container, "--", "sh", "-c",
                 command],
                log,
            )  # fmt: skip
        env = [("PATH", DEBIAN_PATH), ("LANG", "C.UTF-8"), *recipe.env]
        config = [arg for key, value in env for arg in ("--env", f"{key}={value}")]
        _run(["buildah", "config", *config, "--cmd", "python3", container], log)
        _run(["buildah", "commit", "--rm", container, recipe.ref], log)
        _prune(cache.glob(f"debian-{recipe.suite}-*.tar"), tar)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        raise


def _build(recipe: ImageRecipe, ref: str, archive: Path, root: Path) -> None:
    log = archive.with_suffix(".log")
    log.write_text("")
    args = [arg for k, v in recipe.all_build_args().items() for arg in ("--build-arg", f"{k}={v}")]
    # pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA, say):
    # the host's bundle is mounted for the build's RUN steps only, never committed.
    if CA_BUNDLE.is_file():
        args.append(f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro")
    # docker format: the OCI format drops SHELL, which the trainer's Dockerfile uses.
    _run(
        ["buildah", "build", "--isolation", "chroot", "--format", "docker", "--pull=false",
         "--network", "host", "-f", str(root / recipe.dockerfile), *args, "-t", ref, str(root)],
        log,
    )  # fmt: skip
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _run(["buildah", "push", "--quiet", ref, f"docker-archive:{partial}:{ref}"], log)
    partial.rename(archive)
    # The archive is the image from now on: a second copy in buildah's storage would double a
    # trainer's GBs on disk. `ensure_in_storage` brings it back for `buildah run`.
    remove_from_storage(ref)


def _require_tools() -> None:
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: hack/setup.sh installs it (Debian package)")


def _tag_of(archive: Path) -> str:
    return archive.stem.rpartition("-")[2]


def _prune(archives: Iterable[Path], keep: Path, repository: str | None = None) -> None:
    """Keep `keep` and the KEEP_PREVIOUS most recently used of the other `archives`; remove the
    rest, their logs and (given `repository`) their images in buildah's storage. Runs under
    the cache's lock, so no other build is in progress."""
    others = sorted(
        (path for path in archives if path != keep), key=lambda p: p.stat().st_mtime, reverse=True
    )
    kept = {keep, *others[:KEEP_PREVIOUS]}
    for stale in others[KEEP_PREVIOUS:]:
        stale.unlink(missing_ok=True)
    for log in keep.parent.glob(keep.name.rpartition("-")[0] + "-*.log"):
        if log.with_suffix(keep.suffix) not in kept:
            log.unlink(missing_ok=True)
    if repository is None:
        return
    listed = subprocess.run(
        ["buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    kept_tags = {_tag_of(path) for path in kept}
    stale_refs = [
        ref for ref in listed
        if ref.startswith(repository + ":") and ref.rpartition(":")[2] not in kept_tags
    ]  # fmt: skip
    if stale_refs:
        subprocess.run(["buildah", "rmi", *stale_refs], capture_output=True, check=False)


def ensure_image(recipe: ImageRecipe, cache: Path, root: Path = ROOT) -> BuiltImage:
    """The image for the sources as they are now: built unless its archive is already cached."""
    start = time.monotonic()
    ref = image_ref(recipe, root)
    archive = archive_path(ref, cache)
    cached = archive.exists()
    if not cached:
        _require_tools()
        ensure_base(recipe.base, cache)
        _build(recipe, ref, archive, root)
        # A trainer image is GBs and every source change makes another: older ones go.
        _prune(cache.glob(f"densenet-{recipe.name}-*.tar"), archive, recipe.repository)
    else:
        os.utime(archive)  # used now: what _prune keeps besides the current image
    return BuiltImage(
        name=recipe.name, ref=ref, archive=archive, size_bytes=archive.stat().st_size,
        seconds=time.monotonic() - start, cached=cached,
    )  # fmt: skip


def ensure_images(
    names: Iterable[str] = ("operator", "trainer"), cache: Path | None = None
) -> dict[str, BuiltImage]:
    """Each named image, built if its sources changed, as {name: BuiltImage}."""
    unknown = set(names) - set(RECIPES)
    if unknown:
        raise ValueError(f"unknown images {sorted(unknown)}; known: {sorted(RECIPES)}")
    cache = cache or cache_dir()
    with _locked(cache):
        return {name: ensure_image(RECIPES[name], cache) for name in names}


def remove_from_storage(ref: str) -> None:
    subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False)


def ensure_in_storage(image: BuiltImage) -> None:
    """Put an archived image back into buildah's storage (a fresh storage, a cleaned machine)."""
    if not in_storage(image.ref):
        # The archive carries its tag: the pulled image is named `image.ref` again.
        _run(["buildah", "pull", "--quiet", f"docker-archive:{image.archive}"])
    if not in_storage(image.ref):
        raise RuntimeError(f"{image.archive} did not bring back {image.ref}")


# ---------------------------------------------------------------------------------------------
# CLI


def _describe(image: BuiltImage) -> str:
    how = "cached" if image.cached else "built"
    return f"{image.ref}  {image.size_bytes / 1e6:.0f} MB  {how} in {image.seconds:.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the images; print ref, size, time")
    build.add_argument(
        "names", nargs="*", metavar="NAME", help=f"of {sorted(RECIPES)}; all by default"
    )
    sub.add_parser("refs", help="print the refs the current sources would have, building nothing")
    args = parser.parse_args(argv)
    if args.command == "refs":
        for name, recipe in RECIPES.items():
            print(name, image_ref(recipe))
        return 0
    start = time.monotonic()
    for image in ensure_images(args.names or list(RECIPES)).values():
        print(f"{image.name:9} {_describe(image)}  {image.archive}")
    print(f"total {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

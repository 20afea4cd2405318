"""Images for the real node, built here (no registry is reachable), and loading image archives
into a node's containerd.

- the pause image, the sandbox image of every pod: Debian's static catatonit in pause mode
  (`catatonit -P`), alone in an image made with buildah from scratch;
- the probe image for the real-node tests: Debian's static busybox (sh, nc, nslookup, ...),
  alone in an image the same way.

Each image is an OCI archive cached under `<cache>/realnode/images/`, named by a hash of what
goes into it, so a rebuild happens only when a binary changes. `load_image` imports an archive
(OCI or docker-archive, e.g. the images helper's) into containerd's `k8s.io` namespace, where
the kubelet looks for images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

CATATONIT = Path("/usr/bin/catatonit")
BUSYBOX = Path("/bin/busybox")
IMAGE_REPO = "localhost/densenet"
# The busybox applets the probe image links (what the tests run in their pods).
BUSYBOX_APPLETS = (
    "sh", "cat", "echo", "env", "hostname", "id", "ip", "ls", "nc", "nslookup", "sleep",
    "tail", "trap", "wget", "dd", "head", "mkdir", "test", "true", "false", "kill",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """A one-layer image: files copied in (image path -> host file), symbolic links (image
    path -> target), its entrypoint and user."""

    name: str
    files: Mapping[str, Path]
    links: Mapping[str, str] = dataclasses.field(default_factory=dict)
    entrypoint: Sequence[str] = ()
    user: str = ""

    def content_key(self) -> str:
        """A hash of everything that makes the image: the files' bytes, links, entrypoint."""
        digest = hashlib.sha256()
        for dest, src in sorted(self.files.items()):
            digest.update(f"file {dest}\0".encode())
            digest.update(hashlib.sha256(src.read_bytes()).digest())
        described = {"links": dict(self.links), "entrypoint": list(self.entrypoint),
                     "user": self.user}  # fmt: skip
        digest.update(json.dumps(described, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def ref(self) -> str:
        return f"{IMAGE_REPO}/{self.name}:{self.content_key()}"


def pause_image() -> ImageSpec:
    return ImageSpec("pause", {"/catatonit": CATATONIT}, entrypoint=["/catatonit", "-P"])


def probe_image() -> ImageSpec:
    """busybox, as an unprivileged user by default (65532, "nonroot")."""
    links = {f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
    return ImageSpec(
        "probe", {"/bin/busybox": BUSYBOX}, links=links, entrypoint=["/bin/sh"], user="65532"
    )


def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _rootfs(spec: ImageSpec, into: Path) -> None:
    for dest, src in spec.files.items():
        target = into / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    for dest, link in spec.links.items():
        target = into / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(link)
    (into / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (into / "tmp").chmod(0o1777)


def build_image(spec: ImageSpec, cache: Path) -> Path:
    """The image's OCI archive, built with buildah unless the cache already has it."""
    archive = cache / "realnode" / "images" / f"{spec.name}-{spec.content_key()}.tar"
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    container = _buildah("from", "--name", f"densenet-{spec.name}-{os.getpid()}", "scratch")
    try:
        with tempfile.TemporaryDirectory() as rootfs:
            _rootfs(spec, Path(rootfs))
            _buildah("copy", container, f"{rootfs}/.", "/")
        if spec.entrypoint:
            _buildah("config", "--entrypoint", json.dumps(list(spec.entrypoint)), container)
        if spec.user:
            _buildah("config", "--user", spec.user, container)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _buildah("commit", "--quiet", container, f"oci-archive:{partial}:{spec.ref()}")
        partial.rename(archive)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return archive


IMPORTED = re.compile(r"^unpacking (\S+) \(sha256:[0-9a-f]{64}\)", re.MULTILINE)


def imported_refs(ctr_output: str) -> list[str]:
    """The image names `ctr images import` reports having unpacked."""
    return IMPORTED.findall(ctr_output)


def images_present(socket: Path) -> set[str]:
    """The image names containerd at `socket` has in its `k8s.io` namespace."""
    proc = subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "list", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def load_image(archive: Path, socket: Path) -> list[str]:
    """Import an image archive (OCI or docker-archive) into containerd's `k8s.io` namespace
    at `socket`; returns the names it now has there."""
    proc = subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "import",
         str(archive)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ctr images import {archive} failed: {proc.stderr.strip()}")
    return imported_refs(proc.stdout)


def superseded(present: set[str], refs: list[str]) -> list[str]:
    """The other tags of the repositories of `refs` (older builds of the same image)."""
    repositories = {ref.rpartition(":")[0] for ref in refs}
    return sorted(
        name for name in present
        if name.rpartition(":")[0] in repositories and name not in refs
        and not name.startswith("sha256:")
    )  # fmt: skip


def remove_images(names: list[str], socket: Path) -> None:
    """Remove images from containerd's `k8s.io` namespace; its garbage collector then frees
    their layers unless another image shares them (a trainer image is GBs)."""
    if names:
        subprocess.run(
            ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "rm", *names],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

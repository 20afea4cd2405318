"""Undoing what a real node did to the machine: its mounts, its cgroups and their processes.

The kubelet and containerd mount pods' volumes, containers' root filesystems, /dev/shm and
network namespaces beneath the node's folders, and put every container in a cgroup beneath
the node's cgroup root. When the node stops, its processes are gone but the mounts and cgroups
stay, and a folder with a mount beneath it must never be deleted recursively (a hostPath or
bind mount would take the host's files with it). The plans here are pure (from
/proc/self/mountinfo's text); `unmount_under`, `remove_cgroups` carry them out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line, in the file's order (parents first)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mounts.append((_unescape(fields[4]), fields[dash + 1]))
    return mounts


def _is_under(path: str, roots: Iterable[Path]) -> bool:
    return any(path == str(root) or path.startswith(f"{root}/") for root in roots)


def unmount_plan(mountinfo: str, roots: Sequence[Path]) -> list[str]:
    """Mount points at or beneath `roots`, in the order to unmount them: the reverse of
    mountinfo's, so that a mount goes before the one it sits on (stacked mounts appear once
    each)."""
    points = [point for point, _ in parse_mountinfo(mountinfo) if _is_under(point, roots)]
    return list(reversed(points))


def cgroup_hierarchies(mountinfo: str) -> list[Path]:
    """Where the cgroup (v1) and cgroup2 hierarchies are mounted."""
    return [Path(p) for p, fstype in parse_mountinfo(mountinfo) if fstype in {"cgroup", "cgroup2"}]


def cgroup_removal_plan(existing: Iterable[Path]) -> list[Path]:
    """Cgroup folders in the order to remove them: children before their parents."""
    return sorted(set(existing), key=lambda p: (-len(p.parts), str(p)))


def unmount_under(roots: Sequence[Path]) -> list[str]:
    """Lazily unmount everything at or beneath `roots`; returns what was unmounted."""
    done = []
    for point in unmount_plan(MOUNTINFO.read_text(), roots):
        proc = subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        if proc.returncode == 0:
            done.append(point)
    return done


def mounts_left(roots: Sequence[Path]) -> list[str]:
    return unmount_plan(MOUNTINFO.read_text(), roots)


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    found = []
    for hierarchy in cgroup_hierarchies(MOUNTINFO.read_text()):
        top = hierarchy / cgroup_root.lstrip("/")
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return found


def _pids(cgroup: Path) -> set[int]:
    with contextlib.suppress(OSError, ValueError):
        return {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}
    return set()


def cgroup_pids(cgroup_root: str) -> set[int]:
    """Every process in a cgroup at or beneath `cgroup_root`, in any hierarchy."""
    return {pid for d in _cgroup_dirs(cgroup_root) for pid in _pids(d)}


def remove_cgroups(cgroup_root: str, timeout: float = 10) -> list[Path]:
    """Kill every process left in the cgroups beneath `cgroup_root` (a container outlives its
    runtime), then remove the cgroups, deepest first. Returns the folders that remain."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(cgroup_root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    left = []
    for cgroup in cgroup_removal_plan(_cgroup_dirs(cgroup_root)):
        try:
            cgroup.rmdir()
        except OSError:
            left.append(cgroup)
    return left


def _delegate_controllers(parent: Path) -> None:
    """cgroup v2: hand every controller our folder `parent` has down to its children (the
    kubelet wants cpu, memory, pids... in its cgroupRoot). Our folders hold no processes, so
    this is allowed; a controller the kernel refuses is left out."""
    available = (parent / "cgroup.controllers").read_text().split()
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    for controller in available:
        if controller not in enabled:
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")


def remove_empty_cgroups(cgroup_path: str) -> None:
    """Remove `cgroup_path` (e.g. our /densenet/<cluster>) in every hierarchy if nothing is
    left in it; a cgroup with children or processes stays."""
    for hierarchy in cgroup_hierarchies(MOUNTINFO.read_text()):
        with contextlib.suppress(OSError):
            (hierarchy / cgroup_path.lstrip("/")).rmdir()


def make_cgroups(cgroup_root: str) -> None:
    """The kubelet's cgroupRoot in every hierarchy (it refuses one that does not exist); a
    new v1 cpuset starts empty, so it gets its parent's CPUs and memory nodes."""
    for hierarchy in cgroup_hierarchies(MOUNTINFO.read_text()):
        path = hierarchy
        for part in Path(cgroup_root.lstrip("/")).parts:
            parent, path = path, path / part
            # Below the hierarchy's root only: the machine's own delegation is left as it is.
            if parent != hierarchy and (parent / "cgroup.subtree_control").is_file():
                _delegate_controllers(parent)
            if path.is_dir():
                continue
            path.mkdir()
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (parent / name).is_file():
                    (path / name).write_text((parent / name).read_text())

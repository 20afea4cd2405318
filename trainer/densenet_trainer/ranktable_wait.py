"""Waiting for the Ascend rank table: from the API first, from the mounted file as fallback.

The operator completes the table in the job's ConfigMap within milliseconds of the last pod
getting its NPUs, but a running pod sees a ConfigMap update in its mounted file only when the
kubelet next syncs the pod and its ConfigMap cache expires: 71-80 s with the kubelet's
defaults on the local real node (docs/local-cluster.md), after every start and every gang
restart. So the launcher watches the ConfigMap itself, through the API with the pod's
ServiceAccount (the job's Role allows get/list/watch on that one ConfigMap), writes the
completed table to a local file for HCCL and starts at once. When the API cannot be reached or
refuses, it polls the mounted file as Huawei's scripts do (60 x 5 s by default).

A completed table is accepted only if it lists this pod's IP (``container_ip``, formats 1.0
and 1.2) where it lists pod IPs at all: after a gang restart the new pods (same names, new
IPs) must not start HCCL on the table of the gang before, should they read it before the
operator has reset it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from densenet_contract import (
    RANK_TABLE_COMPLETED,
    RANK_TABLE_KEY,
    RANK_TABLE_NOT_REQUIRED,
    Env,
    rank_table_configmap,
)

logger = logging.getLogger("densenet_trainer.launch")

# States after which there is nothing to wait for: HCCL can read the table, or it needs none.
READY_STATES = (RANK_TABLE_COMPLETED, RANK_TABLE_NOT_REQUIRED)
STALE = "completed, without this pod's IP (the gang before a restart)"
# A watch is re-opened at most this often; the server ends each after its timeoutSeconds.
WATCH_SECONDS = 60


class RankTableTimeout(TimeoutError):
    pass


class ApiUnavailable(RuntimeError):
    """The API cannot tell us the table: unreachable, not configured, or refused (RBAC)."""


@dataclass(frozen=True)
class Seen:
    """One look at the table: its state ("missing", "unreadable", its "status", or STALE)."""

    state: str
    table: dict[str, Any] | None = None
    text: str | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES and self.table is not None


def parse_rank_table(text: str | None, pod_ip: str | None = None) -> Seen:
    """What a table's text says, for the pod with ``pod_ip`` (None: any pod)."""
    if text is None:
        return Seen("missing")
    try:
        table = json.loads(text)
    except ValueError:  # mid-update or not JSON (yet)
        return Seen("unreadable")
    if not isinstance(table, dict):
        return Seen("unreadable")
    state = str(table.get("status", "no status field"))
    if state == RANK_TABLE_COMPLETED and pod_ip and not lists_pod(table, pod_ip):
        return Seen(STALE)
    return Seen(state, table, text)


def lists_pod(table: Mapping[str, Any], pod_ip: str) -> bool:
    """Whether the table names ``pod_ip`` as a server's container_ip; True for formats that
    name no pod IPs (0.1's group_list), which this check cannot tell apart."""
    servers = table.get("server_list")
    if not isinstance(servers, list):
        return True
    ips = [s.get("container_ip") for s in servers if isinstance(s, dict)]
    return not any(ips) or pod_ip in ips


def read_rank_table(path: str, pod_ip: str | None = None) -> Seen:
    try:
        with open(path, encoding="utf-8") as file:
            return parse_rank_table(file.read(), pod_ip)
    except FileNotFoundError:
        return Seen("missing")
    except (OSError, UnicodeDecodeError):
        return Seen("unreadable")


class ConfigMapWatch:
    """The table as the API server has it: a watch on one ConfigMap by name."""

    def __init__(self, api_client: Any, namespace: str, name: str, key: str = RANK_TABLE_KEY):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.name, self.key = namespace, name, key

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def observe(self, seconds: float, pod_ip: str | None) -> Iterator[Seen]:
        """Each state of the table for ``seconds``: the current one first, then every change.

        Raises ApiUnavailable when the server cannot be asked or refuses."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                self.core.list_namespaced_config_map,
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                timeout_seconds=max(1, min(int(seconds), WATCH_SECONDS)),
                _request_timeout=(10, min(seconds, WATCH_SECONDS) + 30),
            ):
                if event["type"] == "DELETED":
                    yield Seen("missing")
                elif event["type"] in ("ADDED", "MODIFIED"):
                    data = event["object"].data or {}
                    yield parse_rank_table(data.get(self.key), pod_ip)
        except ApiException as exc:
            raise ApiUnavailable(f"HTTP {exc.status} {exc.reason or ''}".strip()) from exc
        except (HTTPError, OSError) as exc:
            raise ApiUnavailable(str(exc).splitlines()[0][:300]) from exc
        finally:
            watcher.stop()


def configmap_watch_from_env(env: Mapping[str, str]) -> ConfigMapWatch | None:
    """The job's ConfigMap watch for a pod the operator started; None where it cannot be had
    (not in such a pod, or no client configuration), after saying why."""
    job, namespace = env.get(Env.JOB_NAME), env.get(Env.JOB_NAMESPACE)
    if not job or not namespace:
        return None
    try:
        from densenet_trainer.progress import build_api_client

        api_client = build_api_client(env.get("KUBECONFIG") or None)
        return ConfigMapWatch(api_client, namespace, rank_table_configmap(job))
    except Exception as exc:  # no in-cluster config, a broken kubeconfig: the file still works
        logger.warning("cannot watch the rank table through the API (%s): polling the file", exc)
        return None


@dataclass
class RankTableWait:
    """Waits for the table from ``api`` (when given) and the mounted file at ``path``."""

    path: str
    timeout: float
    poll_interval: float
    pod_ip: str | None = None
    api: ConfigMapWatch | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.timeout
        self.last = Seen("not looked at yet")
        self.from_api = False  # whether the ready table came through the API

    def run(self) -> Seen:
        """The ready table; raises RankTableTimeout naming the last state seen."""
        if self.api is not None:
            try:
                seen = self._from_api(self.api)
                if seen is not None:
                    self.from_api = True
                    return seen
            except ApiUnavailable as exc:
                logger.warning(
                    "cannot watch %s (%s): reading %s every %.0f s",
                    self.api, exc, self.path, self.poll_interval,
                )  # fmt: skip
        return self._from_file()

    def _from_api(self, api: ConfigMapWatch) -> Seen | None:
        while (remaining := self.deadline - self.clock()) > 0:
            for seen in api.observe(remaining, self.pod_ip):
                if self._saw(seen, str(api)):
                    return seen
                if self.clock() >= self.deadline:
                    break
        self._timed_out(str(api))
        return None

    def _from_file(self) -> Seen:
        while True:
            seen = read_rank_table(self.path, self.pod_ip)
            if self._saw(seen, self.path):
                return seen
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                self._timed_out(self.path)
            self.sleep(min(self.poll_interval, remaining))

    def _saw(self, seen: Seen, where: str) -> bool:
        if seen.ready:
            logger.info("rank table %s is %s", where, seen.state)
            return True
        if seen.state != self.last.state:
            logger.info("waiting for rank table %s: status is %r", where, seen.state)
        self.last = seen
        return False

    def _timed_out(self, where: str) -> None:
        raise RankTableTimeout(
            f"rank table {where} is not completed after {self.timeout:.0f} s (last seen: "
            f"{self.last.state!r}). The operator completes it once every worker pod has been "
            "given its NPUs and their device IPs by the Ascend device plugin; see the job's "
            "conditions and events (kubectl describe densenettraining <job>)."
        )


def write_local_copy(text: str, directory: str | None = None) -> str:
    """The table written atomically to a file of this container, for HCCL; its path."""
    directory = directory or tempfile.mkdtemp(prefix="densenet-rank-table-")
    path = os.path.join(directory, RANK_TABLE_KEY)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)
    return path

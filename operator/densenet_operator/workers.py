"""One asyncio task per job: passes for a job never overlap, and bursts of events coalesce.

kopf's daemons would do this too, but they put a finalizer on every job, which blocks
`kubectl delete` whenever the operator is down; plain tasks keep deletion free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
Pass = Callable[[Key, Mapping[str, Any]], Awaitable[tuple[Mapping[str, Any] | None, float | None]]]
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


def _resource_version(body: Mapping[str, Any]) -> int:
    value = (body.get("metadata") or {}).get("resourceVersion") or "0"
    return int(value) if value.isdigit() else 0


@dataclass
class _Worker:
    body: Mapping[str, Any]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class JobWorkers:
    run_pass: Pass
    workers: dict[Key, _Worker] = field(default_factory=dict)

    def update(self, key: Key, body: Mapping[str, Any]) -> None:
        """A newer view of the job (a watch event, or our own write's response); wakes it."""
        worker = self.workers.get(key)
        if worker is None:
            worker = self.workers[key] = _Worker(body=body)
            worker.task = asyncio.create_task(
                self._loop(key, worker), name=f"job {key[0]}/{key[1]}"
            )
        elif _resource_version(body) >= _resource_version(worker.body):
            worker.body = body
        worker.wakeup.set()

    def poke(self, key: Key) -> None:
        """Something the job owns changed."""
        worker = self.workers.get(key)
        if worker is not None:
            worker.wakeup.set()

    async def stop(self, key: Key) -> None:
        worker = self.workers.pop(key, None)
        if worker is None or worker.task is None:
            return
        if worker.timer is not None:
            worker.timer.cancel()
        worker.task.cancel()
        await asyncio.gather(worker.task, return_exceptions=True)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(key) for key in list(self.workers)))

    async def _loop(self, key: Key, worker: _Worker) -> None:
        failures = 0
        while True:
            await worker.wakeup.wait()
            worker.wakeup.clear()
            if worker.timer is not None:
                worker.timer.cancel()
                worker.timer = None
            try:
                log.debug(
                    "pass for %s/%s at resourceVersion %s", *key, _resource_version(worker.body)
                )
                patched, requeue_after = await self.run_pass(key, worker.body)
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                log.exception("reconciling %s/%s failed; retrying in %.0fs", *key, delay)
                requeue_after = delay
            else:
                failures = 0
                if patched is not None and _resource_version(patched) >= _resource_version(
                    worker.body
                ):
                    # Our own status write: later passes must not act on the older status.
                    worker.body = patched
            if requeue_after is not None:
                worker.timer = asyncio.get_running_loop().call_later(
                    max(requeue_after, 0.05), worker.wakeup.set
                )

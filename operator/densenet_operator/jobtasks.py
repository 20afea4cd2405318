"""One asyncio task per job (a job task): passes for a job never overlap, and bursts of events
coalesce.

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
class _JobTask:
    body: Mapping[str, Any]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    asyncio_task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class JobTasks:
    run_pass: Pass
    tasks: dict[Key, _JobTask] = field(default_factory=dict)

    def update(self, key: Key, body: Mapping[str, Any]) -> None:
        """A newer view of the job (a watch event, or our own write's response); wakes it."""
        job_task = self.tasks.get(key)
        if job_task is None:
            job_task = self.tasks[key] = _JobTask(body=body)
            job_task.asyncio_task = asyncio.create_task(
                self._loop(key, job_task), name=f"job {key[0]}/{key[1]}"
            )
        elif _resource_version(body) >= _resource_version(job_task.body):
            job_task.body = body
        job_task.wakeup.set()

    def poke(self, key: Key) -> None:
        """Something the job owns changed."""
        job_task = self.tasks.get(key)
        if job_task is not None:
            job_task.wakeup.set()

    async def stop(self, key: Key) -> bool:
        """Ends the job's task; False when it had none."""
        job_task = self.tasks.pop(key, None)
        if job_task is None or job_task.asyncio_task is None:
            return False
        if job_task.timer is not None:
            job_task.timer.cancel()
        job_task.asyncio_task.cancel()
        await asyncio.gather(job_task.asyncio_task, return_exceptions=True)
        return True

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(key) for key in list(self.tasks)))

    async def _loop(self, key: Key, job_task: _JobTask) -> None:
        failures = 0
        while True:
            await job_task.wakeup.wait()
            job_task.wakeup.clear()
            if job_task.timer is not None:
                job_task.timer.cancel()
                job_task.timer = None
            try:
                log.debug(
                    "pass for %s/%s at resourceVersion %s", *key, _resource_version(job_task.body)
                )
                patched, requeue_after = await self.run_pass(key, job_task.body)
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
                    job_task.body
                ):
                    # Our own status write: later passes must not act on the older status.
                    job_task.body = patched
            if requeue_after is not None:
                job_task.timer = asyncio.get_running_loop().call_later(
                    max(requeue_after, 0.05), job_task.wakeup.set
                )

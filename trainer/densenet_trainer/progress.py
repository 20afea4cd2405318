"""Report training progress into the job's ``status.training`` (see docs/contract.md).

Rank 0 merge-patches the DenseNetTraining's status subresource from a background thread:
the training loop only drops the newest values into a slot and never waits on the API
server. Patches are throttled to one per ``interval`` seconds, except forced ones (epoch
ends, the final state). A failed patch is logged and its values are retried with the next.
The resource, the patch type and the fields with their types come from densenet_contract.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from densenet_contract import GROUP, MERGE_PATCH, PLURAL, TRAINING_FIELDS, VERSION, Env

logger = logging.getLogger("densenet_trainer")

# Floats without their own digits in the contract (lr) keep this many significant digits.
SIGNIFICANT_DIGITS = 4
# (connect, read) seconds: a slow API server must not hold a patch for long.
DEFAULT_REQUEST_TIMEOUT = (3.0, 5.0)


def rfc3339_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the contract's fields, coerced to their types; drop NaN/inf (not valid JSON)."""
    cleaned: dict[str, Any] = {}
    for key, value in fields.items():
        field = TRAINING_FIELDS.get(key)
        if field is None:
            raise KeyError(f"status.training has no field {key!r}")
        if value is None:
            continue
        if field.type is float:
            value = float(value)
            if not math.isfinite(value):
                continue
            if field.decimals is not None:
                value = round(value, field.decimals)
            else:
                value = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
        else:
            value = field.type(value)
        cleaned[key] = value
    return cleaned


def progress_fields(
    step: int, planned_steps: int, fps: float | None, images_per_step: int
) -> dict[str, Any]:
    """status.training's progress (percent of the planned steps) and etaSeconds (the steps
    left at the measured images/s); no ETA before a speed was measured."""
    if planned_steps <= 0:
        return {}
    fields: dict[str, Any] = {"progress": 100.0 * min(step, planned_steps) / planned_steps}
    if fps is not None and fps > 0:
        fields["etaSeconds"] = round(max(planned_steps - step, 0) * images_per_step / fps)
    return fields


def merge_patch_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": {"training": dict(fields)}}


class Reporter(Protocol):
    def update(self, fields: Mapping[str, Any], *, force: bool = False) -> None: ...

    def close(self, timeout: float = 10.0) -> bool: ...


# status.training.activity: what rank 0 is doing. The operator's hung-gang check judges a job
# only while it is "training" (loader start-up, compilation, evaluation and checkpoint writes
# may be long without any step).
STARTING = "starting"
TRAINING = "training"
EVALUATING = "evaluating"
CHECKPOINTING = "checkpointing"
STOPPING = "stopping"
ACTIVITIES = (STARTING, TRAINING, EVALUATING, CHECKPOINTING, STOPPING)


class Activity:
    """Reports ``activity`` through a reporter: each change is sent at once (forced), a
    repetition not at all."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.current: str | None = None

    def set(self, activity: str, fields: Mapping[str, Any] | None = None) -> None:
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown activity {activity!r}")
        if activity == self.current:
            return
        self.current = activity
        self.reporter.update({**(fields or {}), "activity": activity}, force=True)


class NullReporter:
    """For ranks other than 0, and runs outside a cluster."""

    def update(self, fields: Mapping[str, Any], *, force: bool = False) -> None:
        clean_fields(fields)  # still catch a misspelt field in tests run off-cluster

    def close(self, timeout: float = 10.0) -> bool:
        return True


def build_api_client(kubeconfig: str | None = None) -> Any:
    """A kubernetes ApiClient from ``kubeconfig`` (or $KUBECONFIG), else the in-cluster config.

    Retries are off: the reporter retries on its own schedule, and urllib3's retries would
    multiply the timeout of an unreachable server.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 0
    return client.ApiClient(configuration)


class ProgressReporter:
    """Merge-patches ``status.training`` of one DenseNetTraining from a background thread."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        api_client: Any = None,
        kubeconfig: str | None = None,
        interval: float = 10.0,
        request_timeout: tuple[float, float] = DEFAULT_REQUEST_TIMEOUT,
    ):
        from kubernetes import client

        self.name = name
        self.namespace = namespace
        self.interval = interval
        self.request_timeout = request_timeout
        self._api = client.CustomObjectsApi(api_client or build_api_client(kubeconfig))
        self._cond = threading.Condition()
        self._pending: dict[str, Any] = {}
        self._force = False
        self._closing = False
        self._next_allowed = 0.0  # time.monotonic() before which an unforced patch waits
        self.patches_sent = 0
        self.patches_failed = 0
        self._consecutive_failures = 0
        self._thread = threading.Thread(
            target=self._run, name="densenet-progress-reporter", daemon=True
        )
        self._thread.start()

    def update(self, fields: Mapping[str, Any], *, force: bool = False) -> None:
        """Merge ``fields`` into the pending patch; returns at once. ``force`` skips throttling."""
        cleaned = clean_fields(fields)
        with self._cond:
            if self._closing:
                return
            self._pending.update(cleaned)
            self._force = self._force or force
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is pending (one attempt) and stop, waiting at most ``timeout`` seconds.

        Returns False when the flush was still in flight at the timeout (the daemon thread
        is then abandoned; it cannot keep the process alive).
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("progress reporter: gave up flushing after %.1f s", timeout)
            return False
        return True

    def _take_batch(self) -> tuple[dict[str, Any], bool] | None:
        """Wait until a patch is due; None when closing with nothing left to send."""
        with self._cond:
            while True:
                if self._pending:
                    wait = self._next_allowed - time.monotonic()
                    if self._force or self._closing or wait <= 0:
                        batch = self._pending
                        self._pending = {}
                        self._force = False
                        return batch, self._closing
                    self._cond.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while (taken := self._take_batch()) is not None:
            batch, closing = taken
            if self._patch(batch):
                with self._cond:
                    self._next_allowed = time.monotonic() + self.interval
                continue
            if closing:
                return  # the last flush had its attempt; training is over
            with self._cond:
                # Keep the failed values for the next try unless newer ones arrived meanwhile.
                self._pending = {**batch, **self._pending}
                self._next_allowed = time.monotonic() + max(self.interval, 1.0)

    def _patch(self, fields: dict[str, Any]) -> bool:
        body = merge_patch_body({**fields, "updated": rfc3339_now()})
        try:
            self._api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body,
                _request_timeout=self.request_timeout,
                _content_type=MERGE_PATCH,
            )
        except Exception as exc:  # any failure: log it, keep training, retry later
            self.patches_failed += 1
            self._consecutive_failures += 1
            if self._consecutive_failures in (1, 10) or self._consecutive_failures % 100 == 0:
                logger.warning(
                    "progress reporter: patching %s/%s status failed (%d in a row), will retry: %s",
                    self.namespace,
                    self.name,
                    self._consecutive_failures,
                    _short_error(exc),
                )
            return False
        if self._consecutive_failures:
            logger.info("progress reporter: patching works again")
        self._consecutive_failures = 0
        self.patches_sent += 1
        return True


def _short_error(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def reporter_from_env(
    is_main: bool,
    interval: float,
    env: Mapping[str, str] | None = None,
) -> Reporter:
    """A ProgressReporter for rank 0 of a job started by the operator; a NullReporter otherwise.

    A reporter that cannot be built (no in-cluster config, a broken kubeconfig) is logged and
    replaced by a NullReporter: status reporting never stops training.
    """
    env = os.environ if env is None else env
    name = env.get(Env.JOB_NAME)
    namespace = env.get(Env.JOB_NAMESPACE)
    if not is_main or not name or not namespace:
        return NullReporter()
    try:
        return ProgressReporter(
            name, namespace, kubeconfig=env.get("KUBECONFIG") or None, interval=interval
        )
    except Exception as exc:
        logger.warning("status reporting is off: cannot configure the kubernetes client: %s", exc)
        return NullReporter()

"""Kueue v0.17.0 as a component of the local cluster: the real controller, with its webhooks.

`hack/build-kueue.sh` builds Kueue's manager (`sigs.k8s.io/kueue/cmd/kueue`) from the Go module
proxy; this module applies what it needs, runs it on this host beside the control plane (the
way controlplane.py runs the device plugin: a process with `kueue.pid`, `kueue.log` and
`kueue.ready` in the cluster dir, started by `up`, stopped by `down`, reported by `status`), and
waits until its webhooks answer. Plain pods labelled for a LocalQueue are then gated
(`kueue.x-k8s.io/admission`) until a ClusterQueue's quota admits their group.

controlplane.up starts it when asked (`up --kueue`, or DENSENET_KUEUE=1), stops it when told
not to (`--no-kueue`, DENSENET_KUEUE=0), and otherwise keeps a cluster as it was (with Kueue if
it had it). The tests' session cluster has it unless DENSENET_KUEUE=0 (tests/conftest.py).

What is applied, read from the module in the Go module cache (`go mod download -json`), never
from the internet nor from copies in this repository:
- the namespace `kueue-system` and the empty Secret `kueue-webhook-server-cert`, which Kueue's
  cert rotator (internal cert management) fills with a CA and a serving certificate for
  `kueue-webhook-service.kueue-system.svc`;
- the Service `kueue-webhook-service` of type ExternalName, `externalName: localhost`: the
  apiserver resolves a webhook's service to `<externalName>:<clientConfig.service.port>` and
  checks the certificate against `<service>.<namespace>.svc`, so it reaches the manager on this
  host (kwokctl's binary runtime) with Kueue's own certificate;
- every CRD of `config/components/crd/bases` (server-side apply: the Workload CRD is 1.4 MB),
  with the conversion webhooks of `crd/kustomization.yaml`'s patches (the rotator refuses to
  become ready while one of its conversion CRDs lacks `conversion.webhook.clientConfig`);
- `config/components/webhook/manifests.yaml`, renamed as Kueue's kustomization names them
  (`kueue-mutating-webhook-configuration`, `kueue-validating-webhook-configuration`) and reduced
  to the pod webhooks (`/mutate--v1-pod`, `/validate--v1-pod`) and the webhooks of Kueue's own
  kinds (`reduce_webhooks`); every clientConfig names kueue-webhook-service/kueue-system on the
  manager's webhook port.

Departures from Kueue's default manifests, on purpose:
- **Pods are Kueue's only in namespaces labelled `kueue.x-k8s.io/managed-namespace: "true"`**
  (`MANAGED_NAMESPACE_LABEL`): the pod webhooks' namespaceSelector and Kueue's
  `managedJobsNamespaceSelector` both select that label, where Kueue's default is every
  namespace but kube-system and kueue-system. The webhooks fail closed (`failurePolicy: Fail`),
  so by default every pod of the cluster would be refused while Kueue is down; this way only
  the labelled namespaces are, and the rest of the cluster (and every other test) never
  depends on Kueue. A test or a user labels a namespace to opt in.
- The webhooks of the integrations left out (Jobs, JobSets, Deployments, ...) are not applied;
  Kueue runs with `integrations.frameworks: ["pod"]` and serves no-op handlers for them anyway.
- Off-cluster settings: no leader election; the webhook server on 127.0.0.1 at 9443 (another
  free port when 9443 is taken, e.g. by a second cluster's Kueue); health and metrics on free
  ports of 127.0.0.1; the certificate directory in the cluster dir; the admin kubeconfig (no
  RBAC applied); `--feature-gates=VisibilityOnDemand=false` (the visibility server writes its
  certificates to a hard-coded `/visibility`), and no visibility APIService.
- The rotator never writes files (in a pod, the Secret is mounted), and Kueue waits (about a
  minute, with backoff) for `<certDir>/tls.crt`; `ensure` copies `tls.crt` and `tls.key` from
  the Secret into the certificate directory until the webhooks answer (and again on every
  `up`: the manager's certificate watcher reloads the files). A renewal by the rotator between
  two `up`s would go unseen until the next one; the serving certificate lasts a year and is
  renewed 90 days before it ends (cert-controller's defaults), far beyond a local cluster's
  life.

Ready means: the manager's `/readyz` (certificates mounted and injected, webhook server
started) answers ok, and the apiserver's calls through the webhooks succeed: a server-side dry
run of a ClusterQueue (mutating and validating webhooks) and of a v1beta1 LocalQueue (the
conversion webhook).

    python hack/kueue.py config      # the Configuration, as this module renders it (no cluster)
    python hack/kueue.py webhooks    # the reduced webhook configurations
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml
from testsupport import REPO_ROOT, ClusterError, Kubectl, KubectlError, wait_for

KUEUE_VERSION = "v0.17.0"  # keep in step with hack/build-kueue.sh
MODULE = "sigs.k8s.io/kueue"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kueue.sh"
CONFIG_API_VERSION = "config.kueue.x-k8s.io/v1beta2"
API_GROUP = "kueue.x-k8s.io"
NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"
NAME_PREFIX = "kueue-"  # config/default's namePrefix
DEFAULT_WEBHOOK_PORT = 9443
# The opt-in of a namespace (see the docstring): its pods go through Kueue.
MANAGED_NAMESPACE_LABEL = "kueue.x-k8s.io/managed-namespace"
MANAGED_NAMESPACE_SELECTOR: Mapping[str, Any] = {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}}
# What a plain pod group's creator sets (pkg/controller/jobs/pod/constants), and the gate.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_TOTAL_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
FEATURE_GATES = "VisibilityOnDemand=false"
PID_FILE, LOG_FILE, READY_FILE = "kueue.pid", "kueue.log", "kueue.ready"
CONFIG_FILE, CERT_DIR = "kueue.yaml", "kueue-certs"
CERT_FILES = ("tls.key", "tls.crt")  # in this order: Kueue waits for tls.crt
PROBE_NAME = "densenet-kueue-probe"
TRANSIENT = (KubectlError, subprocess.TimeoutExpired)
Manifest = dict[str, Any]


def log(message: str) -> None:
    print(f"[kueue] {message}", file=sys.stderr, flush=True)


def wanted(default: bool | None = None) -> bool | None:
    """DENSENET_KUEUE: True when 1/true/yes/on, False when 0/false/no/off, else `default`."""
    value = os.environ.get("DENSENET_KUEUE", "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    return default


def recorded(workdir: Path) -> bool:
    """Whether the cluster in `workdir` was given Kueue (and not stopped since)."""
    return (workdir / PID_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# The binary and the module's manifests


def ensure_binary() -> Path:
    """Build (or find, when already built) Kueue's manager; return its path."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not (Path(lines[-1]) / "kueue").is_file():
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    return Path(lines[-1]) / "kueue"


@functools.cache
def module_dir() -> Path:
    """Kueue's module in the Go module cache (downloaded from the proxy when missing)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{MODULE}@{KUEUE_VERSION}"],
        capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip
    try:
        directory = Path(json.loads(proc.stdout)["Dir"])
    except (ValueError, KeyError) as error:
        raise ClusterError(
            f"go mod download {MODULE}@{KUEUE_VERSION} failed: {proc.stderr.strip()}"
        ) from error
    return directory


def _load_all(path: Path) -> list[Manifest]:
    with path.open() as f:
        return [d for d in yaml.load_all(f, Loader=yaml.CSafeLoader) if d]


def conversion_crds(kustomization: Mapping[str, Any]) -> list[str]:
    """The plurals whose CRD gets a conversion webhook: crd/kustomization.yaml's patches
    `patches/webhook_in_<plural>.yaml` (the commented-out ones are not patches)."""
    plurals = []
    for patch in kustomization.get("patches") or ():
        stem = Path(str(patch.get("path", ""))).stem
        if stem.startswith("webhook_in_"):
            plurals.append(stem.removeprefix("webhook_in_"))
    return plurals


def with_conversion(crd: Manifest, port: int) -> Manifest:
    """The CRD with Kueue's conversion webhook (`/convert`) on kueue-webhook-service."""
    crd = copy.deepcopy(crd)
    crd["spec"]["conversion"] = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {"service": _service_ref("/convert", port)},
            "conversionReviewVersions": ["v1"],
        },
    }
    return crd


def _service_ref(path: str, port: int) -> dict[str, Any]:
    return {"name": SERVICE, "namespace": NAMESPACE, "path": path, "port": port}


def _kept(webhook: Mapping[str, Any]) -> bool:
    """A pod webhook, or one of Kueue's own kinds."""
    for rule in webhook.get("rules") or ():
        groups = rule.get("apiGroups") or ()
        if API_GROUP in groups or ("" in groups and "pods" in (rule.get("resources") or ())):
            return True
    return False


def _is_pod_webhook(webhook: Mapping[str, Any]) -> bool:
    return any("pods" in (r.get("resources") or ()) for r in webhook.get("rules") or ())


def reduce_webhooks(configuration: Mapping[str, Any], port: int) -> Manifest:
    """A webhook configuration of manifests.yaml as applied here: named as Kueue's
    kustomization names it, only the pod webhooks and those of Kueue's kinds, every
    clientConfig on kueue-webhook-service/kueue-system:`port`, and the pod webhooks limited to
    namespaces labelled MANAGED_NAMESPACE_LABEL."""
    reduced = copy.deepcopy(dict(configuration))
    reduced["metadata"] = {"name": NAME_PREFIX + configuration["metadata"]["name"]}
    webhooks = []
    for webhook in reduced.get("webhooks") or ():
        if not _kept(webhook):
            continue
        path = webhook["clientConfig"]["service"]["path"]
        webhook["clientConfig"] = {"service": _service_ref(path, port)}
        if _is_pod_webhook(webhook):
            webhook["namespaceSelector"] = copy.deepcopy(dict(MANAGED_NAMESPACE_SELECTOR))
        webhooks.append(webhook)
    reduced["webhooks"] = webhooks
    return reduced


def support_manifests() -> list[Manifest]:
    """The namespace, the ExternalName Service to this host (the Secret is created apart:
    applying it could meddle with what the rotator wrote)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "localhost"},
        },
    ]


def manifests(module: Path, port: int) -> tuple[list[Manifest], list[Manifest]]:
    """(CRDs, webhook configurations) from the module, as applied with the webhook `port`."""
    components = module / "config" / "components"
    with (components / "crd" / "kustomization.yaml").open() as f:
        converted = set(conversion_crds(yaml.safe_load(f)))
    crds = []
    for path in sorted((components / "crd" / "bases").glob("*.yaml")):
        for crd in _load_all(path):
            plural = crd["spec"]["names"]["plural"]
            crds.append(with_conversion(crd, port) if plural in converted else crd)
    webhooks = [
        reduce_webhooks(c, port) for c in _load_all(components / "webhook" / "manifests.yaml")
    ]
    return crds, webhooks


def render_config(
    cert_dir: Path, webhook_port: int, health_port: int, metrics_port: int
) -> Manifest:
    """Kueue's Configuration for a manager outside the cluster (see the docstring)."""
    return {
        "apiVersion": CONFIG_API_VERSION,
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE,
            "webhookSecretName": SECRET,
        },
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": copy.deepcopy(dict(MANAGED_NAMESPACE_SELECTOR)),
        "integrations": {"frameworks": ["pod"]},
    }


def command(binary: Path, config: Path, kubeconfig: Path) -> list[str]:
    return [
        str(binary),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--feature-gates={FEATURE_GATES}",
    ]


# ---------------------------------------------------------------------------------------------
# Ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, taken: Iterable[int] = ()) -> int:
    """`preferred` when it can be bound on 127.0.0.1 (and is not in `taken`), else a port the
    kernel picks free."""
    if preferred is not None and preferred not in taken and _bindable(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


# ---------------------------------------------------------------------------------------------
# The process


def processes(workdir: Path) -> list[psutil.Process]:
    """The managers of this cluster, by command line (their config in `workdir`)."""
    wanted = f"--config={workdir / CONFIG_FILE}"
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        with contextlib.suppress(psutil.Error):
            if wanted in cmdline and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _record(workdir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _current(process: psutil.Process, workdir: Path, binary: Path) -> bool:
    """Started by this module as it is now, from `binary`, with the configuration it would
    render for the ports it was given."""
    record = _record(workdir)
    try:
        ports = record["ports"] if record else {}
        expected = render_config(workdir / CERT_DIR, ports["webhook"], ports["health"],
                                 ports["metrics"])  # fmt: skip
        newer_module = Path(__file__).stat().st_mtime > process.create_time()
    except (KeyError, TypeError, OSError, psutil.Error):
        return False
    return (
        record is not None
        and record.get("pid") == process.pid
        and record.get("binary") == str(binary)
        and record.get("config") == expected
        and not newer_module
    )


def _log_tail(workdir: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((workdir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _probe_objects() -> list[Manifest]:
    """What a server-side dry run sends through the webhooks: a ClusterQueue (mutating and
    validating webhooks) and a v1beta1 LocalQueue (stored as v1beta2: the conversion webhook)."""
    return [
        {
            "apiVersion": f"{API_GROUP}/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": PROBE_NAME},
            "spec": {"namespaceSelector": {}},
        },
        {
            "apiVersion": f"{API_GROUP}/v1beta1",
            "kind": "LocalQueue",
            "metadata": {"name": PROBE_NAME, "namespace": NAMESPACE},
            "spec": {"clusterQueue": PROBE_NAME},
        },
    ]


def webhooks_answer(kubectl: Kubectl) -> bool:
    """The apiserver's calls to the webhooks succeed (a dry run: nothing is created)."""
    return kubectl.succeeds("create", "--dry-run=server", "-f", "-", input=_probe_objects())


def ready(workdir: Path, kubectl: Kubectl) -> bool:
    record = _record(workdir) or {}
    health = (record.get("ports") or {}).get("health")
    return (
        health is not None
        and _http_ok(f"http://127.0.0.1:{health}/readyz")
        and webhooks_answer(kubectl)
    )


def sync_certs(kubectl: Kubectl, cert_dir: Path) -> bool:
    """Copy the Secret's tls.key and tls.crt into `cert_dir` (atomically, when they differ);
    whether both are there."""
    proc = kubectl("get", "secret", SECRET, "-n", NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    data = json.loads(proc.stdout).get("data") or {}
    if not all(data.get(name) for name in CERT_FILES):
        return False
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name in CERT_FILES:
        content = base64.b64decode(data[name])
        target = cert_dir / name
        with contextlib.suppress(OSError):
            if target.read_bytes() == content:
                continue
        temporary = cert_dir / f".{name}.tmp"
        temporary.write_bytes(content)
        temporary.chmod(0o600)
        temporary.replace(target)
    return True


def apply_manifests(kubectl: Kubectl, port: int, timeout: float) -> None:
    """Namespace, Secret, Service, CRDs (Established) and the webhook configurations."""
    kubectl.apply(support_manifests(), "--server-side", "--field-manager=densenet-kueue")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
    }
    created = kubectl("create", "-f", "-", input=secret, check=False)
    if created.returncode != 0 and "AlreadyExists" not in created.stderr:
        raise KubectlError(("create", "secret", SECRET), created.returncode, created.stderr)
    crds, webhooks = manifests(module_dir(), port)
    apply = ("apply", "--server-side", "--force-conflicts", "--field-manager=densenet-kueue")
    kubectl(*apply, "-f", "-", input=crds, timeout=timeout)
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names,
            timeout=timeout + 10)  # fmt: skip
    kubectl(*apply, "-f", "-", input=webhooks)


def ensure(workdir: Path, kubectl: Kubectl, *, timeout: float = 180) -> int:
    """Kueue of the cluster in `workdir` running and ready: reused when it runs as this module
    would start it, else (re)started; returns its pid."""
    started = time.monotonic()
    binary = ensure_binary()
    running = processes(workdir)
    if len(running) == 1 and _current(running[0], workdir, binary) and ready(workdir, kubectl):
        sync_certs(kubectl, workdir / CERT_DIR)  # a renewal since the last `up`
        return running[0].pid
    stop(workdir)
    webhook = free_port(DEFAULT_WEBHOOK_PORT)
    health = free_port(taken={webhook})
    ports = {"webhook": webhook, "health": health, "metrics": free_port(taken={webhook, health})}
    apply_manifests(kubectl, ports["webhook"], timeout)
    cert_dir = workdir / CERT_DIR
    config = render_config(cert_dir, ports["webhook"], ports["health"], ports["metrics"])
    (workdir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    # A Secret filled by an earlier run is kept by the rotator while valid: mount it at once.
    if not sync_certs(kubectl, cert_dir):
        for name in CERT_FILES:
            (cert_dir / name).unlink(missing_ok=True)
    with (workdir / LOG_FILE).open("ab") as log_file:
        process = subprocess.Popen(
            command(binary, workdir / CONFIG_FILE, kubectl.kubeconfig),
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(workdir),
        )  # fmt: skip
    record = {"pid": process.pid, "binary": str(binary), "ports": ports, "config": config}
    (workdir / PID_FILE).write_text(json.dumps(record, indent=2) + "\n")

    def up() -> bool:
        if process.poll() is not None:
            raise ClusterError(f"kueue exited with {process.returncode}:\n{_log_tail(workdir)}")
        return sync_certs(kubectl, cert_dir) and ready(workdir, kubectl)

    wait_for(up, timeout, interval=0.5, what="kueue's webhooks to answer", retry_on=TRANSIENT)
    (workdir / READY_FILE).write_text(f"{time.monotonic() - started:.1f}\n")
    log(f"kueue {KUEUE_VERSION} running (pid {process.pid}, webhooks on 127.0.0.1:"
        f"{ports['webhook']}), ready in {time.monotonic() - started:.1f} s")  # fmt: skip
    return process.pid


def release_namespace(kubectl: Kubectl, namespace: str) -> None:
    """Let a managed namespace go on the local cluster: delete its pods, then its Kueue
    Workloads (neither waits).

    Kueue's finalizer (`kueue.x-k8s.io/managed`) holds a deleted pod of a group until the pod
    is Failed or Succeeded, or its Workload is gone. A kubelet ends a deleted pod; KWOK's fake
    nodes never do (the pod stays Running, Terminating, holding its NPUs), and since
    Kubernetes deletes a namespace's pods before its other objects, the namespace's deletion
    would wait for ever. Deleting the Workloads makes Kueue drop the finalizers.
    """
    kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
    kubectl("delete", "workloads.kueue.x-k8s.io", "--all", "-n", namespace, "--wait=false",
            check=False)  # fmt: skip


def stop(workdir: Path, kubectl: Kubectl | None = None) -> None:
    """End this cluster's manager and forget its files. With `kubectl` (a cluster that goes on
    without Kueue), also delete the webhook configurations, which would refuse the managed
    namespaces' pods while nothing answers them."""
    found = processes(workdir)
    for process in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(found, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    had_run = (workdir / PID_FILE).exists()
    for leftover in (PID_FILE, READY_FILE):
        (workdir / leftover).unlink(missing_ok=True)
    if kubectl is not None and had_run:
        kubectl("delete", "mutatingwebhookconfiguration", MUTATING, "--ignore-not-found",
                check=False)  # fmt: skip
        kubectl("delete", "validatingwebhookconfiguration", VALIDATING, "--ignore-not-found",
                check=False)  # fmt: skip


def status(workdir: Path) -> dict[str, Any]:
    """The manager's pid, whether it runs and is ready (as `ensure` left it), its ports and log."""
    found = processes(workdir)
    record = _record(workdir) or {}
    return {
        "pid": found[0].pid if found else None,
        "running": bool(found),
        "ready": bool(found) and (workdir / READY_FILE).is_file(),
        "ports": record.get("ports") if found else None,
        "log": str(workdir / LOG_FILE),
    }


# ---------------------------------------------------------------------------------------------
# CLI: what this module would apply and run (the cluster's own CLI is localcluster.py)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("config", "webhooks"))
    args = parser.parse_args(argv)
    if args.what == "config":
        config = render_config(Path("CERT_DIR"), DEFAULT_WEBHOOK_PORT, 8081, 8443)
        print(yaml.safe_dump(config, sort_keys=False), end="")
    else:
        _, webhooks = manifests(module_dir(), DEFAULT_WEBHOOK_PORT)
        print(yaml.safe_dump_all(webhooks, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

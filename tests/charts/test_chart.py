"""The Helm chart (charts/densenet-operator) with the real helm binary.

Unit tests render it with `helm template` / `helm lint` and need no cluster. The integration
tests install it into the local control plane (tests/conftest.py) and run the real operator
under the chart's ServiceAccount, to prove that its RBAC is enough.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster
from localoperator import OperatorProcess
from testsupport import (
    CRD_FILE,
    Kubectl,
    create_namespace,
    find_tool,
    service_account_kubeconfig,
    wait_for,
)

from densenet_contract import CRD_NAME, GROUP, PLURAL, cann
from densenet_operator import admission, backends, kueue, native, rbac, reconcile, volcano
from densenet_operator.handlers import CHILD_RESOURCES
from densenet_operator.settings import PROJECT_VERSION, RunAs, SettingsEnv, TrainerDefaults
from densenet_operator.spec import JobRef

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "densenet-operator"
CHART_CRD_FILE = CHART / "files" / "crds" / f"{CRD_NAME}.yaml"
KEEP = {"helm.sh/resource-policy": "keep"}
LIVENESS = "http://0.0.0.0:8080/healthz"
METRICS = "http://0.0.0.0:8080/metrics"  # the same port: one server answers both
SERVE = ["run", "--liveness", LIVENESS, "--metrics", METRICS]


HELM = str(find_tool("helm"))


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr}")
    return proc


def set_args(values: dict[str, Any]) -> list[str]:
    """`--set-json key=value` for each value: types survive (lists, null, integers)."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]  # fmt: skip


def render(
    values: dict[str, Any] | None = None, *extra: str, release: str = "dn"
) -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "--namespace", "densenet-system",
               *set_args(values or {}), *extra).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def flag_values(args: Sequence[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


# ---------------------------------------------------------------------------------------------
# RBAC helpers: a rule list as a set of (apiGroup, resource, verb, resourceName or "*").


def grants(rules: Sequence[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        out.add((group, resource, verb, name))
    return out


def allows(
    granted: set[tuple[str, str, str, str]], group: str, resource: str, verb: str, name: str = "*"
) -> bool:
    return (group, resource, verb, "*") in granted or (
        name != "*" and (group, resource, verb, name) in granted
    )


def role_rules(docs: Sequence[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Everything the operator's ServiceAccount may do, over both ClusterRoles."""
    return grants([r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]])


# ---------------------------------------------------------------------------------------------
# Lint, render, schema


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"replicas": 3, "watchNamespaces": ["team-a", "team-b"], "logLevel": "debug",
         "metrics.enabled": True, "metrics.serviceMonitor.enabled": True, "crds.keep": False,
         "trainer.ascendImages": {"a3": "r/t:a3"}, "trainer.rankTableHostIp": False,
         "trainer.hwHiAiUser": {"uid": 1001, "gid": 1001}},
        {"crds.enabled": False, "serviceAccount.create": False, "serviceAccount.name": "ops"},
    ],
    ids=["defaults", "everything-on", "bring-your-own"],
)  # fmt: skip
def test_helm_lint_strict_is_clean(values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), *set_args(values), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_default_render_has_the_operator_and_its_rbac() -> None:
    docs = render()
    assert kinds(docs) == [
        ("ClusterRole", "dn-densenet-operator"),
        ("ClusterRole", "dn-densenet-operator-cluster"),
        ("ClusterRoleBinding", "dn-densenet-operator"),
        ("ClusterRoleBinding", "dn-densenet-operator-cluster"),
        ("CustomResourceDefinition", CRD_NAME),
        ("Deployment", "dn-densenet-operator"),
        ("NetworkPolicy", "dn-densenet-operator"),
        ("ServiceAccount", "dn-densenet-operator"),
        ("ValidatingAdmissionPolicy", admission.CREATOR_POLICY),
        ("ValidatingAdmissionPolicy", admission.STATUS_POLICY),
        ("ValidatingAdmissionPolicyBinding", admission.CREATOR_POLICY),
        ("ValidatingAdmissionPolicyBinding", admission.STATUS_POLICY),
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "densenet-operator"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == "0.1.0"
    deployment = only(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == "densenet-system"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "dn-densenet-operator"
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "dn-densenet-operator",
             "namespace": "densenet-system"}
        ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"unknownKey": 1}, "additional properties 'unknownKey' not allowed"),
        ({"image.registry": "x"}, "additional properties 'registry' not allowed"),
        ({"crds.upgrade": True}, "additional properties 'upgrade' not allowed"),
        ({"replicas": "two"}, "want integer"),
        ({"replicas": -1}, "minimum"),
        ({"crds.keep": "yes"}, "want boolean"),
        ({"logLevel": "trace"}, "value must be one of"),
        ({"image.pullPolicy": "Sometimes"}, "value must be one of"),
        ({"watchNamespaces": "team-a"}, "want array"),
        ({"watchNamespaces": ["Team_A"]}, "does not match pattern"),
        ({"peering.enabled": "auto"}, "want null or boolean"),
        ({"resources.limits.memory": "lots"}, "anyOf"),
        ({"metrics.serviceMonitor.interval": "half a minute"}, "does not match pattern"),
        ({"metrics.serviceMonitor.scrapeTimeout": ""}, "minLength"),
        ({"metrics.serviceMonitor.labels": {"release": 1}}, "want string"),
        ({"metrics.serviceMonitor.port": 9090}, "additional properties 'port' not allowed"),
        ({"trainer.ascendImages": {"a5": "x"}}, "additional properties 'a5' not allowed"),
        ({"trainer.rankTableHostIp": "auto"}, "want null or boolean"),
        ({"trainer.hwHiAiUser": {"uid": -1, "gid": 1000}}, "minimum"),
        ({"trainer.hwHiAiUser": {"uid": "HwHiAiUser", "gid": 1000}}, "want integer"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(values: dict[str, Any], message: str) -> None:
    proc = helm("template", "dn", str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_plain_set_of_an_unknown_key_fails() -> None:
    proc = helm("template", "dn", str(CHART), "--set", "unknownKey=1", check=False)
    assert proc.returncode != 0 and "unknownKey" in proc.stderr


def test_schema_is_strict_at_every_level() -> None:
    """Every object with fixed keys says additionalProperties: false; free maps give a type."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    free_maps = {"global", "nodeSelector", "podAnnotations", "requests", "limits",
                 "nodeAffinity", "podAffinity", "podAntiAffinity", "labels", "matchLabels"}  # fmt: skip

    def walk(node: dict[str, Any], where: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        if node.get("type") == "object" and where.rsplit(".", 1)[-1] not in free_maps:
            assert node.get("additionalProperties") is False, f"{where} is not strict"
        for key, child in (node.get("properties") or {}).items():
            assert "type" in child or "$ref" in child, f"{where}.{key} has no type"
            walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "values")
    assert set(values) <= set(schema["properties"])  # every default is declared


# ---------------------------------------------------------------------------------------------
# The CRD


def test_chart_copy_of_the_crd_is_byte_identical_to_crds() -> None:
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), (
        f"{CHART_CRD_FILE.relative_to(ROOT)} is out of date: "
        f"cp {CRD_FILE.relative_to(ROOT)} {CHART_CRD_FILE.relative_to(ROOT)}"
    )


def test_rendered_crd_equals_crds_apart_from_labels_and_keep_annotation() -> None:
    source = yaml.safe_load(CRD_FILE.read_text())
    rendered = only(render(), "CustomResourceDefinition")
    labels = rendered["metadata"].pop("labels")
    annotations = rendered["metadata"].pop("annotations")
    source_labels = source["metadata"].pop("labels", {})
    source_annotations = source["metadata"].pop("annotations", {})
    assert labels.items() >= source_labels.items()
    assert set(labels) - set(source_labels) <= {
        "helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
        "app.kubernetes.io/component", "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
    }  # fmt: skip
    assert annotations == {**source_annotations, **KEEP}
    assert rendered == source


def test_crd_keep_and_enabled_switches() -> None:
    crd = only(render({"crds.keep": False}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    assert not [
        d for d in render({"crds.enabled": False}) if d["kind"] == "CustomResourceDefinition"
    ]


def test_kopf_peering_crds_ship_in_the_chart_crds_folder() -> None:
    """Installed by Helm before the templates (the peering object needs them), never templated."""
    crds = {d["metadata"]["name"]: d for d in yaml.safe_load_all(helm("show", "crds", str(CHART)).stdout) if d}  # fmt: skip
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for name, scope, kind in [
        ("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering"),
        ("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering"),
    ]:
        spec = crds[name]["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (version,) = spec["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object"
        assert schema["properties"]["status"] == {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True
        }  # fmt: skip
    # The densenet CRD is a template (upgradable), never in crds/.
    assert CRD_NAME not in crds


# ---------------------------------------------------------------------------------------------
# The Deployment


def test_deployment_security_context() -> None:
    docs = render()
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    operator = container(docs)
    sc = operator["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # readOnlyRootFilesystem: /tmp is the one writable place.
    (mount,) = operator["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume


def test_deployment_defaults() -> None:
    docs = render()
    deployment = only(docs, "Deployment")
    operator = container(docs)
    assert deployment["spec"]["replicas"] == 1
    # Standalone: two operators must never overlap, not even during a rollout.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "command" not in operator  # the image's ENTRYPOINT, densenet-operator
    assert operator["args"] == SERVE
    assert operator["image"] == "densenet-operator:0.1.0"
    assert operator["imagePullPolicy"] == "Always"  # kube-score: pull secrets checked each start
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["DENSENET_TRAINER_IMAGE"] == "densenet-trainer:0.1.0"
    probe = operator["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in (8080, "http")
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in operator["ports"]
    assert operator["resources"]["requests"] and operator["resources"]["limits"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert not [d for d in docs if d["kind"] in ("ClusterKopfPeering", "KopfPeering", "Service")]


def test_deployment_takes_the_values() -> None:
    values = {
        "image": {"repository": "registry.example/densenet-operator", "tag": "1.2.3",
                  "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [{"name": "regcred"}],
        "trainer.image": "registry.example/densenet-trainer:1.2.3-ascend",
        "resources": {"requests": {"cpu": "250m", "memory": "300Mi", "ephemeral-storage": "32Mi"},
                      "limits": {"cpu": 2, "memory": "1Gi", "ephemeral-storage": "128Mi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "role", "operator": "In", "values": ["ops"]}]}]}}},
        "podAnnotations": {"example.com/scrape": "false"},
    }  # fmt: skip
    docs = render(values)
    pod = only(docs, "Deployment")["spec"]["template"]
    operator = container(docs)
    assert operator["image"] == "registry.example/densenet-operator:1.2.3"
    assert operator["imagePullPolicy"] == "IfNotPresent"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["DENSENET_TRAINER_IMAGE"] == "registry.example/densenet-trainer:1.2.3-ascend"
    assert operator["resources"] == values["resources"]
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert pod["spec"][key] == values[key]
    assert pod["metadata"]["annotations"] == values["podAnnotations"]


def operator_env(docs: Sequence[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


def test_the_charts_trainer_defaults_are_the_operators() -> None:
    env = operator_env(render())
    assert {name: env[name] for name in map(SettingsEnv.ascend_image, cann.ASCEND_FAMILIES)} == {
        "DENSENET_TRAINER_IMAGE_910": "densenet-trainer:0.1.0-910",
        "DENSENET_TRAINER_IMAGE_910B": "densenet-trainer:0.1.0-910b",
        "DENSENET_TRAINER_IMAGE_A3": "densenet-trainer:0.1.0-a3",
    }
    assert SettingsEnv.RANK_TABLE_HOST_IP not in env  # null: by the image pair's CANN
    # What the chart renders, the operator reads as its own defaults.
    assert TrainerDefaults.from_env(env) == TrainerDefaults.from_env({})
    values = yaml.safe_load((CHART / "values.yaml").read_text())["trainer"]
    assert tuple(values["ascendImages"]) == cann.ASCEND_FAMILIES
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == PROJECT_VERSION


def test_ascend_images_host_ip_and_hwhiaiuser_reach_the_operator() -> None:
    values = {
        "trainer.image": "registry.example/densenet-trainer:1.2.3",
        "trainer.ascendImages": {"910b": "registry.example/densenet-trainer:1.2.3-910b"},
        "trainer.rankTableHostIp": False,
        "trainer.hwHiAiUser": {"uid": 1001, "gid": 1000004},
    }
    defaults = TrainerDefaults.from_env(operator_env(render(values)))
    assert defaults.image_for("cpu", "910") == "registry.example/densenet-trainer:1.2.3"
    assert defaults.image_for("ascend", "910b-16") == "registry.example/densenet-trainer:1.2.3-910b"
    assert defaults.image_for("ascend", "910") == "densenet-trainer:0.1.0-910"  # the others kept
    assert defaults.rank_table_host_ip is False
    assert defaults.ascend_run_as == RunAs(uid=1001, gid=1000004)  # no 1e+06 from YAML floats
    on = TrainerDefaults.from_env(operator_env(render({"trainer.rankTableHostIp": True})))
    assert on.rank_table_host_ip is True


def test_debug_log_level_adds_verbose() -> None:
    assert "--verbose" not in container(render())["args"]
    assert container(render({"logLevel": "debug"}))["args"][-1] == "--verbose"


def test_watch_namespaces_become_namespace_flags_and_rolebindings() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    args = container(docs)["args"]
    assert flag_values(args, "--namespace") == ["team-a", "team-b"]
    assert "--peering" not in args
    # The namespaced permissions only where the operator works; cluster-wide only what kopf
    # reads cluster-wide (CRDs, namespaces).
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "ClusterRole", "name": "dn-densenet-operator"}  # fmt: skip
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == "dn-densenet-operator-cluster"
    cluster_role = only(docs, "ClusterRole", "dn-densenet-operator-cluster")
    assert grants(cluster_role["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list", "*"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "*"),
        ("", "namespaces", "list", "*"),
        ("", "namespaces", "watch", "*"),
    }


def test_two_replicas_turn_peering_on() -> None:
    docs = render({"replicas": 2})
    deployment = only(docs, "Deployment")
    operator = container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # RollingUpdate: peering keeps one active
    assert operator["args"] == [*SERVE, "--peering", "dn-densenet-operator"]
    assert operator["command"][:2] == ["/bin/sh", "-c"]
    assert "--priority" in operator["command"][2]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        operator["env"]
    )
    peering = only(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "dn-densenet-operator"
    granted = role_rules(docs)
    for verb in ("list", "watch"):
        assert allows(granted, "kopf.dev", "clusterkopfpeerings", verb)
    for verb in ("get", "patch"):
        assert allows(granted, "kopf.dev", "clusterkopfpeerings", verb, "dn-densenet-operator")
        assert not allows(granted, "kopf.dev", "clusterkopfpeerings", verb, "someone-elses")
    assert not any(g[1] == "kopfpeerings" for g in granted)


def test_peering_switch_and_name() -> None:
    assert "--peering" not in container(render({"replicas": 2, "peering.enabled": False}))["args"]
    docs = render({"peering.enabled": True, "peering.name": "dn-ha"})
    assert flag_values(container(docs)["args"], "--peering") == ["dn-ha"]
    assert only(docs, "ClusterKopfPeering")["metadata"]["name"] == "dn-ha"


def test_peering_with_watch_namespaces_uses_a_kopfpeering_in_each() -> None:
    docs = render({"replicas": 2, "watchNamespaces": ["team-a", "team-b"]})
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    namespaced = grants(only(docs, "ClusterRole", "dn-densenet-operator")["rules"])
    assert allows(namespaced, "kopf.dev", "kopfpeerings", "patch", "dn-densenet-operator")
    assert allows(namespaced, "kopf.dev", "kopfpeerings", "watch")
    assert not any(g[1] == "clusterkopfpeerings" for g in role_rules(docs))


def test_peering_priority_differs_per_pod(tmp_path: Path) -> None:
    """kopf freezes every replica when two share the top priority: the wrapper gives each pod
    its own, derived from the pod name, and passes the chart's args on untouched."""
    command = container(render({"replicas": 2}))["command"]
    stub = tmp_path / "densenet-operator"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    priorities = []
    for pod in ("dn-densenet-operator-7d4b9c-abcde", "dn-densenet-operator-7d4b9c-fghij"):
        env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "POD_NAME": pod}
        out = subprocess.run(
            [*command, "run", "--peering", "p"], env=env, capture_output=True, text=True,
            check=True,
        ).stdout.split("\n")  # fmt: skip
        assert out[:3] == ["run", "--peering", "p"] and out[3] == "--priority"
        priorities.append(int(out[4]))
    assert priorities[0] != priorities[1]


def test_metrics_service_is_optional() -> None:
    assert not [d for d in render() if d["kind"] in ("Service", "ServiceMonitor")]
    docs = render({"metrics.enabled": True})
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    service = only(docs, "Service")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == 8080
    # The Service's target is the container port that serves /metrics.
    operator = container(docs)
    (served,) = [p for p in operator["ports"] if p["name"] == port["targetPort"]]
    assert served["containerPort"] == 8080
    assert flag_values(operator["args"], "--metrics") == ["http://0.0.0.0:8080/metrics"]
    assert service["spec"]["selector"].items() <= (
        only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_service_monitor_scrapes_the_metrics_service() -> None:
    docs = render({"metrics.serviceMonitor": {"enabled": True, "labels": {"release": "kps"},
                                              "interval": "15s", "scrapeTimeout": "5s"}})  # fmt: skip
    service = only(docs, "Service")  # the monitor brings its Service
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {
        "matchNames": [service["metadata"]["namespace"]]
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": service["spec"]["ports"][0]["name"], "path": "/metrics",
                        "interval": "15s", "scrapeTimeout": "5s"}  # fmt: skip


def test_existing_service_account() -> None:
    docs = render({"serviceAccount.create": False, "serviceAccount.name": "ops"})
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert {s["name"] for d in docs if d["kind"] == "ClusterRoleBinding" for s in d["subjects"]} == {"ops"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Least privilege

# What the operator's ServiceAccount may do cluster-wide with the default values; any change
# here should come with a reason in templates/rbac.yaml.
EXPECTED_GRANTS = {
    (GROUP, PLURAL, "get"), (GROUP, PLURAL, "list"), (GROUP, PLURAL, "watch"),
    (GROUP, PLURAL, "delete"),
    (GROUP, f"{PLURAL}/status", "get"), (GROUP, f"{PLURAL}/status", "patch"),
    (GROUP, f"{PLURAL}/finalizers", "update"),
    ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "create"),
    ("", "pods", "delete"),
    *((group, resource, verb)
      for group, resource in [("", "services"), ("", "serviceaccounts"), ("", "configmaps"),
                              ("rbac.authorization.k8s.io", "roles"),
                              ("rbac.authorization.k8s.io", "rolebindings"),
                              ("networking.k8s.io", "networkpolicies")]
      for verb in ("get", "list", "watch", "create", "delete")),
    (kueue.GROUP, kueue.WORKLOAD.plural, "get"), (kueue.GROUP, kueue.WORKLOAD.plural, "delete"),
    ("", "configmaps", "patch"),
    ("", "events", "create"),
    *((kind.group, kind.plural, verb) for kind in (volcano.POD_GROUP, *native.BACKEND.kinds.values())
      for verb in ("get", "list", "watch", "create", "delete")),
    (kueue.GROUP, kueue.WORKLOAD.plural, "get"), (kueue.GROUP, kueue.WORKLOAD.plural, "delete"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}  # fmt: skip


def test_cluster_role_grants_exactly_what_the_operator_needs() -> None:
    granted = role_rules(render())
    assert {(g, r, v) for g, r, v, _ in granted} == EXPECTED_GRANTS
    for rule in (r for d in render() if d["kind"] == "ClusterRole" for r in d["rules"]):
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


API_VERBS = {"create": "create", "read": "get", "patch": "patch", "delete": "delete",
             "list": "list", "replace": "update"}  # fmt: skip
API_GROUPS = {"core": "", "rbac": "rbac.authorization.k8s.io", "networking": "networking.k8s.io"}  # fmt: skip


def test_cluster_role_covers_every_api_call_of_the_reconciler() -> None:
    """Each `self.core/rbac/custom.<verb>_namespaced_<kind>` call of reconcile.py is granted."""
    source = (ROOT / "operator" / "densenet_operator" / "reconcile.py").read_text()
    calls = re.findall(r"self\.(core|rbac)\.(\w+?)_namespaced_(\w+)", source)
    # Custom objects: the group is the call's first argument.
    custom = re.findall(
        r"self\.custom\.(\w+?)_namespaced_(custom_object(?:_status)?)\s*,\s*([\w.]+)", source
    )
    assert len(calls) >= 2 and len(custom) >= 3, (calls, custom)  # the patterns still match
    groups = {"GROUP": (GROUP, PLURAL), "volcano.GROUP": (volcano.GROUP, volcano.PLURAL)}
    needed = {(API_GROUPS[api], kind.replace("_", "") + "s", API_VERBS[verb])
              for api, verb, kind in calls}  # fmt: skip
    for verb, kind, group_arg in custom:
        group, plural = groups[group_arg]
        needed.add(
            (group, plural + ("/status" if kind.endswith("_status") else ""), API_VERBS[verb])
        )
    # The children: created, read and deleted through reconcile.CHILD_APIS, watched for
    # deletion through handlers.CHILD_RESOURCES.
    for api, noun in reconcile.CHILD_APIS.values():
        plural = re.sub("y$", "ie", noun.replace("_", "")) + "s"  # network_policy: ...policies
        needed |= {(API_GROUPS[api], plural, API_VERBS[verb])
                   for verb in reconcile.CHILD_VERBS}  # fmt: skip
    for group, _, plural in CHILD_RESOURCES:
        needed |= {(group, plural, "list"), (group, plural, "watch")}
    # The gang backends' kinds: made, read, deleted (reconcile.py) and watched (handlers.py).
    # Another controller's kind (Kueue's Workload) is only read and deleted.
    for kind in backends.CUSTOM_KINDS.values():
        verbs = ("get", "create", "delete", "list", "watch") if kind.owned else ("get", "delete")
        needed |= {(kind.group, kind.plural, verb) for verb in verbs}
    granted = role_rules(render())
    for group, resource, verb in sorted(needed):
        assert allows(granted, group, resource, verb), (group, resource, verb)


def test_operator_holds_every_permission_of_the_trainer_role() -> None:
    """RBAC refuses to let the operator create a Role granting more than it holds itself."""
    granted = role_rules(render())
    job = JobRef(name="dn161", namespace="team-a", uid="uid-1")
    for group, resource, verb, name in grants(rbac.build_role(job)["rules"]):
        assert allows(granted, group, resource, verb, name), (group, resource, verb, name)


# ---------------------------------------------------------------------------------------------
# Forbidden replies in the operator's log

# A 403 from the API server, by the structure of the record that reports it (never a bare
# "403": the operator logs "pass for ns/job at resourceVersion 403"):
FORBIDDEN_REPLY = re.compile(
    # kubernetes(_asyncio).ApiException, as the operator's reconciler raises and logs it
    r"ApiException: \(403\)\nReason: Forbidden"
    # kopf's exception for a 403 (its request retries, watches, event posts, peering)
    r"|\bAPIForbiddenError\("
    # a Status object, as JSON (a reply's body) or as a Python dict (kopf's payload)
    r"""|["']code["']\s*:\s*403\b"""
    # kopf's warnings when a list or watch of namespaces or resources got a 403
    r"|Not enough (?:RBAC )?permissions to"
)


def forbidden_replies(log: str) -> list[str]:
    """The log lines that report a 403 Forbidden reply from the API server."""
    lines = log.splitlines()
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    hits = {bisect.bisect_right(starts, m.start()) - 1 for m in FORBIDDEN_REPLY.finditer(log)}
    return [lines[i] for i in sorted(hits)]


# Excerpts of the real operator's log (kopf 1.45, kubernetes_asyncio 36) under a ServiceAccount
# that lacked permissions, shortened.
OPERATOR_403 = """\
[2026-12-01 14:38:13,512] densenet_operator.jo [ERROR   ] reconciling forbidden-demo/nope failed; retrying in 1s
Traceback (most recent call last):
  File "/work/main/operator/densenet_operator/reconcile.py", line 75, in _call
    raise ApiException(status=response.status, reason=f"{response.reason}: {body[:500]!r}")
kubernetes_asyncio.client.exceptions.ApiException: (403)
Reason: Forbidden: b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services is forbidden: User \\"system:serviceaccount:forbidden-demo:limited\\" cannot create resource \\"services\\" in API group \\"\\" in the namespace \\"forbidden-demo\\"","reason":"Forbidden","details":{"kind":"services"},"code":403}\\n'
"""
KOPF_403 = """\
[2026-12-01 14:38:13,516] kopf._core.engines.p [ERROR   ] Request attempt #1/9 failed; will retry: POST https://127.0.0.1:32764/api/v1/namespaces/forbidden-demo/events -> APIForbiddenError('events is forbidden: User "system:serviceaccount:forbidden-demo:limited" cannot create resource "events" in API group "" in the namespace "forbidden-demo"', {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'message': 'events is forbidden: User "system:serviceaccount:forbidden-demo:limited" cannot create resource "events" in API group "" in the namespace "forbidden-demo"', 'reason': 'Forbidden', 'details': {'kind': 'events'}, 'code': 403}, status=403)
"""
HEALTHY = """\
[2026-12-01 14:38:13,504] densenet_operator.jo [DEBUG   ] pass for chart-jobs-1a2b3c/chart-rbac at resourceVersion 403
[2026-12-01 14:38:13,504] kopf.objects         [DEBUG   ] Patching with: {'status': {'observedGeneration': 403}}
[2026-12-01 14:38:13,505] densenet_operator.jo [INFO    ] made 403 API requests for 1 jobs
"""


def test_forbidden_replies_are_found_by_their_structure() -> None:
    assert forbidden_replies(HEALTHY) == []
    assert " 403" in HEALTHY  # what the old check tripped over
    found = forbidden_replies(HEALTHY + OPERATOR_403)
    assert found == OPERATOR_403.splitlines()[-2:]  # "(403)" and the Status body after it
    assert forbidden_replies(KOPF_403) == KOPF_403.splitlines()
    kopf_warning = "[...] kopf._core.reactor.o [WARNING ] Not enough permissions to watch for namespaces: changes (deletion/creation) will not be noticed"
    assert forbidden_replies(kopf_warning) == [kopf_warning]


# ---------------------------------------------------------------------------------------------
# Integration: the chart in the local cluster

PEERING_NAME = "densenet-ha"


class Release:
    """One helm release of the chart in the test cluster."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.name = f"dn-{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-densenet-operator"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm(*args, "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace,
                    check=check, timeout=300)  # fmt: skip

    def install(self, values: dict[str, Any], *extra: str) -> None:
        # --take-ownership: the densenettrainings CRD may exist already, applied from crds/
        # by other tests (or left by an earlier release, kept by crds.keep); the release adopts
        # it. Its content is the same (test_rendered_crd_equals_crds...), so nothing changes.
        # --force-conflicts: server-side apply takes over fields another manager set.
        self.helm("install", self.name, str(CHART), "--take-ownership", "--force-conflicts",
                  *set_args(values), *extra)  # fmt: skip

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--wait", check=False)


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[Release]:
    rel = Release(cluster.kubeconfig, namespace)
    try:
        yield rel
    finally:
        rel.uninstall()


def can_i(kubectl: Kubectl, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else []
    resource, _, subresource = resource.partition("/")
    if subresource:
        where.append(f"--subresource={subresource}")
    proc = kubectl("auth", "can-i", verb, resource, f"--as={sa}", *where, check=False)
    return proc.stdout.strip() == "yes"


def assert_operator_permissions(kubectl: Kubectl, sa: str) -> None:
    """What the chart's ServiceAccount may do, and may not, asked of the API server's authorizer."""
    for verb, resource in [
        ("watch", "densenettrainings.training.densenet.dev"),
        ("patch", "densenettrainings.training.densenet.dev/status"),
        ("delete", "densenettrainings.training.densenet.dev"),
        ("create", "pods"), ("delete", "pods"), ("list", "pods"),
        ("create", "services"), ("create", "serviceaccounts"),
        ("patch", "configmaps"), ("create", "roles.rbac.authorization.k8s.io"),
        ("watch", "configmaps"), ("delete", "services"),  # self-repair, a deleted job's children
        ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "events"),
    ]:  # fmt: skip
        assert can_i(kubectl, sa, verb, resource, "anywhere"), (verb, resource)
    assert can_i(kubectl, sa, "watch", "customresourcedefinitions", None)
    for verb, resource in [
        ("get", "secrets"), ("update", "pods"), ("create", "pods/exec"),
        ("patch", "densenettrainings.training.densenet.dev"), ("create", "deployments.apps"),
        ("update", "services"), ("update", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"), ("patch", "events.events.k8s.io"),
    ]:  # fmt: skip
        assert not can_i(kubectl, sa, verb, resource, "anywhere"), (verb, resource)
    assert not can_i(kubectl, sa, "list", "nodes", None)
    assert not can_i(kubectl, sa, "list", "namespaces", None)  # cluster-wide kopf needs none


@pytest.mark.integration
def test_install_brings_up_the_operator_and_uninstall_keeps_only_the_crd(
    kubectl: Kubectl, release: Release
) -> None:
    release.install({})
    ns, full = release.namespace, release.fullname

    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    assert kubectl("get", "densenettrainings", "-A").returncode == 0
    # The CRD in the cluster is what crds/ says: applying crds/ again would change nothing.
    diff = kubectl("diff", "--server-side", "--force-conflicts", "-f", str(CRD_FILE), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    crd = kubectl.json("get", "crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        kubectl("get", "crd", name)

    deployment = kubectl.json("get", "deployment", full, "-n", ns)
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert operator["args"] == SERVE
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    # KWOK nodes have no container runtime: the image is never pulled. The Deployment's
    # ReplicaSet and pod exist, and the real scheduler places the pod on a fake node.
    selector = "app.kubernetes.io/instance=" + release.name
    (replica_set,) = wait_for(
        lambda: kubectl.json("get", "replicasets", "-n", ns, "-l", selector)["items"],
        what="the Deployment's ReplicaSet",
    )
    assert replica_set["metadata"]["ownerReferences"][0]["name"] == full
    nodes = kubectl.json("get", "nodes")["items"]
    pod = wait_for(
        lambda: [
            p
            for p in kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"]
            if p["spec"].get("nodeName") or not nodes
        ],
        what="the operator pod, scheduled",
    )[0]
    assert pod["spec"]["serviceAccountName"] == full

    assert_operator_permissions(kubectl, f"system:serviceaccount:{ns}:{full}")

    # Two replicas: peering on, a ClusterKopfPeering (its CRD came from the chart's crds/).
    release.helm("upgrade", release.name, str(CHART), "--reuse-values", "--set", "replicas=2")
    kubectl("get", "clusterkopfpeering", full)
    deployment = kubectl.json("get", "deployment", full, "-n", ns)
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert flag_values(operator["args"], "--peering") == [full]

    release.helm("uninstall", release.name, "--wait")
    for kind, name, where in [
        ("deployment", full, ns), ("serviceaccount", full, ns), ("clusterrole", full, None),
        ("clusterrole", f"{full}-cluster", None), ("clusterrolebinding", full, None),
        ("clusterrolebinding", f"{full}-cluster", None), ("clusterkopfpeering", full, None),
    ]:  # fmt: skip
        args = ["get", kind, name, *(["-n", where] if where else [])]
        assert kubectl(*args, check=False).returncode != 0, f"{kind}/{name} outlived uninstall"
    wait_for(
        lambda: not kubectl.json("get", "replicasets,pods", "-n", ns, "-l", selector)["items"],
        what="the ReplicaSet and pods to be garbage-collected",
    )
    # Kept: the CRD (and every DenseNetTraining with it), and kopf's shared peering CRDs.
    assert kubectl("get", "crd", CRD_NAME).returncode == 0
    assert kubectl("get", "densenettrainings", "-A").returncode == 0


class ChartOperator:
    """The real operator, run here, authenticated as the chart's ServiceAccount."""

    def __init__(self, kubectl: Kubectl, jobs: str, job: str, log_path: Path) -> None:
        self.kubectl = kubectl
        self.jobs = jobs
        self.job = job
        self.log_path = log_path

    def exists(self, kind: str, name: str) -> bool:
        return self.kubectl("get", kind, name, "-n", self.jobs, check=False).returncode == 0


@pytest.fixture(scope="module")
def chart_operator(
    cluster: Cluster, kubectl: Kubectl, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    """The chart installed limited to one namespace, with peering and without the CRD (applied
    from crds/ as the other tests do; the release leaves it alone); the operator started with
    a token of the chart's ServiceAccount and one DenseNetTraining created."""
    release_ns = create_namespace(kubectl, f"chart-release-{uuid.uuid4().hex[:6]}")
    jobs = create_namespace(kubectl, f"chart-jobs-{uuid.uuid4().hex[:6]}")
    release = Release(cluster.kubeconfig, release_ns)
    tmp = tmp_path_factory.mktemp("chart-operator")
    process: OperatorProcess | None = None
    others = contextlib.ExitStack()
    try:
        release.install({"crds.enabled": False, "replicas": 2, "watchNamespaces": [jobs],
                         "peering.name": PEERING_NAME})  # fmt: skip
        kubectl("get", "kopfpeering", PEERING_NAME, "-n", jobs)
        kubeconfig = service_account_kubeconfig(
            cluster.kubeconfig, release_ns, release.fullname, tmp / "sa"
        )
        process = OperatorProcess(
            kubeconfig,
            tmp / "operator.log",
            "--namespace",
            jobs,
            "--peering",
            PEERING_NAME,
            "--priority",
            "7",
        )
        others.enter_context(OperatorProcess.others_stopped())  # only the chart's RBAC may act
        process.start()
        job = "chart-rbac"
        kubectl.apply(
            {"apiVersion": f"{GROUP}/v1alpha1", "kind": "DenseNetTraining",
             "metadata": {"name": job, "namespace": jobs},
             "spec": {"model": "densenet121", "replicas": 1, "devicesPerReplica": 1,
                      "device": {"type": "cpu"}, "data": {"synthetic": True}}}
        )  # fmt: skip
        yield ChartOperator(kubectl, jobs, job, process.log_path)
    finally:
        if process is not None:
            process.stop()
        others.close()
        release.uninstall()
        for ns in (jobs, release_ns):
            kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.integration
def test_the_operator_works_with_the_chart_rbac_only(chart_operator: ChartOperator) -> None:
    """Limited to one namespace, with peering: the operator takes a job through its first
    reconcile (children, pod, status) with nothing but the chart's permissions."""
    op = chart_operator
    phase = wait_for(
        lambda: op.kubectl.json("get", "dnt", op.job, "-n", op.jobs).get("status", {}).get("phase"),
        timeout=90,
        what=f"the operator to write the status (log: {op.log_path})",
    )
    assert phase in ("Pending", "Running")
    for kind, name in [("service", op.job), ("serviceaccount", f"{op.job}-trainer"),
                       ("role", f"{op.job}-trainer"), ("configmap", f"rings-config-{op.job}"),
                       ("pod", f"{op.job}-worker-0")]:  # fmt: skip
        wait_for(functools.partial(op.exists, kind, name), what=f"{kind}/{name}")
    # Events need only `create` on core events.
    wait_for(
        lambda: op.kubectl.json("get", "events", "-n", op.jobs,
                                "--field-selector", f"involvedObject.name={op.job}")["items"],
        what="an Event about the job",
    )  # fmt: skip
    # The operator keeps its entry alive in the chart's peering object.
    peers = wait_for(
        lambda: op.kubectl.json("get", "kopfpeering", PEERING_NAME, "-n", op.jobs).get("status"),
        what="the operator's peering entry",
    )
    assert [p["priority"] for p in peers.values()] == [7]
    assert forbidden_replies(op.log_path.read_text()) == []


@pytest.mark.integration
def test_the_trainer_gets_its_rolebinding_under_the_chart_rbac(
    chart_operator: ChartOperator,
) -> None:
    op = chart_operator
    wait_for(lambda: op.exists("pod", f"{op.job}-worker-0"), what="the job's pod")
    wait_for(lambda: op.exists("rolebinding", f"{op.job}-trainer"), timeout=15,
             what="the trainer's RoleBinding")  # fmt: skip

"""The job's NetworkPolicy (networkpolicy.py)."""

from __future__ import annotations

from densenet_operator import naming
from densenet_operator.networkpolicy import build_network_policy
from tests.operator.factories import make_job

RANKS = {"podSelector": {"matchLabels": {naming.LABEL_JOB: "dn161"}}}


def test_ranks_reach_each_other_and_egress_is_open_by_default() -> None:
    policy = build_network_policy(make_job())
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = policy["spec"]
    assert spec["podSelector"] == RANKS["podSelector"]
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    assert spec["ingress"] == [{"from": [RANKS]}]  # every port: NCCL/gloo/HCCL pick their own


def test_the_user_s_ingress_is_added() -> None:
    monitoring = {"from": [{"namespaceSelector": {"matchLabels": {"team": "mon"}}}],
                  "ports": [{"port": 9100}]}  # fmt: skip
    spec = build_network_policy(make_job(network={"policy": {"ingress": [monitoring]}}))["spec"]
    assert spec["ingress"] == [{"from": [RANKS]}, monitoring]


def test_limited_egress_keeps_the_ranks_and_dns() -> None:
    storage = {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}
    spec = build_network_policy(make_job(network={"policy": {"egress": [storage]}}))["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"][0] == {"to": [RANKS]}
    assert {p["port"] for p in spec["egress"][1]["ports"]} == {53}
    assert spec["egress"][2] == storage
    empty = build_network_policy(make_job(network={"policy": {"egress": []}}))["spec"]
    assert len(empty["egress"]) == 2  # [] still limits egress: ranks and DNS only

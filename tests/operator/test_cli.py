import json

from densenet_operator import cli
from tests.operator.factories import make_pod


def run(capsys, monkeypatch, pod_list, *args):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps(pod_list)))
    code = cli.main(["rank-table", *args, "-"])
    out, err = capsys.readouterr()
    return code, out, err


def test_rank_table_from_kubectl_pod_list(capsys, monkeypatch):
    pods = {"kind": "PodList", "items": [make_pod(1), make_pod(0)]}
    code, out, _ = run(capsys, monkeypatch, pods)
    assert code == 0
    table = json.loads(out)
    assert table["server_count"] == "2"
    assert table["server_list"][1]["device"][7]["rank_id"] == "15"


def test_legacy_format_flag(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, {"items": [make_pod(0)]}, "--format", "0.1")
    assert code == 0 and json.loads(out)["group_list"][0]["instance_count"] == "1"


def test_names_the_pod_and_reason_and_exits_nonzero(capsys, monkeypatch):
    pods = {"items": [make_pod(0), make_pod(1, pod_ip=None)]}
    code, out, err = run(capsys, monkeypatch, pods)
    assert code == 1 and out == ""
    assert "dn161-worker-1: has no pod IP yet" in err


def test_only_the_newest_gang_counts(capsys, monkeypatch):
    old = make_pod(0, gang=0, pod_ip="10.9.9.9")
    new = make_pod(0, gang=1)
    code, out, _ = run(capsys, monkeypatch, {"items": [old, new]})
    assert code == 0 and json.loads(out)["server_list"][0]["container_ip"] == "10.244.0.7"


def test_unreadable_input(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("not json"))
    assert cli.main(["rank-table", "-"]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_check_rank_table_reports_what_hccl_would_refuse(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, {"items": [make_pod(0), make_pod(1)]})
    assert code == 0
    table = json.loads(out)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps(table)))
    assert cli.main(["check-rank-table", "-"]) == 0
    assert "HCCL accepts this table" in capsys.readouterr().err
    table["server_list"][1]["server_id"] = table["server_list"][0]["server_id"]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps(table)))
    assert cli.main(["check-rank-table", "-"]) == 1
    err = capsys.readouterr().err
    assert "is used by more than one server" in err and "HCCL would refuse this table" in err

"""bench/side_by_side.py's pure parts: the PyTorchJob it submits, the audit-log count, the
paired ratios and the table. No cluster (the benchmark itself runs against one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.side_by_side import (
    ASCEND,
    MEASURES,
    SIDES,
    AuditCounter,
    count_requests,
    pytorchjob,
    ratios,
    spread,
    summarize,
    table_rows,
)


def _pods_per_type(job: dict[str, Any]) -> dict[str, int]:
    return {t: s["replicas"] for t, s in job["spec"]["pytorchReplicaSpecs"].items()}


def test_a_pytorchjob_has_one_master_and_the_other_replicas_as_workers() -> None:
    assert _pods_per_type(pytorchjob("j", 2, 8)) == {"Master": 1, "Worker": 1}
    assert _pods_per_type(pytorchjob("j", 128, 8)) == {"Master": 1, "Worker": 127}
    assert _pods_per_type(pytorchjob("j", 1, 8)) == {"Master": 1}
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        pytorchjob("j", 0, 8)


def test_every_pytorchjob_pod_asks_for_the_chips_a_densenettraining_pod_asks_for() -> None:
    job = pytorchjob("wave-0", 4, 8, image="img:1")
    assert (job["apiVersion"], job["kind"], job["metadata"]) == (
        "kubeflow.org/v1",
        "PyTorchJob",
        {"name": "wave-0"},
    )
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        (container,) = spec["template"]["spec"]["containers"]
        # The controller finds its container by this name (its default container name).
        assert (container["name"], container["image"]) == ("pytorch", "img:1")
        assert container["resources"] == {"requests": {ASCEND: "8"}, "limits": {ASCEND: "8"}}


def _audit(audit_id: str, user: str, verb: str, resource: str, stage: str = "ResponseComplete",
           subresource: str | None = None) -> str:  # fmt: skip
    ref = {"resource": resource, "namespace": "bench"}
    if subresource:
        ref["subresource"] = subresource
    return json.dumps({"auditID": audit_id, "stage": stage, "verb": verb,
                       "user": {"username": user, "groups": ["system:masters"]},
                       "objectRef": ref, "requestURI": f"/api/v1/{resource}"})  # fmt: skip


def test_requests_are_counted_per_user_and_a_watch_counts_once() -> None:
    lines = [
        _audit("1", "ours", "create", "pods"),
        _audit("2", "ours", "create", "pods"),
        _audit("3", "ours", "patch", "densenettrainings", subresource="status"),
        _audit("4", "ours", "watch", "pods", stage="ResponseStarted"),
        _audit("4", "ours", "watch", "pods", stage="ResponseComplete"),
        _audit("5", "theirs", "update", "pytorchjobs", subresource="status"),
        _audit("6", "system:kube-scheduler", "create", "pods", subresource="binding"),
        "",
    ]
    counts = count_requests(lines, ["ours", "theirs"])
    assert counts["ours"] == {
        "create pods": 2,
        "patch densenettrainings/status": 1,
        "watch pods": 1,
    }
    assert counts["theirs"] == {"update pytorchjobs/status": 1}
    assert set(counts) == {"ours", "theirs"}


def test_the_audit_counter_reads_from_its_mark_and_skips_a_half_written_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.log"
    log.write_text(_audit("1", "ours", "create", "pods") + "\n")
    counter = AuditCounter(log, "ours")
    counter.mark()
    whole = _audit("2", "ours", "create", "services") + "\n"
    log.write_text(log.read_text() + whole + _audit("3", "ours", "get", "pods")[:30])
    assert counter.counts() == {"create services": 1}


def test_ratios_pair_the_repetitions_and_give_their_spread() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    # Paired: 1/2, 4/4, 9/3 -> 0.5, 1, 3 (not the ratio of the medians, 4/3).
    assert ratios([1.0, 4.0, 9.0], [2.0, 4.0, 3.0]) == {"median": 1.0, "min": 0.5, "max": 3.0}
    with pytest.raises(ValueError, match="paired"):
        ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="paired"):
        ratios([], [])


def _run(side: str, workload: str, scale: float) -> dict[str, Any]:
    run: dict[str, Any] = {"side": side, "workload": workload}
    run.update({key: scale * (i + 1) for i, (key, _, _) in enumerate(MEASURES)})
    if side == "ours":
        run["all_tables_s"] = scale * 10
    return run


def test_the_summary_compares_each_measure_and_the_table_shows_it() -> None:
    runs = [_run(side, w, scale) for scale in (1.0, 2.0, 3.0) for side in SIDES
            for w in ("wave", "big")]  # fmt: skip
    runs = [{**r, **({key: r[key] * 2 for key, _, _ in MEASURES} if r["side"] == "theirs"
                     else {})} for r in runs]  # fmt: skip
    summary = summarize(runs, "wave")
    for key, _, _ in MEASURES:
        assert summary[key]["ratio"] == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert summary["all_pods_s"]["ours"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert summary["all_tables_s"]["ours"]["median"] == 20.0
    rows = table_rows(summary, "wave")
    assert [r[0] for r in rows[: len(MEASURES)]] == [f"wave: {label}" for _, label, _ in MEASURES]
    assert rows[0][1:] == ("2.00 s [1.00-3.00]", "4.00 s [2.00-6.00]", "0.50 x [0.50-0.50]")
    assert rows[-1] == ("wave: create -> all rank tables (ours only)", "20.00 s [10.00-30.00]",
                        "-", "-")  # fmt: skip

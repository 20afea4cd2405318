"""`densenet-operator rank-table` and `check-rank-table`: the rank table the operator would
publish for a PodList (`kubectl get pods -o json`), and what HCCL would refuse in a table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from densenet_operator import naming
from densenet_operator.ascend import deviceconfig, hccl, ranktable
from densenet_operator.podrecord import PodRecord, newest_gang


def _records(pod_list: Mapping[str, Any]) -> list[PodRecord]:
    """A PodList (or one Pod) as records."""
    items = pod_list.get("items", [pod_list] if pod_list.get("kind") == "Pod" else [])
    return [PodRecord.from_pod(pod) for pod in items]


def rank_table_command(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    try:
        pods = newest_gang(_records(json.loads(text)))
    except ValueError as error:
        print(
            f"error: input is not JSON ({error}); pipe `kubectl get pods -o json`", file=sys.stderr
        )
        return 2
    if not pods:
        print("error: no pods in the input", file=sys.stderr)
        return 2
    devices = args.devices_per_replica or next(
        (n for pod in pods if (n := deviceconfig.device_count(pod.device_config)) is not None),
        None,
    )
    if devices is None:
        print(
            "error: no pod carries the ascend-910-configuration annotation; "
            "pass --devices-per-replica",
            file=sys.stderr,
        )
        return 1
    try:
        layout = ranktable.Layout(args.format, args.job_name, args.super_pod_block)
        table = ranktable.build_rank_table(
            pods, replicas=args.replicas or len(pods), devices_per_replica=devices, fmt=layout
        )
    except ranktable.RankTableIncomplete as incomplete:
        print("error: no valid rank table can be built from these pods:", file=sys.stderr)
        for problem in incomplete.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    json.dump(table, sys.stdout, indent=2)
    print()
    return 0


def check_rank_table_command(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    try:
        table = json.loads(text)
    except ValueError as error:
        print(f"error: not JSON ({error})", file=sys.stderr)
        return 2
    if not isinstance(table, dict) or table.get("status") != ranktable.COMPLETED:
        print("the table is not completed (status is not 'completed')", file=sys.stderr)
        return 1
    broken = hccl.findings(table)
    for finding in broken:
        print(f"  {finding}", file=sys.stderr)
    print("HCCL would refuse this table" if broken else "HCCL accepts this table", file=sys.stderr)
    return 1 if broken else 0


def add_parsers(commands: Any) -> None:
    """The two commands, as subcommands of `densenet-operator` (cli.py)."""
    table = commands.add_parser(
        "rank-table",
        help="build the HCCL rank table from `kubectl get pods -o json` output",
        description="Reads a PodList (kubectl get pods -l training.densenet.dev/job-name=JOB -o json) "
        "and prints the rank table the operator would publish; exits 1 naming each pod that "
        "cannot take part and why.",
    )
    table.add_argument("file", nargs="?", default="-", help="PodList JSON file, or - for stdin")
    table.add_argument("--format", choices=ranktable.FORMATS, default="1.0")
    table.add_argument(
        "--devices-per-replica",
        type=int,
        help="devices each pod should have (default: from the annotations)",
    )
    table.add_argument("--replicas", type=int, help="pods expected (default: the pods given)")
    table.add_argument("--job-name", default=naming.WORKER, help='"0.1": the group name')
    table.add_argument(
        "--super-pod-block", type=int, default=0,
        help='"1.2": NPUs per logical super pod (sp-block); default: one super pod',
    )  # fmt: skip
    table.set_defaults(func=rank_table_command)

    check = commands.add_parser(
        "check-rank-table",
        help="check a rank table (hccl.json) against HCCL's acceptance rules",
        description="Reads a rank table (the rings-config ConfigMap's hccl.json) and prints what "
        "HCCL would refuse in it; exits 1 when there is anything.",
    )
    check.add_argument("file", nargs="?", default="-", help="hccl.json, or - for stdin")
    check.set_defaults(func=check_rank_table_command)

"""`densenet-operator`: run the operator, or debug a rank table from `kubectl get pods -o json`."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence

from densenet_operator.ascend import cli as ascend_cli


def http_endpoints(liveness: str | None, metrics: str | None) -> tuple[str | None, str | None]:
    """(kopf's liveness endpoint, the path the metrics server answers as liveness): when both
    URLs name one host and port, the metrics server answers both paths there."""
    if liveness and metrics:
        live, scraped = urllib.parse.urlsplit(liveness), urllib.parse.urlsplit(metrics)
        if live.netloc == scraped.netloc:
            return None, live.path or "/"
    return liveness, None


def run_command(args: argparse.Namespace) -> int:
    import kopf  # the operator's dependencies load only for `run`

    from densenet_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    liveness, shared_liveness = http_endpoints(args.liveness, args.metrics)
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        namespaces=args.namespace or (),
        clusterwide=not args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(metrics_url=args.metrics, liveness_path=shared_liveness),
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="densenet-operator", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other replicas through this kopf peering object",
    )
    run.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    run.add_argument(
        "--liveness",
        metavar="URL",
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument(
        "--metrics",
        metavar="URL",
        help="serve Prometheus metrics, e.g. http://0.0.0.0:8080/metrics (on the liveness "
        "endpoint's port, one server answers both)",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=run_command)

    ascend_cli.add_parsers(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

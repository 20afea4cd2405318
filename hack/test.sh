#!/usr/bin/env bash
# The project's test command: installs what the tests need (hack/setup.sh, idempotent and cheap
# when everything is there), then runs pytest from the repository root with the given
# arguments. The exit status is pytest's own (5 when no test was collected).
#   bash hack/test.sh                       # everything
#   bash hack/test.sh tests/hack -v         # one folder
#   bash hack/test.sh -m "not integration"  # without the local cluster
# DENSENET_KEEP_CLUSTER=1 leaves the local cluster running for the next run
# (`python hack/localcluster.py down` stops it); DENSENET_KUBECONFIG=PATH uses another cluster.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash hack/setup.sh
exec .venv/bin/pytest "$@"

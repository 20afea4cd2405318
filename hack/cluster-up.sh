#!/usr/bin/env bash
# Starts (or reuses) the local cluster; prints the kubeconfig path on its last line.
#   bash hack/cluster-up.sh [--nodes N]      (DENSENET_CLUSTER=NAME for another cluster)
#   export KUBECONFIG=$(bash hack/cluster-up.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
# The cluster code needs the project's virtualenv (psutil, the packages): make it first.
[[ -x $python ]] || bash "$root/hack/setup.sh" >&2
exec "$python" "$root/hack/localcluster.py" up "$@"

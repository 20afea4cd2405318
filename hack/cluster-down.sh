#!/usr/bin/env bash
# Stops the local cluster and every process it started, and removes its state.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
# The cluster code needs the project's virtualenv (psutil, the packages): make it first.
[[ -x $python ]] || bash "$root/hack/setup.sh" >&2
exec "$python" "$root/hack/localcluster.py" down "$@"

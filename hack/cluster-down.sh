#!/usr/bin/env bash
# Stops the local cluster and every process it started, and removes its state.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
[[ -x $python ]] || python=python3
exec "$python" "$root/hack/localcluster.py" down "$@"

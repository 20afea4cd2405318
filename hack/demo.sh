#!/usr/bin/env bash
# The README's main job: installs what is missing, starts the local cluster, installs the chart's
# CRD and RBAC, runs the operator, trains DenseNet-121 on CPU through a DenseNetTraining and ends
# with `kubectl get densenettrainings`. Arguments go to hack/demo.py (--keep-cluster, --epochs N).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
exec .venv/bin/python hack/demo.py "$@"

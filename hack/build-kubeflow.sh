#!/usr/bin/env bash
# Builds Kubeflow's training-operator (the Go module github.com/kubeflow/training-operator,
# its v1 controllers' main, cmd/training-operator.v1) from the Go module proxy, once per
# machine, for the side-by-side benchmark (bench/side_by_side.py); nothing in the test suite
# needs it. The binary and the module's own PyTorchJob CRD (manifests/base/crds) land in
# $DENSENET_CACHE/bin-kubeflow-training-operator-<version>; a binary already there is not
# rebuilt. Prints that directory on its last line.
set -euo pipefail

KUBEFLOW_VERSION=v1.8.1
module=github.com/kubeflow/training-operator

cache=${DENSENET_CACHE:-$HOME/.cache/densenet-operator}
bin=$cache/bin-kubeflow-training-operator-$KUBEFLOW_VERSION
mkdir -p "$bin"

log() { printf '[build-kubeflow] %s\n' "$*" >&2; }

if [[ ! -x $bin/training-operator ]]; then
  log "building training-operator $KUBEFLOW_VERSION"
  start=$SECONDS
  # `go install pkg@version` builds with the module's own go.mod and go.sum (no replace
  # directives there), every dependency verified against the checksum database.
  GOBIN=$bin/.gobin go install -trimpath -ldflags "-s -w" \
    "$module/cmd/training-operator.v1@$KUBEFLOW_VERSION"
  mv "$bin/.gobin/training-operator.v1" "$bin/training-operator"
  rmdir "$bin/.gobin"
  log "built training-operator in $((SECONDS - start)) s"
fi

if [[ ! -f $bin/kubeflow.org_pytorchjobs.yaml ]]; then
  dir=$(go mod download -json "$module@$KUBEFLOW_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  cp "$dir/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$bin/"
  chmod 644 "$bin/kubeflow.org_pytorchjobs.yaml"
fi

echo "$bin"

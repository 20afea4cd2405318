#!/usr/bin/env bash
# Builds Kueue's manager (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy, once per
# machine, as Kueue's Makefile builds bin/manager (CGO_ENABLED=0, the version in ldflags).
# The binary lands in $DENSENET_CACHE/bin-kueue-<version>/kueue; one already there is not
# rebuilt (and Go's module and build caches make a rebuild cheap). hack/kueue.py runs it beside
# the local control plane and reads Kueue's CRDs and webhook manifests from the same module in
# the module cache (`go mod download -json`). Prints the bin directory on its last line.
set -euo pipefail

KUEUE_VERSION=v0.17.0 # keep in step with hack/kueue.py's KUEUE_VERSION

cache=${DENSENET_CACHE:-$HOME/.cache/densenet-operator}
bin=$cache/bin-kueue-$KUEUE_VERSION
mkdir -p "$bin"

log() { printf '[build-kueue] %s\n' "$*" >&2; }

if [[ ! -x $bin/kueue ]]; then
  log "building kueue $KUEUE_VERSION (sigs.k8s.io/kueue/cmd/kueue)"
  start=$SECONDS
  gobin=$(mktemp -d "$bin/.gobin.XXXXXX")
  trap 'rm -rf "$gobin"' EXIT
  # Outside any module, so that `go install pkg@version` uses Kueue's own go.mod.
  (cd "$gobin" && CGO_ENABLED=0 GOBIN=$gobin GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
  mv "$gobin/kueue" "$bin/kueue"
  log "built kueue in $((SECONDS - start)) s"
fi

echo "$bin"

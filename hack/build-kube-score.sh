#!/usr/bin/env bash
# Builds kube-score (a Kubernetes manifest linter) from the Go module proxy, once per machine,
# into $DENSENET_CACHE/kube-score-<version>/. Go's module and build caches make a rebuild cheap.
# Prints the binary's path on its last line. tests/charts/test_kube_score.py scores the chart
# and the operator's trainer pods with it; hack/kube-score-ignores.yaml says what is ignored and why.
set -euo pipefail

KUBE_SCORE_VERSION=v1.20.0

cache=${DENSENET_CACHE:-$HOME/.cache/densenet-operator}
bin=$cache/kube-score-$KUBE_SCORE_VERSION
if [[ ! -x $bin/kube-score ]]; then
  printf '[build-kube-score] building kube-score %s\n' "$KUBE_SCORE_VERSION" >&2
  mkdir -p "$bin"
  start=$SECONDS
  GOBIN=$bin go install -trimpath -ldflags "-s -w" \
    "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
  printf '[build-kube-score] built in %d s\n' "$((SECONDS - start))" >&2
fi
echo "$bin/kube-score"

#!/usr/bin/env bash
# Builds the local control plane from Go modules, once per machine:
# kube-apiserver, kube-controller-manager, kube-scheduler, and for the real node kubelet and
# kube-proxy (k8s.io/kubernetes), etcd, KWOK (kwok, kwokctl) and CoreDNS. Binaries land in $DENSENET_CACHE/bin-<versions>; a binary that is
# already there is not rebuilt, and Go's module and build caches make a rebuild cheap.
# Prints the bin directory on its last line.
set -euo pipefail

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
COREDNS_VERSION=v1.13.1 # keep in step with hack/coredns/go.mod

hack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${DENSENET_CACHE:-$HOME/.cache/densenet-operator}
bin=$cache/bin-kube-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION
mkdir -p "$bin"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

build_date=2026-01-01T00:00:00Z
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

build() { # name, module dir, package, ldflags
  local name=$1 dir=$2 pkg=$3 ldflags=$4
  if [[ -x $bin/$name ]]; then return; fi
  log "building $name ($pkg)"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  log "built $name in $((SECONDS - start)) s"
}

build kube-apiserver "$hack_dir/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kube-controller-manager "$hack_dir/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
build kube-scheduler "$hack_dir/kube" k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags"
build kubelet "$hack_dir/kube" k8s.io/kubernetes/cmd/kubelet "$kube_ldflags"
build kube-proxy "$hack_dir/kube" k8s.io/kubernetes/cmd/kube-proxy "$kube_ldflags"
build etcd "$hack_dir/etcd" . "-s -w"

for tool in kwok kwokctl; do
  if [[ -x $bin/$tool ]]; then continue; fi
  log "building $tool"
  start=$SECONDS
  GOBIN=$bin go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/$tool@$KWOK_VERSION"
  log "built $tool in $((SECONDS - start)) s"
done

# CoreDNS (hack/coredns: only the plugins the real nodes' Corefile uses) serves the cluster's
# Service and pod DNS names to the real nodes' pods.
build "coredns-$COREDNS_VERSION" "$hack_dir/coredns" . "-s -w"

echo "$bin"

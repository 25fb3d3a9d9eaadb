#!/usr/bin/env bash
# Build the local cluster's control-plane binaries from the Go module proxy.
#
# Why a script of our own: no kind, k3s or Docker runs here, and release
# tarballs cannot be downloaded. k8s.io/kubernetes cannot be `go install`ed
# directly (its staging modules are replaced by local folders), so the pinned
# modules in hack/k8s-tools and hack/helm-tools replace every staging module
# with its published v0.X.Y twin. Results are cached per version; the Go build
# cache makes a rebuild after a cache wipe cheap.
#
# Usage: hack/build-k8s.sh [--force]        build what is missing
#        hack/build-k8s.sh --print-dir      print the cache folder and exit
set -euo pipefail

K8S_VERSION=1.35.4
ETCD_VERSION=3.6.5
HELM_VERSION=3.19.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${RINGKEEPER_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringkeeper/k8s}"
dest="$cache_root/v$K8S_VERSION"

if [[ "${1:-}" == "--print-dir" ]]; then echo "$dest"; exit 0; fi
force=0; [[ "${1:-}" == "--force" ]] && force=1

if ! command -v go >/dev/null 2>&1; then
  echo "build-k8s: no Go toolchain on PATH. Install Go >= 1.25 (Debian: apt-get install golang-go," >&2
  echo "or put /usr/local/go/bin on PATH) and run this script again." >&2
  exit 2
fi

mkdir -p "$dest"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
export CGO_ENABLED=0
start=$(date +%s)
echo "build-k8s: Kubernetes v$K8S_VERSION, etcd v$ETCD_VERSION, helm v$HELM_VERSION -> $dest ($(go version | awk '{print $3}'))"

build() { # name module-dir package
  local name=$1 dir=$2 pkg=$3 t0
  if [[ $force -eq 0 && -x "$dest/$name" ]]; then
    echo "build-k8s: $name cached"
    return
  fi
  t0=$(date +%s)
  echo "build-k8s: building $name ($pkg) ..."
  if ! (cd "$here/$dir" && go build -ldflags="-s -w" -o "$dest/$name.tmp" "$pkg"); then
    echo "build-k8s: building $name failed. Check that the Go module proxy is reachable" >&2
    echo "  (go env GOPROXY) and that 'go version' is >= 1.25; then rerun this script." >&2
    rm -f "$dest/$name.tmp"; exit 1
  fi
  mv "$dest/$name.tmp" "$dest/$name"
  echo "build-k8s: $name built in $(( $(date +%s) - t0 ))s"
}

build etcd k8s-tools go.etcd.io/etcd/server/v3
build kube-apiserver k8s-tools k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s-tools k8s.io/kubernetes/cmd/kube-controller-manager
build kubectl k8s-tools k8s.io/kubernetes/cmd/kubectl
build helm helm-tools helm.sh/helm/v3/cmd/helm

printf '%s\n' "kubernetes=$K8S_VERSION" "etcd=$ETCD_VERSION" "helm=$HELM_VERSION" > "$dest/VERSIONS"
echo "build-k8s: done in $(( $(date +%s) - start ))s; binaries in $dest"

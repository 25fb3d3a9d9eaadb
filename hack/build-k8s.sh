#!/usr/bin/env bash
# Build the local cluster's control-plane binaries (and hack/celcheck) from the Go module proxy.
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

# The dev cluster's pods live on 127.x addresses, which stock Kubernetes refuses in
# EndpointSlices. kube-apiserver is therefore built with one change, made at build
# time on a hard-linked copy of the module cache's k8s.io/kubernetes (nothing of
# Kubernetes is kept in this repository): ValidateEndpointIP no longer rejects loopback.
patched_apiserver_module() {
  local orig work file
  # `go list -m` prints an empty Dir until the module is in the module cache: download first.
  (cd "$here/k8s-tools" && go mod download k8s.io/kubernetes)
  orig="$(cd "$here/k8s-tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  if [[ -z "$orig" || ! -d "$orig/pkg/apis/core/validation" ]]; then
    echo "build-k8s: k8s.io/kubernetes is not in the module cache after 'go mod download' (got '$orig')" >&2
    exit 1
  fi
  work="$dest/src"
  rm -rf "$work"; mkdir -p "$work/k8s-tools"
  # Hard links when the caches share a file system, a copy otherwise.
  cp -al "$orig" "$work/kubernetes" 2>/dev/null || { rm -rf "$work/kubernetes"; cp -a "$orig" "$work/kubernetes"; }
  chmod -R u+w "$work/kubernetes/pkg/apis/core/validation"
  file="$work/kubernetes/pkg/apis/core/validation/validation.go"
  rm -f "$file"
  sed 's/^\tif ip.IsLoopback() {$/\tif false \&\& ip.IsLoopback() { \/\/ ringkeeper dev cluster: pods live on 127.x/' \
    "$orig/pkg/apis/core/validation/validation.go" > "$file"
  if [[ $(grep -c 'ringkeeper dev cluster: pods live on 127.x' "$file") -ne 1 ]]; then
    echo "build-k8s: the loopback patch no longer applies to $orig; update hack/build-k8s.sh" >&2
    exit 1
  fi
  cp "$here/k8s-tools/go.mod" "$here/k8s-tools/go.sum" "$work/k8s-tools/"
  printf '\nreplace k8s.io/kubernetes => ../kubernetes\n' >> "$work/k8s-tools/go.mod"
}

recipe_of() { echo "$*|$(go version)"; }

build() { # name module-dir package tag [go build flags...]; tag names source changes
  local name=$1 dir=$2 pkg=$3 t0 recipe
  recipe="$(recipe_of "$@")"
  shift 4
  if [[ $force -eq 0 && -x "$dest/$name" && "$(cat "$dest/.$name.recipe" 2>/dev/null)" == "$recipe" ]]; then
    echo "build-k8s: $name cached"
    return
  fi
  t0=$(date +%s)
  echo "build-k8s: building $name ($pkg) ..."
  local moddir="$here/$dir"
  [[ "$dir" == /* ]] && moddir="$dir"
  if ! (cd "$moddir" && go build "$@" -o "$dest/$name.tmp" "$pkg"); then
    echo "build-k8s: building $name failed. Check that the Go module proxy is reachable" >&2
    echo "  (go env GOPROXY) and that 'go version' is >= 1.25; then rerun this script." >&2
    rm -f "$dest/$name.tmp"; exit 1
  fi
  mv "$dest/$name.tmp" "$dest/$name"
  echo "$recipe" > "$dest/.$name.recipe"
  echo "build-k8s: $name built in $(( $(date +%s) - t0 ))s"
}

ld="-s -w"
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
cv=k8s.io/component-base/version
kv="-X $cv.gitVersion=v$K8S_VERSION -X $cv.gitMajor=1 -X $cv.gitMinor=$minor"
hv="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
build etcd k8s-tools go.etcd.io/etcd/server/v3 stock -ldflags="$ld"
api_args=(kube-apiserver "$dest/src/k8s-tools" k8s.io/kubernetes/cmd/kube-apiserver loopback-endpoints -ldflags="$ld $kv")
if [[ $force -eq 1 || ! -x "$dest/kube-apiserver" || "$(cat "$dest/.kube-apiserver.recipe" 2>/dev/null)" != "$(recipe_of "${api_args[@]}")" ]]; then
  patched_apiserver_module
fi
build "${api_args[@]}"
build kube-controller-manager k8s-tools k8s.io/kubernetes/cmd/kube-controller-manager stock -ldflags="$ld $kv"
build kubectl k8s-tools k8s.io/kubernetes/cmd/kubectl stock -ldflags="$ld $kv"
build helm helm-tools helm.sh/helm/v3/cmd/helm stock -ldflags="$ld $hv"
# The API server's CRD and CEL validation as a command, for the tests that compare
# admission with `ringkeeper validate` (hack/celcheck; rebuilt when its source changes).
celcheck_src="$(cat "$here"/celcheck/*.go "$here"/celcheck/go.mod "$here"/celcheck/go.sum | sha256sum | cut -c1-16)"
build celcheck celcheck . "src-$celcheck_src" -ldflags="$ld"

printf '%s\n' "kubernetes=$K8S_VERSION" "etcd=$ETCD_VERSION" "helm=$HELM_VERSION" > "$dest/VERSIONS"
echo "build-k8s: done in $(( $(date +%s) - start ))s; binaries in $dest"

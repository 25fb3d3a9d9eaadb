#!/usr/bin/env bash
# Install (or upgrade) the CRDs and the operator on the local cluster with Helm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(hack/build-k8s.sh --print-dir)"
export KUBECONFIG="$(python3 -m ringkeeper dev-cluster kubeconfig)"
"$bin/kubectl" apply --server-side -f crds/ >/dev/null
"$bin/helm" upgrade --install ringkeeper charts/ringkeeper -n ringkeeper-system \
  --create-namespace --wait --timeout 120s >/dev/null
echo "operator installed in ringkeeper-system"

#!/usr/bin/env bash
# Install (or upgrade) the CRDs and the operator on the local cluster with Helm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(hack/build-k8s.sh --print-dir)"
export KUBECONFIG="$(python3 -m ringkeeper_devcluster kubeconfig)"
"$bin/kubectl" apply --server-side -f crds/ >/dev/null
"$bin/helm" upgrade --install ringkeeper charts/ringkeeper -n ringkeeper-system \
  --create-namespace --wait --timeout 120s >/dev/null

# On the local cluster the operator runs this checkout's code: restart it so a changed
# checkout takes effect even when the chart itself did not change.
"$bin/kubectl" -n ringkeeper-system rollout restart deployment/ringkeeper-operator >/dev/null
"$bin/kubectl" -n ringkeeper-system rollout status deployment/ringkeeper-operator \
  --timeout=120s >/dev/null
echo "operator installed in ringkeeper-system"

#!/usr/bin/env bash
# The main job on the built-in local cluster: start it, install Ringkeeper with Helm,
# deploy the hospital group, and show what the API server and the operator make of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"
step() { printf '\n\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)

step "1/7 preparing (pip, apt, control-plane binaries; quick when done before)"
hack/setup.sh | sed 's/^/    /'
bin="$(hack/build-k8s.sh --print-dir)"
kubectl="$bin/kubectl"

step "2/7 starting the local Kubernetes (etcd, kube-apiserver, kube-controller-manager, process runtime)"
python3 -m ringkeeper dev-cluster up | sed 's/^/    /'
export KUBECONFIG="$(python3 -m ringkeeper dev-cluster kubeconfig)"
"$kubectl" wait --for=condition=Ready node --all --timeout=60s | sed 's/^/    /'

step "3/7 installing the CRDs and the operator with Helm"
hack/install-operator.sh | sed 's/^/    /'
"$kubectl" -n ringkeeper-system get pods -o wide | sed 's/^/    /'

step "4/7 deploying the single-campus example: three PostgreSQL 17 instances, one synchronous standby"
"$kubectl" create namespace demo --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -n demo -f examples/single-campus/ | sed 's/^/    /'

step "5/7 writing through zhaohui-rw, then killing the primary"
python3 -m ringkeeper.devcluster.demo --namespace demo --campus zhaohui
"$kubectl" -n demo get campus,pods -o wide | sed 's/^/    /'

step "6/7 a mistake is refused at admission with a sentence that says what to do"
"$kubectl" apply -n demo -f examples/invalid/sync-number-too-high.yaml 2>&1 | sed 's/^/    /' || true
"$kubectl" apply -n demo -f examples/invalid/self-fence-too-slow.yaml 2>&1 | sed 's/^/    /' || true

step "7/7 status as the operator sees it"
python3 -m ringkeeper status -n demo | sed 's/^/    /'
printf '\ndemo done in %ss.\n' $(( $(date +%s) - t0 ))
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG ; stop it with: make demo-down"

#!/usr/bin/env bash
# The main job on the built-in local cluster: start it, install Ringkeeper with Helm,
# deploy the hospital group, and show what the API server and the operator make of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"
step() { printf '\n\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)

step "1/6 preparing (pip, apt, control-plane binaries; quick when done before)"
hack/setup.sh | sed 's/^/    /'
bin="$(hack/build-k8s.sh --print-dir)"
kubectl="$bin/kubectl"; helm="$bin/helm"

step "2/6 starting the local Kubernetes (etcd, kube-apiserver, kube-controller-manager, process runtime)"
python3 -m ringkeeper dev-cluster up | sed 's/^/    /'
export KUBECONFIG="$(python3 -m ringkeeper dev-cluster kubeconfig)"
"$kubectl" wait --for=condition=Ready node --all --timeout=60s | sed 's/^/    /'

step "3/6 installing the CRDs and the operator with Helm"
"$kubectl" apply --server-side -f crds/ | sed 's/^/    /'
"$helm" upgrade --install ringkeeper charts/ringkeeper -n ringkeeper-system --create-namespace \
  --wait --timeout 120s | sed -n '1,6p' | sed 's/^/    /'
"$kubectl" -n ringkeeper-system get pods -o wide | sed 's/^/    /'

step "4/6 deploying the hospital group: four campuses, one ring, one satellite, one drill"
"$kubectl" create namespace lis --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -f examples/hospital-group/ | sed 's/^/    /'
for kind in campus replicationring satellite drill; do
  "$kubectl" -n lis wait "$kind" --all --for=condition=Accepted --timeout=60s >/dev/null
done
"$kubectl" -n lis get campuses,replicationrings,satellites,drills | sed 's/^/    /'

step "5/6 a mistake is refused at admission with a sentence that says what to do"
"$kubectl" apply -n lis -f examples/invalid/sync-number-too-high.yaml 2>&1 | sed 's/^/    /' || true
"$kubectl" apply -n lis -f examples/invalid/self-fence-too-slow.yaml 2>&1 | sed 's/^/    /' || true

step "6/6 status as the operator sees it"
python3 -m ringkeeper status -n lis | sed 's/^/    /'

accepted=$("$kubectl" -n lis get campuses,replicationrings,satellites,drills -o json \
  | python3 -c 'import json,sys; items=json.load(sys.stdin)["items"]; print(sum(any(c["type"]=="Accepted" and c["status"]=="True" for c in (i.get("status") or {}).get("conditions",[])) for i in items), len(items))')
printf '\nsummary: %s of %s objects accepted by the operator; 2 invalid specs refused; %ss in all.\n' \
  ${accepted% *} ${accepted#* } $(( $(date +%s) - t0 ))
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG ; stop it with: make demo-down"

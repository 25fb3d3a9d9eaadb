#!/usr/bin/env bash
# The main job on the built-in local cluster: start it, install Ringkeeper with Helm,
# deploy the hospital group, and show what the API server and the operator make of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"
step() { printf '\n\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)

step "1/11 preparing (pip, apt, control-plane binaries; quick when done before)"
hack/setup.sh | sed 's/^/    /'
bin="$(hack/build-k8s.sh --print-dir)"
kubectl="$bin/kubectl"

step "2/11 starting the local Kubernetes (etcd, kube-apiserver, kube-controller-manager, process runtime)"
python3 -m ringkeeper_devcluster up | sed 's/^/    /'
export KUBECONFIG="$(python3 -m ringkeeper_devcluster kubeconfig)"
"$kubectl" wait --for=condition=Ready node --all --timeout=60s | sed 's/^/    /'

step "3/11 installing the CRDs and the operator with Helm"
hack/install-operator.sh | sed 's/^/    /'
"$kubectl" -n ringkeeper-system get pods -o wide | sed 's/^/    /'

step "4/11 deploying the single-campus example: three PostgreSQL 17 instances, one synchronous standby"
"$kubectl" create namespace demo --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -n demo -f examples/single-campus/ | sed 's/^/    /'

step "5/11 a primaryKill drill: the LIS workload through zhaohui-rw, the primary SIGKILLed, RTO and lost commits measured by the operator"
# exit 1 (and the demo with it) if the drill lost a commit or missed its RTO
python3 -m ringkeeper drill run kill-now -n demo --campus zhaohui --writers 2 --rate 20 \
    --duration 30 --max-rto 60 --wait --timeout 600 | sed 's/^/    /'
python3 -m ringkeeper drill status kill-now -n demo | sed 's/^/    /'
python3 -m ringkeeper drill report kill-now -n demo --format svg -o /tmp/ringkeeper-demo-kill.svg | sed 's/^/    /'
"$kubectl" -n demo get campus,drill,pods -o wide | sed 's/^/    /'

step "6/11 a mistake is refused at admission with a sentence that says what to do"
"$kubectl" apply -n demo -f examples/invalid/sync-number-too-high.yaml 2>&1 | sed 's/^/    /' || true
"$kubectl" apply -n demo -f examples/invalid/self-fence-too-slow.yaml 2>&1 | sed 's/^/    /' || true

step "7/11 status as the operator sees it"
python3 -m ringkeeper status -n demo | sed 's/^/    /'
"$kubectl" -n demo delete campus zhaohui --wait=false >/dev/null  # two cores: make room for the ring

step "8/11 the hospital group's ring: four campuses on PostgreSQL 17, 18, 15 and 17 (富阳's KingbaseES stand-in)"
"$kubectl" create namespace lis --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -f examples/hospital-group-local/ | sed 's/^/    /'

step "9/11 writing at every campus at once; the per-link lag table while it runs; convergence"
python3 -m ringkeeper_devcluster.ringdemo --namespace lis --ring lis-ring
"$kubectl" -n lis get campus,replicationring | sed 's/^/    /'

step "10/11 a networkPartition drill on the ring: two campuses cut apart by a NetworkPolicy under load, then healed"
python3 -m ringkeeper drill run split -n lis --ring lis-ring --scenario networkPartition \
    --writers 1 --rate 10 --duration 40 --max-rto 60 --wait --timeout 600 | sed 's/^/    /'
python3 -m ringkeeper drill report split -n lis --format svg -o /tmp/ringkeeper-demo-split.svg | sed 's/^/    /'

step "11/11 verifying every table across all four campuses"
python3 -m ringkeeper verify lis-ring -n lis --full --report /tmp/ringkeeper-demo-verify.json \
    2>&1 | sed 's/^/    /'
printf '\ndemo done in %ss.\n' $(( $(date +%s) - t0 ))
echo "Drill reports: kubectl ringkeeper drill report kill-now -n demo (and split -n lis); timelines: /tmp/ringkeeper-demo-kill.svg /tmp/ringkeeper-demo-split.svg"
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG ; stop it with: make demo-down"

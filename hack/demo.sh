#!/usr/bin/env bash
# The main job on the built-in local cluster: start it, install Ringkeeper with Helm,
# deploy the hospital group, and show what the API server and the operator make of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"
# This checkout's code for the demo's own commands, whichever clone pip last installed.
export PYTHONPATH="$PWD/operator:$PWD/tools/devcluster${PYTHONPATH:+:$PYTHONPATH}"
step() { printf '\n\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)
# Size knobs (README, "make demo"): the tests run the demo smaller with these.
kill_seconds="${RINGKEEPER_DEMO_KILL_SECONDS:-30}"    # primaryKill drill's load
split_seconds="${RINGKEEPER_DEMO_SPLIT_SECONDS:-40}"  # networkPartition drill's load
crash_seconds="${RINGKEEPER_DEMO_CRASH_SECONDS:-20}"  # syncCrash drill's load
loss_seconds="${RINGKEEPER_DEMO_LOSS_SECONDS:-30}"    # campusLoss drill's load (held half)
ring_seconds="${RINGKEEPER_DEMO_RING_SECONDS:-20}"    # writing at every campus
satellite_seconds="${RINGKEEPER_DEMO_SATELLITE_SECONDS:-20}"  # writing once it streams
satsplit_seconds="${RINGKEEPER_DEMO_SATSPLIT_SECONDS:-30}"    # satellite partition drill's load
out="${RINGKEEPER_DEMO_OUT:-/tmp}"                    # reports and timeline pictures
for n in "$kill_seconds" "$split_seconds" "$crash_seconds" "$loss_seconds" "$ring_seconds" "$satellite_seconds" "$satsplit_seconds"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 10 ]] || { echo "demo: a RINGKEEPER_DEMO_*_SECONDS knob must be a whole number >= 10, got '$n'" >&2; exit 2; }
done
mkdir -p "$out"

step "1/16 preparing (pip, apt, control-plane binaries; quick when done before)"
if [[ "${RINGKEEPER_DEMO_SETUP:-1}" == 1 ]]; then
  hack/setup.sh | sed 's/^/    /'
else
  echo "    skipped (RINGKEEPER_DEMO_SETUP=${RINGKEEPER_DEMO_SETUP})"
fi
bin="$(hack/build-k8s.sh --print-dir)"
kubectl="$bin/kubectl"

step "2/16 starting the local Kubernetes (etcd, kube-apiserver, kube-controller-manager, process runtime)"
python3 -m ringkeeper_devcluster up | sed 's/^/    /'
export KUBECONFIG="$(python3 -m ringkeeper_devcluster kubeconfig)"
"$kubectl" wait --for=condition=Ready node --all --timeout=60s | sed 's/^/    /'

step "3/16 installing the CRDs and the operator with Helm"
hack/install-operator.sh | sed 's/^/    /'
"$kubectl" -n ringkeeper-system get pods -o wide | sed 's/^/    /'

step "4/16 deploying the single-campus example: three PostgreSQL 17 instances, one synchronous standby"
"$kubectl" create namespace demo --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -n demo -f examples/single-campus/ | sed 's/^/    /'

step "5/16 a primaryKill drill: the LIS workload through zhaohui-rw, the primary SIGKILLed, RTO and lost commits measured by the operator"
# a drill that lost a commit or missed its RTO exits 1: the demo goes on, and the summary
# (step 16) says so and exits 1
python3 -m ringkeeper drill run kill-now -n demo --campus zhaohui --writers 2 --rate 20 \
    --duration "$kill_seconds" --max-rto 60 --wait --timeout 600 | sed 's/^/    /' || true
python3 -m ringkeeper drill status kill-now -n demo | sed 's/^/    /'
python3 -m ringkeeper drill report kill-now -n demo --format svg -o "$out/ringkeeper-demo-kill.svg" | sed 's/^/    /'
"$kubectl" -n demo get campus,drill,pods -o wide | sed 's/^/    /'

step "6/16 a mistake is refused at admission with a sentence that says what to do"
"$kubectl" apply -n demo -f examples/invalid/sync-number-too-high.yaml 2>&1 | sed 's/^/    /' || true
"$kubectl" apply -n demo -f examples/invalid/self-fence-too-slow.yaml 2>&1 | sed 's/^/    /' || true

step "7/16 status as the operator sees it"
python3 -m ringkeeper status -n demo | sed 's/^/    /'
"$kubectl" -n demo delete campus zhaohui --wait=false >/dev/null  # two cores: make room for the ring

step "8/16 the hospital group's ring: four campuses on PostgreSQL 17, 18, 15 and 17 (富阳's KingbaseES stand-in)"
"$kubectl" create namespace lis --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" apply -f examples/hospital-group-local/campuses.yaml \
    -f examples/hospital-group-local/ring.yaml | sed 's/^/    /'

step "9/16 writing at every campus at once; the per-link lag table while it runs; convergence"
python3 -m ringkeeper_devcluster.ringdemo --namespace lis --ring lis-ring --seconds "$ring_seconds"
"$kubectl" -n lis get campus,replicationring | sed 's/^/    /'

# The three ring drills share one target, so they cannot overlap (TargetBusy): one after
# the other, in the order that wastes least. syncCrash first: the ring has just converged
# (step 9), so its sidecar already streams (else it waits up to 30 s for that). campusLoss
# next: it ends only once every link streams again. networkPartition last: it does not
# wait for the ring, and the verification after it does. Each strikes other campuses.
ring_drill() {  # NAME SCENARIO SECONDS [CAMPUS]: run it on the ring under load, draw its timeline
  python3 -m ringkeeper drill run "$1" -n lis --ring lis-ring --scenario "$2" \
      ${4:+--strike "$4"} --writers 1 --rate 10 --duration "$3" --max-rto 60 --wait \
      --timeout 600 | sed 's/^/    /' || true
  python3 -m ringkeeper drill report "$1" -n lis --format svg \
      -o "$out/ringkeeper-demo-$1.svg" | sed 's/^/    /'
}
step "10/16 a syncCrash drill on the ring: every session of 越城's sync sidecar ended mid-stream under load"
ring_drill crash syncCrash "$crash_seconds" yuecheng

step "11/16 a campusLoss drill on the ring: every instance of 富阳 fenced under load, then back"
ring_drill loss campusLoss "$loss_seconds" fuyang

step "12/16 a networkPartition drill on the ring: 朝晖 and 望江山 cut apart by a NetworkPolicy under load, then healed"
ring_drill split networkPartition "$split_seconds"

step "13/16 the satellite 新登 (xindeng): one PostgreSQL 17 instance syncing lis.samples (富阳's and its own rows) with its parent 富阳, written at both sides"
# applied now, after the ring converged and its drills ran: a satellite joins a ring that
# streams (and the drills strike its parent; they are not about it). Its table is created
# there by satdemo, which writes with a ledger and checks it; the summary judges its JSON.
rm -f "$out/ringkeeper-demo-satellite.json"  # the summary must not read an older run's
"$kubectl" apply -f examples/hospital-group-local/satellite.yaml | sed 's/^/    /'
python3 -m ringkeeper_devcluster.satdemo --namespace lis --satellite xindeng --ring lis-ring \
    --seconds "$satellite_seconds" --out "$out/ringkeeper-demo-satellite.json" || true
"$kubectl" -n lis get satellite | sed 's/^/    /'

step "14/16 a networkPartition drill on the satellite: 新登 cut from 富阳 by a NetworkPolicy under load at both sides, then healed"
# its own table (ringkeeper_drill.satellite_rows, kept by the satellite and carried by the
# ring, created by satdemo in step 13); RTO is the satellite's longest write gap, then the
# time its status takes to stream both ways with no backlog again
python3 -m ringkeeper drill run satsplit -n lis --satellite xindeng --scenario networkPartition \
    --writers 1 --rate 10 --duration "$satsplit_seconds" --max-rto 60 --wait --timeout 600 \
    | sed 's/^/    /' || true
python3 -m ringkeeper drill report satsplit -n lis --format svg \
    -o "$out/ringkeeper-demo-satsplit.svg" | sed 's/^/    /'

step "15/16 verifying every table across all four campuses, and the satellite against its parent"
rm -f "$out/ringkeeper-demo-verify.json"  # the summary must not read an older run's
python3 -m ringkeeper verify lis-ring -n lis --full --report "$out/ringkeeper-demo-verify.json" \
    2>&1 | sed 's/^/    /' || true  # the summary judges its report

step "16/16 summary, read back from the cluster (exit 1 if anything was lost or did not converge)"
rc=0
python3 -m ringkeeper_devcluster.demosummary --drill demo/kill-now --drill lis/crash \
    --drill lis/loss --drill lis/split --drill lis/satsplit --ring lis/lis-ring --satellite lis/xindeng \
    --satellite-ledger "$out/ringkeeper-demo-satellite.json" \
    --verify "$out/ringkeeper-demo-verify.json" --picture "$out/ringkeeper-demo-kill.svg" \
    --picture "$out/ringkeeper-demo-crash.svg" --picture "$out/ringkeeper-demo-loss.svg" \
    --picture "$out/ringkeeper-demo-split.svg" --picture "$out/ringkeeper-demo-satsplit.svg" \
    || rc=$?
printf '\ndemo done in %ss.\n' $(( $(date +%s) - t0 ))
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG ; stop it with: make demo-down"
exit "$rc"

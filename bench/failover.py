"""`make bench-failover`: RTO of a 3-instance campus over repeated failures.

--scenario kill (the default): repeated primary kills on the local cluster, below.
--scenario replicas-cut / frozen-primary / asymmetric / local-kill / operator-kill: local
servers, bench/failover_local.py; their JSON line has outage_p50_s, outage_max_s,
lost_commits, split_brain_rounds and rejoins_by_rewind / rejoins_by_basebackup, and the
run fails unless the max outage is within detection delay + 5 s with nothing lost.

RTO is measured from the SIGKILL of the primary's container to the first write
that succeeds through the campus's -rw endpoint, under a steady write load.
Every acknowledged commit is checked on the new primary after each round.
The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from ringkeeper.adapters.kube import api_client
from ringkeeper_devcluster import control_plane as cp
from ringkeeper_devcluster.workload import Writer, kill_primary_round, wait_ready

REPO = Path(__file__).resolve().parents[1]


def kubectl(*args: str, stdin: str | None = None) -> None:
    subprocess.run([str(cp.binaries_dir() / "kubectl"), *args], check=True, input=stdin,
                   text=True, capture_output=True)


async def run(args: argparse.Namespace) -> dict[str, object]:
    ns, name = "bench-failover", "bench"
    campus = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
              "metadata": {"name": name, "namespace": ns},
              "spec": {"engine": "postgresql", "version": args.version, "instances": 3,
                       "synchronous": {"method": "any", "number": 1,
                                       "dataDurability": "required"},
                       "failover": {"detectionDelaySeconds": args.detection_delay,
                                    "selfFenceAfterSeconds": max(1, args.detection_delay - 1),
                                    "healthCheckPeriodSeconds": 1}}}
    kubectl("create", "namespace", ns)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(campus))
    rounds = []
    async with await api_client() as api:
        await wait_ready(api, ns, name, timeout=240, settle=True)
        writer = Writer(api, ns, name, rate=args.rate)
        task = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(2)
            for i in range(args.runs):
                r = await kill_primary_round(api, cp.default_state_dir(), ns, name, writer)
                rounds.append(r)
                print(f"run {i + 1}/{args.runs}: {r.old} -> {r.new}, RTO {r.rto_s:.2f}s, "
                      f"lost {r.lost} of {r.acked} acknowledged", flush=True)
                # The old primary rejoined and synchronous replication is back.
                await wait_ready(api, ns, name, timeout=180, settle=True)
                await asyncio.sleep(1)
        finally:
            writer.stopping = True
            await task
    kubectl("delete", "namespace", ns, "--wait=false")
    rtos = sorted(r.rto_s for r in rounds)
    return {"bench": "failover", "runs": len(rounds), "engine": f"postgresql {args.version}",
            "detection_delay_s": args.detection_delay,
            "rto_p50_s": round(statistics.median(rtos), 2), "rto_max_s": round(max(rtos), 2),
            "lost_commits": sum(r.lost for r in rounds),
            "acknowledged_commits": rounds[-1].acked if rounds else 0}


SCENARIOS = ("kill", "replicas-cut", "frozen-primary", "asymmetric", "local-kill",
             "operator-kill")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenario", choices=SCENARIOS, default="kill",
                   help="kill: SIGKILL the primary's container on the local cluster; the "
                   "others: local servers (bench/failover_local.py)")
    p.add_argument("--runs", type=int, default=None,
                   help="rounds (default 10 for kill, 3 for the local scenarios)")
    p.add_argument("--version", default="17")
    p.add_argument("--detection-delay", type=int, default=2)
    p.add_argument("--rate", type=float, default=200.0)
    args = p.parse_args()
    if args.scenario == "kill":
        args.runs = args.runs or 10
        result = asyncio.run(run(args))
        ok = result["lost_commits"] == 0
    else:
        from failover_local import run_local

        # local-kill is the local servers' kill (its rejoin counted); kill above is the
        # local cluster's
        result = asyncio.run(run_local(args.scenario.removeprefix("local-"), args.runs or 3,
                                       args.version,
                                       args.detection_delay))
        ok = (result["lost_commits"] == 0 and result["split_brain_rounds"] == 0
              and float(result["outage_max_s"]) <= float(result["target_max_s"]))
    print(json.dumps(result), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

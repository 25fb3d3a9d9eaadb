"""Failover scenarios on local servers: real PostgreSQL and real agents, no Kubernetes.

`bench/failover.py --scenario replicas-cut|frozen-primary` runs these. A 3-instance
campus (ANY 1, dataDurability required) of LocalCampus processes, the operator's
decisions played cycle by cycle by tests/integration/hacuts.OperatorLoop (the same core
functions ha_cycle calls) with the real failover runner, under a steady write load:

- replicas-cut: every instance's pod address is a TCP proxy in front of its server, so
  replication always runs through proxies; a round black-holes the current primary's
  proxy (the primary still answers the operator and its clients; its commits wait),
  then heals it once a new primary serves.
- frozen-primary: a round SIGSTOPs the primary's agent, server and backends (a frozen
  cgroup), then thaws them once a new primary serves.
- asymmetric: the primary is cut from the API server and the operator (it still reaches
  its replicas and clients), and one replica from the API server; healed once a new
  primary serves.
- kill: SIGKILL of the primary's pod (agent and server); the pod starts again 1 s later,
  as the StatefulSet's would.
- operator-kill: the same kill, and the operator is lost in the middle of the failover
  (its loop cancelled once it has written targetPrimary) and a fresh one, with nothing in
  memory, takes over from the Campus status alone.

Rejoins: how each old primary came back (pg_rewind or a new base backup), from its agent's
counters.

Outage: from the fault to the first commit acknowledged after it. Lost: acknowledged
commits missing on the new primary. Split brain: sampling rounds in which two instances
acknowledged a write, or the old primary did after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from integration.hacuts import OperatorLoop, RoleSampler, TcpProxy, Writer  # noqa: E402
from integration.localcampus import (  # noqa: E402
    LocalCampus,
    agent_client,
    pg_bin,
    unavailable,
    wait_until,
)
from integration.test_ha_cuts import _set, bootstrap  # noqa: E402
from ringkeeper.core.ha import PROMOTION_GRACE_SECONDS  # noqa: E402

SUBNET = 14


async def _settled(c: LocalCampus, http: aiohttp.ClientSession, primary: str,
                   proxy: TcpProxy | None = None) -> None:
    """Every other instance follows `primary` and it has them streaming (through its
    proxy, when there is one: the cut must reach them)."""
    agents = agent_client(http)

    async def ok() -> bool:
        st = await agents.status(c.ips[primary])
        streaming = {s["application_name"] for s in (st or {}).get("server", {}).get(
            "standbys") or [] if s["state"] == "streaming"}
        through = proxy is None or proxy.forwarding >= len(c.names) - 1
        return bool(st and st["role"] == "primary" and through
                    and streaming >= set(c.names) - {primary})

    await wait_until(f"replicas streaming from {primary}", ok, timeout=120)


def _scratch() -> Path:
    """A folder the unprivileged pod user can traverse."""
    root = Path(tempfile.mkdtemp(prefix="rk-bench-failover-"))
    root.chmod(0o755)
    return root


async def run_local(scenario: str, runs: int, version: str, detection: int
                    ) -> dict[str, Any]:
    reason = unavailable() or (None if pg_bin(version) else f"PostgreSQL {version} missing")
    if reason:
        raise SystemExit(f"bench-failover {scenario}: {reason}")
    c = LocalCampus(_scratch() / "campus", version, subnet=SUBNET)
    proxies = {n: TcpProxy(f"127.{SUBNET}.{int(version)}.{20 + i}", c.ips[n])
               for i, n in enumerate(c.names)}
    cutting = scenario == "replicas-cut"
    outages: list[float] = []
    failover_s: list[float] = []
    lost = rewinds = basebackups = 0
    async with aiohttp.ClientSession() as http:
        op = OperatorLoop(c, http, float(detection))
        writer = Writer(c, pause=0.1, writers=3, timeout=1.0)
        sampler = RoleSampler(c, c.names[0])
        try:
            if scenario == "replicas-cut":
                for p in proxies.values():
                    await p.start()
            await bootstrap(c, http)
            data = await c.store.read()
            data["spec"]["failover"]["detectionDelaySeconds"] = detection
            _set(c, "spec", data["spec"])
            if scenario == "replicas-cut":
                # From now on every instance is reached through its proxy (replication,
                # rewind, base backup); the operator and clients use the real addresses.
                _set(c, "podIPs", {n: p.host for n, p in proxies.items()})
                await op.run_for(2.0)
                # Re-point the replicas: each follows the primary's proxy once it reads it.
                for n in c.names[1:]:
                    await agent_client(http).follow(c.ips[n], c.names[0])
            await writer.start()
            sampler.start()
            await op.run_for(3.0)
            primary = c.names[0]
            await _settled(c, http, primary, proxies[primary] if cutting else None)
            agents = agent_client(http)
            for i in range(runs):
                sampler.old = primary
                before = await _rejoins(agents, c.ips[primary])
                lame = next(n for n in c.names if n != primary)
                t0 = time.monotonic()
                sampler.mark(f"round {i + 1} fault on {primary}")
                if scenario == "replicas-cut":
                    proxies[primary].cut()
                elif scenario == "asymmetric":
                    _set(c, "apiCut", [primary, lame])
                    op.ips[primary] = f"127.{SUBNET}.{int(version)}.250"  # nobody there
                elif scenario in ("kill", "operator-kill"):
                    c.kill(primary)
                    restart = asyncio.get_running_loop().call_later(1.0, c.start, primary)
                else:
                    c.freeze(primary)
                if scenario == "operator-kill":
                    op, t_done, outcome = await _operator_lost_mid_failover(
                        c, http, op, primary, detection)
                else:
                    t_done, outcome = await op.until_failover(timeout=detection + 30)
                if outcome.promoted is None:
                    raise SystemExit(f"round {i + 1}: failover refused: {outcome.message}")
                new = outcome.promoted
                n_acked = len(writer.acked)
                await wait_until("a commit on the new primary",
                                 lambda n=n_acked: _true(len(writer.acked) > n), timeout=30)
                outage = writer.outage_after(t0)
                assert outage is not None
                outages.append(outage)
                failover_s.append(t_done - t0)
                if scenario == "replicas-cut":
                    proxies[primary].heal()
                elif scenario == "asymmetric":
                    _set(c, "apiCut", [])
                    op.ips[primary] = c.ips[primary]
                elif scenario in ("kill", "operator-kill"):
                    await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))
                    restart.cancel()  # already run: the pod is back
                    before = (0, 0)  # a new agent process counts from zero
                else:
                    sampler.mark(f"round {i + 1} thaw {primary}")
                    c.thaw(primary)
                missing = await writer.missing_on(new)
                lost += len(missing)
                print(f"{scenario} {i + 1}/{runs}: {primary} -> {new}, failover "
                      f"{t_done - t0:.2f}s, outage {outage:.2f}s, lost {len(missing)} of "
                      f"{len(writer.acked)} acknowledged", flush=True)
                await op.run_for(1.0)
                await _settled(c, http, new, proxies[new] if cutting else None)
                after = await _rejoins(agents, c.ips[primary])
                rewinds += after[0] - before[0]
                basebackups += after[1] - before[1]
                # Each round starts from a steady campus: core.ha.just_promoted holds a
                # primary promoted less than PROMOTION_GRACE_SECONDS ago, whose followers
                # may still be connecting, from being failed over (by a cut, too).
                rest = PROMOTION_GRACE_SECONDS - (time.monotonic() - t_done) + 1
                if i + 1 < runs and rest > 0:
                    await op.run_for(rest)
                primary = new
            await writer.finish()
            await sampler.finish()
            for n in c.names:
                lost_here = await writer.missing_on(n)
                if lost_here:
                    print(f"{n} lacks {len(lost_here)} acknowledged commits", flush=True)
        except BaseException:
            for n in c.names:
                print(f"--- {n}\n{c.log(n)}", flush=True)
            raise
        finally:
            writer.stop.set()
            sampler.stop.set()
            for p in proxies.values():
                await p.stop()
            c.stop_all()
    return {"bench": "failover", "scenario": scenario, "runs": len(outages),
            "engine": f"postgresql {version}", "detection_delay_s": detection,
            "outage_p50_s": round(statistics.median(outages), 2),
            "outage_max_s": round(max(outages), 2),
            "failover_max_s": round(max(failover_s), 2),
            "target_max_s": detection + 5,
            "lost_commits": lost, "acknowledged_commits": len(writer.acked),
            "split_brain_rounds": len(sampler.violations),
            "split_brain": sampler.violations[:5],
            "rejoins_by_rewind": rewinds, "rejoins_by_basebackup": basebackups}


async def _rejoins(agents: Any, ip: str) -> tuple[int, int]:
    """(rejoins by pg_rewind, by base backup) the instance's agent has counted."""
    st = await agents.status(ip) or {}
    return int(st.get("rejoinsByRewind") or 0), int(st.get("rejoinsByBasebackup") or 0)


async def _operator_lost_mid_failover(c: LocalCampus, http: aiohttp.ClientSession,
                                      op: OperatorLoop, primary: str, detection: int
                                      ) -> tuple[OperatorLoop, float, Any]:
    """Run the operator until it has started the failover (targetPrimary written), lose
    it there (its task cancelled mid-step), and let a fresh OperatorLoop, which knows
    only what the Campus status says, finish the job."""
    task = asyncio.create_task(op.until_failover(timeout=detection + 30))
    deadline = time.monotonic() + detection + 30
    while not task.done() and time.monotonic() < deadline:
        st = (await c.store.read()).get("status") or {}
        if st.get("targetPrimary") not in (None, primary):
            task.cancel()
            break
        await asyncio.sleep(0.02)
    with contextlib.suppress(asyncio.CancelledError):
        done = await task
        if done is not None:
            print("  (the failover finished before the operator could be lost)", flush=True)
            return op, done[0], done[1]
    fresh = OperatorLoop(c, http, float(detection))
    t_done, outcome = await fresh.until_failover(timeout=detection + 30)
    return fresh, t_done, outcome


async def _true(value: object) -> object:
    return value

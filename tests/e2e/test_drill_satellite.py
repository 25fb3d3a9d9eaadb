"""A networkPartition Drill between a Satellite and its parent Campus on the local cluster,
run by the operator (issue 18): a ring of two one-instance Campuses (fy, yc) and a
Satellite xd of fy keeping the drill's table with a filter (site In [xd]). The drill
writes at xd and at fy through their -rw Services, cuts xd's pod from fy's pods with a
NetworkPolicy, heals, and must pass: nothing acknowledged lost at either side, the
satellite kept writing through the cut (its longest write gap, the RTO, small), its
status connected again with backlog 0 and Streaming BothWays (convergence recorded), the
policy gone. The test also sees with its own eyes that the cut was real (xd's status
said disconnected) and that a Drill against a Satellite that does not exist is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import asyncpg
import pytest
import yaml

from e2e.campus_helpers import campus_yaml, endpoints, install_operator, secret, status, wait_ready
from e2e.conftest import Cluster, wait_for
from e2e.test_drill import drill, drill_yaml, ready
from e2e.test_drill_ring import finished
from ringkeeper.core.drill_satellite import DRILL_DDL, DRILL_QUALIFIED, satellite_converged

pytestmark = pytest.mark.cluster

MEMBERS = ("fy", "yc")
SAT = "xd"
MAX_RTO = 120  # also the limit on convergence after the heal (36 s seen)


def _ring() -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis"},
        "spec": {"members": [{"name": m, "campusRef": {"name": m}} for m in MEMBERS],
                 "tables": {"include": ["ringkeeper_drill.*"]}}})


def _satellite() -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
        "metadata": {"name": SAT},
        "spec": {"parentRef": {"name": "fy"}, "engine": "postgresql", "version": "17",
                 "tables": [{"name": DRILL_QUALIFIED, "filter": {"all": [
                     {"column": "site", "op": "In", "values": [SAT]}]}}]}})


def _host(cluster: Cluster, ns: str, unit: str) -> str:
    if unit == SAT:
        (ip,) = endpoints(cluster, ns, f"{SAT}-rw")
        return ip
    st = status(cluster, ns, unit)
    return str(next(i["podIP"] for i in st["instances"] if i["name"] == st["currentPrimary"]))


async def _as_app(cluster: Cluster, ns: str, unit: str, sql: str) -> Any:
    """Run `sql` as the app user (who owns the drill's table, as the drill writes as it)."""
    host = await asyncio.to_thread(_host, cluster, ns, unit)
    pw = await asyncio.to_thread(secret, cluster, ns, f"{unit}-app", "password")
    conn = await asyncpg.connect(host=host, port=5432, user="app", database="app",
                                 password=pw, timeout=5)
    try:
        return await conn.fetch(sql) if sql.startswith("SELECT") else await conn.execute(sql)
    finally:
        await conn.close()


def _sat_status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(cluster.get("-n", ns, "satellite", SAT).get("status") or {})


async def test_satellite_partition_drill_keeps_writing_and_loses_nothing(
        cluster: Cluster, namespace: str) -> None:
    ns = namespace
    await asyncio.to_thread(install_operator, cluster, ns)
    # A Satellite that does not exist: refused with a reason, nothing runs.
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=drill_yaml(
        "nosat", "nosuch", "networkPartition", kind="Satellite"))
    for c in MEMBERS:
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
            c, "17", instances=1, synchronous={"number": 0, "dataDurability": "preferred"}))
    refused = await asyncio.to_thread(wait_for, "nosat refused", lambda: ready(
        drill(cluster, ns, "nosat")) or None, 120)
    assert (refused["status"], refused["reason"]) == ("False", "TargetMissing"), refused
    cluster.kubectl("-n", ns, "delete", "drill", "nosat")
    for c in MEMBERS:
        await asyncio.to_thread(wait_ready, cluster, ns, c, 180, False)
        await _as_app(cluster, ns, c, DRILL_DDL)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring())
    await asyncio.to_thread(wait_for, "ring streaming", lambda: (
        cluster.get("-n", ns, "replicationring", "lis").get("status") or {}).get(
            "healthyLinks") == "2/2", timeout=180)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_satellite())
    await asyncio.to_thread(wait_for, f"{SAT}-rw endpoint",
                            lambda: len(endpoints(cluster, ns, f"{SAT}-rw")) == 1, 180)
    for _ in range(60):  # the satellite's database takes its table once it serves
        try:
            await _as_app(cluster, ns, SAT, DRILL_DDL)
            break
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(1)
    await asyncio.to_thread(wait_for, "satellite streaming both ways", lambda: (
        satellite_converged(_sat_status(cluster, ns)) or None), 240)

    # The drill, and the test's own eye on the satellite's status during it.
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            st = await asyncio.to_thread(_sat_status, cluster, ns)
            seen.append({"connected": st.get("connected"), "backlog": st.get("backlogRows")})
            await asyncio.sleep(1)

    watcher = asyncio.create_task(watch())
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=drill_yaml(
        "cut", SAT, "networkPartition", kind="Satellite", max_rto=MAX_RTO,
        workload={"writers": 1, "ratePerSecond": 20, "durationSeconds": 60}))
    try:
        policy = await asyncio.to_thread(wait_for, "partition policy", lambda: (
            cluster.get("-n", ns, "networkpolicy", "-l", "ringkeeper.io/drill=cut")
            .get("items") or None), 180)
        spec = policy[0]["spec"]
        assert spec["podSelector"] == {"matchLabels": {"ringkeeper.io/satellite": SAT}}
        done = await asyncio.to_thread(finished, cluster, ns, "cut", 600)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    run = done["status"]["lastRun"]
    report = run.get("report") or ""
    assert run["result"] == "Passed", json.dumps(run, indent=1)[:6000]
    assert run["lostTransactions"] == 0 and run["committedTransactions"] > 100, run
    assert run["faultCampuses"] == [SAT, "fy"], run
    assert run["rtoSeconds"] is not None and run["rtoSeconds"] < 10, run
    assert run["convergedSeconds"] is not None, run
    assert any(s["connected"] is False for s in seen), seen  # the cut was real
    assert "satelliteRowsAtParent" in report and "parentRowsAtSatellite" in report, report
    assert not cluster.get("-n", ns, "networkpolicy", "-l", "ringkeeper.io/drill=cut").get(
        "items"), "the partition policy outlived the run"
    # What the drill wrote is where it belongs, seen by the test: xd's rows at fy and yc.
    sat_rows = await _as_app(cluster, ns, SAT, f"SELECT count(*) FROM {DRILL_QUALIFIED} "
                             f"WHERE site = '{SAT}'")
    at_yc = await _as_app(cluster, ns, "yc", f"SELECT count(*) FROM {DRILL_QUALIFIED} "
                          f"WHERE site = '{SAT}'")
    assert sat_rows[0][0] > 0 and at_yc[0][0] >= sat_rows[0][0], (sat_rows, at_yc)
    print(f"satellite partition drill: rto {run['rtoSeconds']} s, converged "
          f"{run['convergedSeconds']} s, committed {run['committedTransactions']}, lost "
          f"{run['lostTransactions']}")

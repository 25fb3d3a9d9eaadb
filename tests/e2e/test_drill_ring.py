"""Ring drills on the local cluster, run by the operator: a campusLoss (every instance of
one campus fenced through the Campus annotation its agents obey) in a ring of three,
and a syncCrash (every session of one campus's sync sidecar ended at once, its
replication streams included) in a ring of two. Each must pass with nothing lost and
the ring converged; the test checks with its own eyes that the fault was real (the
campus's servers stopped, the stream's walsender was replaced), that data crosses the
ring afterwards, and that the fault is gone (no fence left, also when the Drill is
deleted mid-run).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
import yaml

from e2e.campus_helpers import campus_yaml, install_operator, secret, status, wait_ready
from e2e.conftest import Cluster, wait_for
from e2e.test_drill import drill, drill_yaml

pytestmark = pytest.mark.cluster

FENCED = "ringkeeper.io/fenced-instances"
DRILL_FENCED = "ringkeeper.io/drill-fenced"
MAX_RTO = 60
TABLE = ("CREATE SCHEMA IF NOT EXISTS drilltest; CREATE TABLE IF NOT EXISTS drilltest.marks "
         "(id bigint PRIMARY KEY, campus text NOT NULL)")


def ring_yaml(campuses: list[str], **spec: Any) -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis"},
        "spec": {"members": [{"name": c, "campusRef": {"name": c}} for c in campuses],
                 "tables": {"include": ["drilltest.*"]}, **spec}})


async def connect(cluster: Cluster, ns: str, campus: str) -> asyncpg.Connection:
    st = status(cluster, ns, campus)
    ip = next(i["podIP"] for i in st["instances"] if i["name"] == st["currentPrimary"])
    conn: asyncpg.Connection = await asyncpg.connect(
        host=ip, port=5432, user="postgres", database="app", timeout=5,
        password=secret(cluster, ns, f"{campus}-superuser", "password"))
    return conn


async def ring_up(cluster: Cluster, ns: str, campuses: list[str], **spec: Any) -> None:
    await asyncio.to_thread(install_operator, cluster, ns)
    for c in campuses:
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
            c, "17", instances=1, synchronous={"number": 0, "dataDurability": "preferred"}))
    for c in campuses:
        await asyncio.to_thread(wait_ready, cluster, ns, c, 180, False)
        conn = await connect(cluster, ns, c)
        try:
            await conn.execute(TABLE)
        finally:
            await conn.close()
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=ring_yaml(campuses, **spec))
    n = len(campuses)
    await asyncio.to_thread(wait_for, "ring streaming", lambda: (
        cluster.get("-n", ns, "replicationring", "lis").get("status") or {}).get(
            "healthyLinks") == f"{n}/{n}", timeout=180)


async def crosses(cluster: Cluster, ns: str, key: int, src: str, dst: str) -> None:
    """A row written at `src` now arrives at `dst`: the ring carries data again."""
    conn = await connect(cluster, ns, src)
    try:
        await conn.execute("INSERT INTO drilltest.marks VALUES ($1, $2)", key, src)
    finally:
        await conn.close()

    async def there() -> bool:
        c = await connect(cluster, ns, dst)
        try:
            return bool(await c.fetchval("SELECT count(*) FROM drilltest.marks WHERE id = $1",
                                         key))
        finally:
            await c.close()

    deadline = asyncio.get_running_loop().time() + 60
    while not await there():
        assert asyncio.get_running_loop().time() < deadline, f"{key} never reached {dst}"
        await asyncio.sleep(0.5)


async def answers(cluster: Cluster, ns: str, campus: str) -> bool:
    try:
        conn = await connect(cluster, ns, campus)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


def campus_annotations(cluster: Cluster, ns: str, campus: str) -> dict[str, str]:
    return dict(cluster.get("-n", ns, "campus", campus)["metadata"].get("annotations") or {})


def finished(cluster: Cluster, ns: str, name: str, timeout: float) -> dict[str, Any]:
    done: dict[str, Any] = wait_for(f"drill {name} finished", lambda: (
        drill(cluster, ns, name) if (drill(cluster, ns, name).get("status") or {}).get(
            "phase") in ("Passed", "Failed") else None), timeout=timeout)
    return done


async def test_campus_loss_drill_bypasses_returns_and_always_lifts_its_fence(
        cluster: Cluster, namespace: str) -> None:
    ns = namespace
    campuses = ["north", "east", "west"]  # north is lost: west feeds east around it
    await ring_up(cluster, ns, campuses, healing={"bypassAfterSeconds": 5})
    load = {"writers": 1, "ratePerSecond": 3, "durationSeconds": 40}
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=drill_yaml(
        "loss", "lis", "campusLoss", "ReplicationRing", MAX_RTO, workload=load))
    fenced = await asyncio.to_thread(wait_for, "north fenced", lambda: json.loads(
        campus_annotations(cluster, ns, "north").get(FENCED) or "[]"), timeout=60)
    assert fenced == ["north-0"]
    # the fault is real: north's only server stops (nothing answers at its address)
    deadline = asyncio.get_running_loop().time() + 30
    while await answers(cluster, ns, "north"):
        assert asyncio.get_running_loop().time() < deadline, "north's server still runs"
        await asyncio.sleep(0.5)
    # what the ring says while north is gone (shown if the bypass is not seen)
    seen: list[Any] = []
    while campus_annotations(cluster, ns, "north").get(DRILL_FENCED) is not None:
        st = cluster.get("-n", ns, "replicationring", "lis").get("status") or {}
        seen.append([(lk["from"], lk["to"], lk["state"], lk.get("message"))
                     for lk in st.get("links") or []])
        await asyncio.sleep(2)
    done = await asyncio.to_thread(finished, cluster, ns, "loss", 40 + MAX_RTO + 120)
    run = done["status"]["lastRun"]
    print("campusLoss lastRun:", {k: v for k, v in run.items() if k != "timeline"})
    assert done["status"]["phase"] == "Passed", run
    assert run["lostTransactions"] == 0 and run["committedTransactions"] > 50, run
    events = [e["event"] for e in run["timeline"]]
    for e in ("DrillStarted", "FaultInjected", "RingBypassed", "FenceLifted",
              "RingConverged", "DrillPassed"):
        assert e in events, (events, seen)
    assert events.index("FaultInjected") < events.index("RingBypassed") < events.index(
        "FenceLifted") < events.index("RingConverged"), events
    assert "## Ring" in run["report"] and "writes through -rw again after" in run["report"]
    assert "bypass: west->east carries changes after" in run["report"], run["report"]
    # the fault is gone: no fence, north Ready, the whole ring streams and carries data
    ann = campus_annotations(cluster, ns, "north")
    assert FENCED not in ann and DRILL_FENCED not in ann, ann
    await asyncio.to_thread(wait_ready, cluster, ns, "north", 60, False)
    await crosses(cluster, ns, 1, "west", "north")
    await crosses(cluster, ns, 2, "north", "east")

    # Deleted mid-run: the fence goes with the Drill (finalizer and daemon).
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=drill_yaml(
        "gone", "lis", "campusLoss", "ReplicationRing", MAX_RTO,
        workload={**load, "durationSeconds": 120}))
    await asyncio.to_thread(wait_for, "gone fenced north", lambda: (
        DRILL_FENCED in campus_annotations(cluster, ns, "north")), timeout=60)
    cluster.kubectl("-n", ns, "delete", "drill", "gone", "--wait=false")
    await asyncio.to_thread(wait_for, "gone's fence lifted", lambda: not ({
        FENCED, DRILL_FENCED} & set(campus_annotations(cluster, ns, "north"))), timeout=30)
    await asyncio.to_thread(wait_for, "gone deleted", lambda: cluster.kubectl(
        "-n", ns, "get", "drill", "gone", check=False).returncode != 0, timeout=30)
    await asyncio.to_thread(wait_ready, cluster, ns, "north", 90, False)


async def test_sync_crash_drill_streams_again_and_loses_nothing(
        cluster: Cluster, namespace: str) -> None:
    ns = namespace
    await ring_up(cluster, ns, ["east", "west"])
    east_ip = next(i["podIP"] for i in status(cluster, ns, "east")["instances"])

    async def east_streams() -> list[int]:
        """The walsenders at west that stream to east's sidecar."""
        conn = await connect(cluster, ns, "west")
        try:
            return [int(r[0]) for r in await conn.fetch(
                "SELECT pid FROM pg_stat_replication WHERE client_addr = $1::inet "
                "AND state = 'streaming'", east_ip)]
        finally:
            await conn.close()

    before = await east_streams()
    assert before, "east's sidecar does not stream from west before the drill"
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=drill_yaml(
        "crash", "lis", "syncCrash", "ReplicationRing", MAX_RTO,
        workload={"writers": 1, "ratePerSecond": 3, "durationSeconds": 25}))
    done = await asyncio.to_thread(finished, cluster, ns, "crash", 25 + MAX_RTO + 90)
    run = done["status"]["lastRun"]
    print("syncCrash lastRun:", {k: v for k, v in run.items() if k != "timeline"})
    assert done["status"]["phase"] == "Passed", run
    assert run["lostTransactions"] == 0 and run["committedTransactions"] > 30, run
    events = [e["event"] for e in run["timeline"]]
    assert events.index("FaultInjected") < events.index("LinkStreaming") < events.index(
        "RingConverged") < events.index("DrillPassed"), events
    fault = next(e["message"] for e in run["timeline"] if e["event"] == "FaultInjected")
    assert "and 1 of its replication stream(s) at west" in fault, fault
    assert 0 < run["rtoSeconds"] <= MAX_RTO, run
    # the fault was real and is gone: west streams to east on a new walsender
    after = await east_streams()
    assert after and not set(after) & set(before), (before, after)
    assert (cluster.get("-n", ns, "replicationring", "lis").get("status") or {}).get(
        "healthyLinks") == "2/2"
    await crosses(cluster, ns, 3, "west", "east")
    await crosses(cluster, ns, 4, "east", "west")

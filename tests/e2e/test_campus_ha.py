"""Campus HA through the operator on the local cluster: failover loses no acknowledged commit."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from e2e.campus_helpers import (
    Writer,
    campus_yaml,
    committed_ids,
    endpoints,
    install_operator,
    pod_ip,
    status,
    wait_ready,
)
from e2e.conftest import Cluster, wait_for


async def _kill_and_check(cluster: Cluster, ns: str, writer: Writer, how: str) -> str:
    before = status(cluster, ns, "lab")
    old = before["currentPrimary"]
    old_uid = cluster.get("-n", ns, "pod", old)["metadata"]["uid"]
    writer.mark_kill()
    cli: list[str] = []
    if how == "container":
        await asyncio.to_thread(cluster.dev, *cli, "fault", "kill", "-n", ns, old)
    else:
        await asyncio.to_thread(cluster.kubectl, "-n", ns, "delete", "pod", old,
                                "--grace-period=0", "--force", "--wait=false")

    def recreated_in_place() -> bool:
        # A deleted pod may come back (same name, same volume) before the detection delay
        # runs out; resuming as primary then loses nothing, and is what should happen.
        res = cluster.kubectl("-n", ns, "get", "pod", old, "-o", "json", check=False)
        if res.returncode != 0:
            return False
        pod = json.loads(res.stdout)
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod.get("status", {}).get("conditions", []))
        return bool(pod["metadata"]["uid"] != old_uid and ready)

    def promoted() -> str | None:
        st = status(cluster, ns, "lab")
        new = st.get("currentPrimary")
        if not new or st.get("phase") not in ("Ready", "Degraded"):
            return None
        if new != old or (how == "pod" and recreated_in_place()):
            return str(new)
        return None

    new: str = await asyncio.to_thread(wait_for, f"a primary after killing {old}",
                                       promoted, 60)
    # -rw lists only the new primary.
    new_ip = await asyncio.to_thread(pod_ip, cluster, ns, new)
    await asyncio.to_thread(wait_for, "-rw to follow", lambda: endpoints(
        cluster, ns, "lab-rw") == [new_ip], 30)
    # The writer gets through again, and every commit it saw acknowledged is there.
    n = len(writer.acked)
    await asyncio.to_thread(wait_for, "writes through -rw", lambda: len(writer.acked) > n + 5,
                            30)
    have = await committed_ids(cluster, ns, "lab", new_ip)
    missing = set(writer.acked[: n]) - have
    assert not missing, f"acknowledged commits lost after killing {old}: {sorted(missing)[:10]}"
    return new


def _dump(cluster: Cluster, ns: str) -> None:
    """What a failed run needs to be understood: the Campus status and each instance's log."""
    print(cluster.kubectl("-n", ns, "get", "campus", "lab", "-o", "yaml", check=False).stdout)
    print(cluster.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout)
    print(cluster.kubectl("-n", ns, "get", "pods", "-o",
                          "jsonpath={range .items[*]}{.metadata.name} "
                          "{.status.containerStatuses}{'\\n'}{end}", check=False).stdout)
    for i in range(3):
        for container in ("database", "sync"):
            res = cluster.dev("logs",
                                     "-n", ns, f"lab-{i}", "-c", container, check=False)
            print(f"--- lab-{i} {container}\n{(res.stdout + res.stderr)[-4000:]}")


@pytest.mark.parametrize("major", ["15", "17", "18"])
async def test_campus_ready_rw_ro_and_failovers_lose_nothing(cluster: Cluster, namespace: str,
                                                              major: str) -> None:
    ns = namespace
    install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-",
                    input=campus_yaml("lab", major, image=f"ghcr.io/ringkeeper/postgres:{major}"))
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab")
    primary = st["currentPrimary"]
    replicas = sorted(pod_ip(cluster, ns, f"lab-{i}") for i in range(3) if f"lab-{i}" != primary)
    # EndpointSlices trail pod readiness by a moment: wait, do not sample once.
    await asyncio.to_thread(wait_for, "Services to select their roles", lambda: (
        endpoints(cluster, ns, "lab-rw") == [pod_ip(cluster, ns, primary)]
        and endpoints(cluster, ns, "lab-ro") == replicas
        and len(endpoints(cluster, ns, "lab-r")) == 3), 30)

    writer = Writer(cluster, ns, "lab")
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.to_thread(wait_for, "first writes", lambda: len(writer.acked) > 20, 30)
        rounds = ["container", "pod", "container"] if major == "17" else ["container"]
        for how in rounds:
            await _kill_and_check(cluster, ns, writer, how)
            # The old primary comes back as a replica before the next round.
            await asyncio.to_thread(wait_ready, cluster, ns, "lab", 120)
    except BaseException:
        _dump(cluster, ns)
        raise
    finally:
        writer.stop.set()
        await task
    st = status(cluster, ns, "lab")
    assert st["lastFailover"]["rtoSeconds"] < 30
    roles = sorted(i["role"] for i in st["instances"])
    assert roles == ["primary", "replica", "replica"]
    # Reads through -ro land on replicas that hold the data.
    ro = await asyncio.to_thread(wait_for, "two replicas behind -ro",
                                 lambda: (lambda r: r if len(r) == 2 else None)(
                                     endpoints(cluster, ns, "lab-ro")), 60)
    # Every acknowledged commit reaches every replica.
    for host in ro:
        deadline = time.monotonic() + 30
        while not set(writer.acked) <= await committed_ids(cluster, ns, "lab", host):
            if time.monotonic() > deadline:
                print(json.dumps(status(cluster, ns, "lab"), indent=1))
                raise AssertionError(f"replica {host} misses acknowledged commits")
            await asyncio.sleep(0.5)


def test_replica_kill_causes_no_failover(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=campus_yaml("lab", "17"))
    st = wait_ready(cluster, ns, "lab")
    primary = st["currentPrimary"]
    replica = next(f"lab-{i}" for i in range(3) if f"lab-{i}" != primary)
    cluster.dev("fault", "kill",
                       "-n", ns, replica)
    time.sleep(8)  # longer than the detection delay
    st = wait_ready(cluster, ns, "lab", 60)
    assert st["currentPrimary"] == primary
    assert "lastFailover" not in st


def test_partitioned_primary_fences_itself(cluster: Cluster, namespace: str) -> None:
    """Cut the primary off from the API server, its peers and the operator: it stops
    accepting writes on its own, a replica takes over, and at no moment do two instances
    accept writes."""
    ns = namespace
    install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=campus_yaml("lab", "17"))
    st = wait_ready(cluster, ns, "lab")
    old = st["currentPrimary"]
    names = [f"lab-{i}" for i in range(3)]
    others = [n for n in names if n != old]
    operator = [p["metadata"]["name"] for p in cluster.get(
        "-n", ns, "pods", "-l", "app.kubernetes.io/name=ringkeeper,app.kubernetes.io/component"
        "=operator")["items"]]
    assert operator
    cli = ["fault"]
    cluster.dev(*cli, "partition", "-n", ns, "--from", old, "--to", "apiserver",
                       *others, *operator)
    promoted = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            accepting = [n for n in names if _accepts_writes(cluster, ns, n)]
            assert len(accepting) <= 1, f"two instances accept writes: {accepting}"
            cur = status(cluster, ns, "lab").get("currentPrimary")
            if cur != old and accepting == [cur]:
                promoted = cur
                break
            time.sleep(0.3)
        assert promoted in others, "a replica is promoted once the primary is cut off"
        assert not _accepts_writes(cluster, ns, old), "the cut-off primary fenced itself"
    finally:
        cluster.dev(*cli, "heal")
    st = wait_ready(cluster, ns, "lab", 120)
    assert st["currentPrimary"] == promoted
    assert [n for n in names if _accepts_writes(cluster, ns, n)] == [promoted]


def test_operator_restart_mid_failover_ends_with_one_primary(
        cluster: Cluster, namespace: str) -> None:
    """The operator dies right after recording targetPrimary (step 4); the next one finds
    targetPrimary != currentPrimary and finishes the job."""
    ns = namespace
    release = install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=campus_yaml("lab", "17"))
    st = wait_ready(cluster, ns, "lab")
    old = st["currentPrimary"]
    target = next(f"lab-{i}" for i in range(3) if f"lab-{i}" != old)
    deploy = f"deploy/{release}-ringkeeper-operator"
    cluster.kubectl("-n", ns, "scale", deploy, "--replicas=0")
    wait_for("the operator to stop", lambda: not cluster.get(
        "-n", ns, "pods", "-l", "app.kubernetes.io/component=operator")["items"], timeout=60)
    patch = {"status": {"targetPrimary": target, "phase": "FailingOver",
                        "lastFailover": {"from": old, "to": target,
                                         "startedAt": "2026-01-01T00:00:00Z"}}}
    cluster.kubectl("-n", ns, "patch", "campus", "lab", "--subresource=status", "--type=merge",
                    "-p", json.dumps(patch))
    # The old primary sees a failover to someone else in flight and steps down at once.
    wait_for("the old primary to step down", lambda: not _accepts_writes(cluster, ns, old),
             timeout=30)
    cluster.kubectl("-n", ns, "scale", deploy, "--replicas=1")
    st = wait_ready(cluster, ns, "lab", 120)
    assert st["currentPrimary"] == target
    assert [n for n in (f"lab-{i}" for i in range(3)) if _accepts_writes(cluster, ns, n)] == [
        target]


def _accepts_writes(cluster: Cluster, ns: str, pod: str) -> bool:
    """Whether the pod's server runs as a primary, asked over its own Unix socket from inside
    its mount namespace, so a network cut cannot hide the answer."""
    import os
    import subprocess

    from e2e.campus_helpers import secret
    from ringkeeper_devcluster import faults
    from ringkeeper_devcluster.runtime import process

    procs = [c for c in faults.containers(cluster.state) if c.namespace == ns and c.pod == pod]
    if not procs:
        return False
    user = process.pod_user("ringkeeper-pod")
    password = secret(cluster, ns, "lab-superuser", "password")
    code = ("import asyncio, asyncpg, os\n"
            "async def m():\n"
            "    c = await asyncpg.connect(host='/run/ringkeeper', user='postgres', "
            "database='postgres', password=os.environ['PW'], timeout=1)\n"
            "    print(await c.fetchval('select not pg_is_in_recovery()'))\n"
            "asyncio.run(m())\n")
    import sys

    argv = process.exec_argv(procs[0].pid, [sys.executable, "-c", code], user)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                         env={**os.environ, "PW": password})
    return res.returncode == 0 and res.stdout.strip() == "True"


async def test_switchover_by_command_loses_nothing_and_fence_stops_a_replica(
        cluster: Cluster, namespace: str) -> None:
    ns = namespace
    install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=campus_yaml("lab", "17"))
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab")
    old = st["currentPrimary"]
    target = next(f"lab-{i}" for i in range(3) if f"lab-{i}" != old)
    writer = Writer(cluster, ns, "lab")
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.to_thread(wait_for, "first writes", lambda: len(writer.acked) > 20, 30)
        res = await asyncio.to_thread(cluster.ringkeeper, "promote", "-n", ns, "lab", target,
                                      "--timeout", "90")
        assert f"{target} is the primary of lab" in res.stdout
        n = len(writer.acked)
        await asyncio.to_thread(wait_for, "writes after the switchover",
                                lambda: len(writer.acked) > n + 10, 30)
    finally:
        writer.stop.set()
        await task
    new_ip = pod_ip(cluster, ns, target)
    await asyncio.to_thread(wait_for, "-rw to list only the new primary",
                            lambda: endpoints(cluster, ns, "lab-rw") == [new_ip], 30)
    assert set(writer.acked) <= await committed_ids(cluster, ns, "lab", new_ip)
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab", 120)
    assert st["currentPrimary"] == target

    # Fencing the primary is refused; fencing a replica stops it until unfenced.
    res = cluster.ringkeeper("fence", "-n", ns, "lab", target, check=False)
    assert res.returncode == 1 and "promote another instance first" in res.stderr
    replica = next(f"lab-{i}" for i in range(3) if f"lab-{i}" != target)
    cluster.ringkeeper("fence", "-n", ns, "lab", replica)
    await asyncio.to_thread(wait_for, "the fenced replica to leave -ro", lambda: pod_ip(
        cluster, ns, replica) not in endpoints(cluster, ns, "lab-ro"), 30)
    await asyncio.to_thread(wait_for, "the replica reported fenced", lambda: any(
        i["name"] == replica and i["role"] == "fenced"
        for i in status(cluster, ns, "lab").get("instances", [])), 30)
    cluster.ringkeeper("unfence", "-n", ns, "lab", replica)
    await asyncio.to_thread(wait_for, "the replica back behind -ro", lambda: pod_ip(
        cluster, ns, replica) in endpoints(cluster, ns, "lab-ro"), 60)

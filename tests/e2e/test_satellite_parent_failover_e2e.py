"""The parent Campus fails over while its Satellite is cut off, and the parent's sync
sidecar is killed while the two catch up (issue 17: "fail over the parent campus while
the satellite is offline; kill the sync processes mid-catch-up").

The ring and Satellite of test_satellite_sync_e2e.py, but the parent fy has two
instances with one synchronous standby (yc and the satellite xd one each). Writers at
fy (through whichever instance is its primary), yc and xd run from before the cut to
after the heal, every acknowledged commit in a ledger. While xd is cut from every ring
pod (the dev cluster's fault hook), fy's primary is SIGKILLed (every process of its pod)
and the operator promotes the standby; the writers go on at the new primary and at xd.
One second after the heal, the new primary's sync sidecar is SIGKILLed, mid-catch-up.

What must hold: every acknowledged commit where it belongs (xd's at fy and yc; the
ring's inside the filter at xd), the filtered checksums equal, and the Satellite
streaming both ways again with no backlog. The parent's spool, its slot for xd (a
failover slot on PostgreSQL 17) and its replication origin for xd's changes all live in
fy's database, so the promoted standby carries on where the old primary stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import yaml

from e2e.campus_helpers import campus_yaml, endpoints, install_operator, status, wait_ready
from e2e.conftest import Cluster, wait_for
from e2e.test_satellite_cut_e2e import _checksum, _cut, _pod, _streaming
from e2e.test_satellite_sync_e2e import (
    INSIDE,
    MEMBERS,
    RING,
    SAT,
    SAT_BASE,
    SCHEMA,
    Writer,
    _connect,
    _diagnose,
    _problems,
    _ring,
    _rows,
    _sat_status,
    _satellite,
)
from ringkeeper.api.v1alpha1.satellite import RowFilter
from ringkeeper.core.satellite import filter_sql

PARENT = "fy"


async def _schema(cluster: Cluster, ns: str, unit: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await _connect(cluster, ns, unit)
            try:
                await conn.execute(SCHEMA)
            finally:
                await conn.close()
            return
        except (OSError, asyncpg.PostgresError, TimeoutError):
            assert time.monotonic() < deadline, f"{unit} never took its schema"
            await asyncio.sleep(1)


async def test_parent_failover_while_the_satellite_is_cut(cluster: Cluster,
                                                          namespace: str) -> None:
    ns = namespace
    t0 = time.monotonic()
    install_operator(cluster, ns)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
        PARENT, "17", 2, synchronous={"number": 1}))
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
        "yc", "17", 1, synchronous={"number": 0, "dataDurability": "preferred"}))
    await asyncio.to_thread(wait_ready, cluster, ns, "yc", 180, False)
    await asyncio.to_thread(wait_ready, cluster, ns, PARENT, 240, True)
    for name in MEMBERS:
        await _schema(cluster, ns, name, 30)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring())
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_satellite())

    def ring_ready() -> dict[str, Any] | None:
        st = dict(cluster.get("-n", ns, "replicationring", RING).get("status") or {})
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        return st if conds.get("Ready") == "True" else None

    await asyncio.to_thread(wait_for, "ring Ready", ring_ready, 180)
    ring_writers = [Writer(cluster, ns, PARENT, 1_000_000, ("FY", "XD", "YC")),
                    Writer(cluster, ns, "yc", 2_000_000, ("YC", "FY", "XD"))]
    tasks = [asyncio.create_task(w.run()) for w in ring_writers]
    sat_writer = Writer(cluster, ns, SAT, SAT_BASE, ("XD",))
    healed = False
    try:
        await asyncio.to_thread(wait_for, f"{SAT}-rw endpoint",
                                lambda: len(endpoints(cluster, ns, f"{SAT}-rw")) == 1, 180)
        await _schema(cluster, ns, SAT, 60)
        tasks.append(asyncio.create_task(sat_writer.run()))

        def streaming() -> dict[str, Any] | None:
            s = _sat_status(cluster, ns)
            return s if s.get("connected") is True and \
                _streaming(s).get("status") == "True" else None

        try:
            await asyncio.to_thread(wait_for, "satellite streaming both ways", streaming, 150)
        except AssertionError:
            print(await _diagnose(cluster, ns))
            raise
        await asyncio.sleep(2)

        # The cut: xd from every ring pod.
        sat_ip = (await asyncio.to_thread(_pod, cluster, ns, f"{SAT}-0") or {})[
            "status"]["podIP"]
        ring_pods = [f"{PARENT}-0", f"{PARENT}-1", "yc-0"]
        await asyncio.to_thread(_cut, cluster, ns, sat_ip, ring_pods)
        t_cut = time.monotonic()
        await asyncio.to_thread(wait_for, "status to say the satellite is cut", lambda: (
            _sat_status(cluster, ns).get("connected") is False) or None, 45)

        # The parent's primary killed while cut; the operator promotes its standby.
        old = status(cluster, ns, PARENT)["currentPrimary"]
        fy_before = ring_writers[0].commits
        await asyncio.to_thread(cluster.dev, "fault", "kill", "-n", ns, old)
        t_kill = time.monotonic()

        def promoted() -> str | None:
            st = status(cluster, ns, PARENT)
            new = st.get("currentPrimary")
            return str(new) if new and new != old and \
                st.get("phase") in ("Ready", "Degraded") else None

        new = await asyncio.to_thread(wait_for, f"a primary after killing {old}", promoted, 90)
        failover_s = time.monotonic() - t_kill
        await asyncio.to_thread(wait_for, "writes acknowledged at the new primary",
                                lambda: ring_writers[0].commits > fy_before + 20, 60)
        sat_during = sat_writer.commits
        await asyncio.sleep(2)
        assert sat_writer.commits > sat_during, "the satellite stopped taking writes"
        cut_s = time.monotonic() - t_cut

        # The heal, and the new primary's sync sidecar killed while they catch up.
        await asyncio.to_thread(cluster.dev, "fault", "heal")
        healed = True
        t_heal = time.monotonic()
        await asyncio.sleep(1)
        await asyncio.to_thread(cluster.dev, "fault", "kill", "-n", ns, new, "-c", "sync")
        await asyncio.sleep(5)
    finally:
        if not healed:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.dev, "fault", "heal")
        for w in (*ring_writers, sat_writer):
            w.stop.set()
        await asyncio.gather(*tasks)
    ring_ledger = {k: v for w in ring_writers for k, v in w.ledger.items()}
    sat_ledger = dict(sat_writer.ledger)
    unknown = {k: v for w in (*ring_writers, sat_writer) for k, v in w.unknown.items()}
    assert ring_ledger and sat_ledger
    assert any(c not in INSIDE for c, _ in ring_ledger.values())  # the filter has work
    inside = filter_sql(RowFilter.model_validate(
        yaml.safe_load(_satellite())["spec"]["tables"][0]["filter"]))

    async def check() -> list[str]:
        found = {u: await _rows(cluster, ns, u) for u in (*MEMBERS, SAT)}
        problems = _problems(ring_ledger, sat_ledger, found, unknown)
        sums = {"fy filtered": await _checksum(cluster, ns, PARENT, inside),
                SAT: await _checksum(cluster, ns, SAT, "TRUE"),
                "fy": await _checksum(cluster, ns, PARENT, "TRUE"),
                "yc": await _checksum(cluster, ns, "yc", "TRUE")}
        if sums["fy filtered"] != sums[SAT] or sums["fy"] != sums["yc"]:
            problems.append(f"checksums differ: {sums}")
        return problems

    problems: list[str] = ["not checked yet"]
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            problems = await check()
            if not problems:
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    if problems:
        print(await _diagnose(cluster, ns))
    assert not problems, f"{len(problems)} problems, first: {problems[:10]}"
    converged_s = time.monotonic() - t_heal

    def online() -> dict[str, Any] | None:
        s = _sat_status(cluster, ns)
        return s if s.get("connected") is True and s.get("phase") == "Online" else None

    final = await asyncio.to_thread(wait_for, "satellite Online after the heal", online, 60)
    assert final["backlogRows"] == 0, final
    print(f"\nsatellite parent failover e2e: {old} -> {new} in {failover_s:.1f} s while cut "
          f"({cut_s:.0f} s); converged {converged_s:.1f} s after the heal (sidecar of {new} "
          f"killed 1 s after it); acked: ring {len(ring_ledger)} keys "
          f"({sum(w.commits for w in ring_writers)} commits), satellite {len(sat_ledger)} "
          f"keys ({sat_writer.commits} commits); unknown outcome {len(unknown)}; total "
          f"{time.monotonic() - t0:.0f} s")

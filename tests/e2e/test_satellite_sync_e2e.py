"""A Satellite that really syncs with its parent on the local cluster (issue 17): a ring of
two Campuses (fy, yc) streaming, writers at fy and yc before the Satellite xd is applied,
during its join and after, and a writer at xd from the moment its database serves (before
its parent's sidecar has learned it) until the end. Every acknowledged commit is in a
ledger; at the end each one is found wherever it belongs: xd's rows at fy and yc, the
ring's rows inside the filter (campus In FY, XD) at xd with their last value, and the
ring's rows outside it (campus YC, or moved out to YC by an update) NOT at xd. The
Satellite's status and `kubectl get satellite` columns say it is connected and Online."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import yaml

from e2e.campus_helpers import campus_yaml, endpoints, install_operator, secret, wait_ready
from e2e.conftest import Cluster, wait_for
from waiting import await_until

pytestmark = pytest.mark.cluster

RING = "lis"
MEMBERS = ("fy", "yc")
SAT = "xd"
INSIDE = ("FY", "XD")  # the satellite's filter: campus In (FY, XD)
SAT_BASE = 3_000_000  # the satellite writer's ids start here (the ring's below)
SCHEMA = ("CREATE SCHEMA IF NOT EXISTS lis; CREATE TABLE IF NOT EXISTS lis.samples ("
          "id bigint PRIMARY KEY, campus text NOT NULL, v int NOT NULL)")


def _ring() -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": RING},
        "spec": {"members": [{"name": m, "campusRef": {"name": m}} for m in MEMBERS],
                 "tables": {"include": ["lis.*"]}}})


def _satellite(backlog: dict[str, Any] | None = None) -> str:
    """The Satellite xd of fy; `backlog`: its spec.backlog limits (default: the API's)."""
    spec: dict[str, Any] = {
        "parentRef": {"name": "fy"}, "engine": "postgresql", "version": "17",
        "tables": [{"name": "lis.samples", "filter": {"all": [
            {"column": "campus", "op": "In", "values": list(INSIDE)}]}}]}
    if backlog:
        spec["backlog"] = backlog
    return yaml.safe_dump({"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
                           "metadata": {"name": SAT}, "spec": spec})


def _address(cluster: Cluster, ns: str, unit: str) -> str:
    """A Campus's primary pod IP, or the satellite's `-rw` endpoint."""
    if unit == SAT:
        (ip,) = endpoints(cluster, ns, f"{SAT}-rw")
        return ip
    st = cluster.get("-n", ns, "campus", unit)["status"]
    return str(next(i["podIP"] for i in st["instances"] if i["name"] == st["currentPrimary"]))


async def _connect(cluster: Cluster, ns: str, unit: str) -> asyncpg.Connection:
    host = await asyncio.to_thread(_address, cluster, ns, unit)
    pw = await asyncio.to_thread(secret, cluster, ns, f"{unit}-superuser", "password")
    conn: asyncpg.Connection = await asyncpg.connect(host=host, port=5432, user="postgres",
                                                     password=pw, database="app", timeout=5)
    return conn


@dataclass
class Writer:
    """One transaction at a time at `unit`: mostly inserts of its own ids, some updates of
    its own acknowledged rows (for the ring's writers: a few move a row out of the
    satellite's filter, to YC). `ledger` holds, per id, the last acknowledged (campus, v).
    A write whose acknowledgement was lost (an error or the 5 s limit after it was sent)
    may or may not have committed: `unknown` holds what it would have left, until a later
    acknowledged write of that id settles it; an unknown insert's id is never reused."""

    cluster: Cluster
    ns: str
    unit: str
    base: int
    campuses: tuple[str, ...]
    ledger: dict[int, tuple[str, int]] = field(default_factory=dict)
    unknown: dict[int, tuple[str, int]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    errors: int = 0
    commits: int = 0

    async def run(self) -> None:
        rng = random.Random(self.base)
        conn: asyncpg.Connection | None = None
        n = 0
        while not self.stop.is_set():
            sent: tuple[int, str, int] | None = None
            try:
                if conn is None:
                    conn = await _connect(self.cluster, self.ns, self.unit)
                mine = list(self.ledger)
                if mine and rng.random() < 0.3:
                    key = rng.choice(mine)
                    campus = ("YC" if self.unit != SAT and rng.random() < 0.3
                              else self.ledger[key][0])
                    v = self.ledger[key][1] + 1
                    sent = (key, campus, v)
                    await asyncio.wait_for(conn.execute(
                        "UPDATE lis.samples SET campus = $2, v = $3 WHERE id = $1",
                        key, campus, v), 5)
                else:
                    key, campus, v = self.base + n, self.campuses[n % len(self.campuses)], 0
                    n += 1
                    sent = (key, campus, v)
                    await asyncio.wait_for(conn.execute(
                        "INSERT INTO lis.samples VALUES ($1, $2, $3)", key, campus, v), 5)
                self.ledger[key] = (campus, v)
                self.unknown.pop(key, None)
                self.commits += 1
            except Exception:  # not acknowledged: maybe committed, maybe not; reconnect
                self.errors += 1
                if sent is not None:
                    self.unknown[sent[0]] = sent[1:]
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.02)
        if conn is not None:
            await conn.close()


async def _rows(cluster: Cluster, ns: str, unit: str) -> dict[int, tuple[str, int]]:
    conn = await _connect(cluster, ns, unit)
    try:
        return {r["id"]: (r["campus"], r["v"])
                for r in await conn.fetch("SELECT id, campus, v FROM lis.samples")}
    finally:
        await conn.close()


Row = tuple[str, int]


def _inside(row: Row | None) -> Row | None:
    """What the satellite holds of a ring row: the row when its filter selects it."""
    return row if row is not None and row[0] in INSIDE else None


def _problems(ring_ledger: dict[int, Row], sat_ledger: dict[int, Row],
              found: dict[str, dict[int, Row]], unknown: dict[int, Row] | None = None
              ) -> list[str]:
    """Every ledger row where it belongs with its last acknowledged value; ring rows
    outside the filter absent at the satellite. A write of unknown outcome (`unknown`:
    what it would have left, per id) may be what an id holds instead; then every unit
    must agree on which (one id, one version everywhere the filter lets it be). Empty
    when all holds."""
    unknown = unknown or {}
    out: list[str] = []

    def bad(unit: str, key: int, acked: Row | None, sat_ring_row: bool) -> None:
        got = found[unit].get(key)
        allowed = {acked}
        if key in unknown:
            allowed.add(unknown[key])
        if sat_ring_row:
            allowed = {_inside(r) for r in allowed}
        if got not in allowed:
            where = "ring id" if sat_ring_row else ("own id" if unit == SAT else "id")
            out.append(f"{unit}: {where} {key} is {got}, acked {acked}"
                       + (f" (or unknown {unknown[key]})" if key in unknown else ""))

    for member in MEMBERS:
        for key in {*ring_ledger, *sat_ledger, *unknown}:
            bad(member, key, ring_ledger.get(key, sat_ledger.get(key)), False)
    for key in {*ring_ledger, *unknown} - set(sat_ledger):
        if key in ring_ledger or key < SAT_BASE:
            bad(SAT, key, ring_ledger.get(key), True)
    for key in {*sat_ledger, *(k for k in unknown if k >= SAT_BASE)}:
        bad(SAT, key, sat_ledger.get(key), False)
    for key in unknown:  # one outcome everywhere
        seen = {found[m].get(key) for m in MEMBERS}
        if len(seen) > 1:
            out.append(f"id {key} of unknown outcome differs between members: {seen}")
    return out


async def _parent_entry(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    """The parent sidecar's report of the satellite (its /status `satellites` entry)."""
    import aiohttp

    host = await asyncio.to_thread(_address, cluster, ns, "fy")
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{host}:8001/status", timeout=aiohttp.ClientTimeout(total=3)) as r:
        report = await r.json()
    return next((e for e in report.get("satellites") or [] if e.get("name") == SAT), None)


async def _diagnose(cluster: Cluster, ns: str) -> str:
    """What the parent's sidecar says of the satellite, and the end of its log."""
    import aiohttp

    out = [f"satellite status: {_sat_status(cluster, ns)}"]
    with contextlib.suppress(Exception):
        host = await asyncio.to_thread(_address, cluster, ns, "fy")
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{host}:8001/status", timeout=aiohttp.ClientTimeout(total=3)) as r:
            out.append(f"fy sidecar satellites: {(await r.json()).get('satellites')}")
    for pod, c in (("fy-0", "sync"), ("xd-0", "database")):
        log = cluster.dev("logs", pod, "-n", ns, "-c", c, check=False).stdout
        out.append(f"--- log {pod} {c}\n" + "\n".join(log.splitlines()[-40:]))
    return "\n".join(out)


def _sat_status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(cluster.get("-n", ns, "satellite", SAT).get("status") or {})


async def test_satellite_syncs_with_its_parent_under_writes(cluster: Cluster, namespace: str
                                                            ) -> None:
    ns = namespace
    t0 = time.monotonic()
    install_operator(cluster, ns)
    for name in MEMBERS:
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
            name, "17", 1, synchronous={"number": 0, "dataDurability": "preferred"}))
    for name in MEMBERS:
        await asyncio.to_thread(wait_ready, cluster, ns, name, 180, False)
        conn = await _connect(cluster, ns, name)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring())

    def ring_ready() -> dict[str, Any] | None:
        st = dict(cluster.get("-n", ns, "replicationring", RING).get("status") or {})
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        return st if conds.get("Ready") == "True" else None

    st = await asyncio.to_thread(wait_for, "ring Ready", ring_ready, 180)
    assert st["healthyLinks"] == "2/2", st
    setup_s = time.monotonic() - t0

    # Before the Satellite exists: the ring's writers (FY and XD inside the filter, YC not).
    t1 = time.monotonic()
    ring_writers = [Writer(cluster, ns, "fy", 1_000_000, ("FY", "XD", "YC")),
                    Writer(cluster, ns, "yc", 2_000_000, ("YC", "FY", "XD"))]
    tasks = [asyncio.create_task(w.run()) for w in ring_writers]
    await asyncio.sleep(4)
    before = sum(w.commits for w in ring_writers)

    # The join, under those writes. The satellite's table is created only after the
    # parent has copied its rows and drained them into the satellite, which lacked it:
    # they wait there (parked) and must be applied once the table exists (they never
    # were, before sync/satellite.py retried them). Then its own writer starts.
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_satellite())
    await asyncio.to_thread(wait_for, f"{SAT}-rw endpoint",
                            lambda: len(endpoints(cluster, ns, f"{SAT}-rw")) == 1, 180)

    async def drained_into_nothing() -> dict[str, Any] | None:
        e = await _parent_entry(cluster, ns)
        return e if e and (e.get("copy") or {}).get("state") == "Done" and \
            e.get("drainedRows", 0) > 0 and "lis.samples" in str(e.get("drainError")) else None

    entry = await await_until("the copy drained into the satellite without its table",
                              drained_into_nothing, 120, 0.5)
    assert entry["copy"]["rowsCopied"] > 0, entry

    async def schema_at_satellite() -> bool:
        conn = await _connect(cluster, ns, SAT)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
        return True

    deadline = time.monotonic() + 60
    while True:
        try:
            await schema_at_satellite()
            break
        except (OSError, asyncpg.PostgresError, TimeoutError):
            assert time.monotonic() < deadline, "the satellite never took its schema"
            await asyncio.sleep(1)
    sat_writer = Writer(cluster, ns, SAT, SAT_BASE, ("XD",))
    tasks.append(asyncio.create_task(sat_writer.run()))

    def online() -> dict[str, Any] | None:
        s = _sat_status(cluster, ns)
        return s if s.get("connected") is True and s.get("phase") == "Online" else None

    def streaming() -> dict[str, Any] | None:
        """Both links stream (under writes the phase may say Syncing: a spooled change
        not yet drained is a backlog)."""
        s = _sat_status(cluster, ns)
        c = next((c for c in s.get("conditions") or [] if c["type"] == "Streaming"), {})
        return s if s.get("connected") is True and c.get("status") == "True" else None

    try:
        try:
            joined = await asyncio.to_thread(wait_for, "satellite streaming both ways",
                                             streaming, 120)
        except AssertionError:
            print(await _diagnose(cluster, ns))
            raise
        join_s = time.monotonic() - t1
        # After the join: a while more of writes on all three sides.
        await asyncio.sleep(8)
    finally:
        for w in (*ring_writers, sat_writer):
            w.stop.set()
        await asyncio.gather(*tasks)
    ring_ledger = {k: v for w in ring_writers for k, v in w.ledger.items()}
    sat_ledger = dict(sat_writer.ledger)
    unknown = {k: v for w in (*ring_writers, sat_writer) for k, v in w.unknown.items()}
    assert before > 0 and sat_ledger and ring_ledger
    assert any(c not in INSIDE for c, _ in ring_ledger.values())  # the filter has work
    assert any(c in INSIDE for c, _ in ring_ledger.values())

    async def found() -> dict[str, dict[int, tuple[str, int]]]:
        return {u: await _rows(cluster, ns, u) for u in (*MEMBERS, SAT)}

    problems: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        problems = _problems(ring_ledger, sat_ledger, await found(), unknown)
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    if problems:
        print(await _diagnose(cluster, ns))
    assert not problems, f"{len(problems)} ledger problems, first: {problems[:10]}"
    converge_s = time.monotonic() - t1 - join_s - 8

    # Status and the `kubectl get satellite` columns say it streams.
    assert joined["phase"] in ("Online", "Syncing"), joined
    final = await asyncio.to_thread(wait_for, "satellite Online after the writes", online, 40)
    assert final["backlogRows"] == 0, final
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "InstanceReady"), ready
    streams = next(c for c in final["conditions"] if c["type"] == "Streaming")
    assert (streams["status"], streams["reason"]) == ("True", "BothWays"), streams
    events = cluster.get("-n", ns, "events", "--field-selector",
                         f"involvedObject.kind=Satellite,involvedObject.name={SAT}")["items"]
    assert "BothWays" in {e["reason"] for e in events}, [e["reason"] for e in events]
    head, row = cluster.kubectl("-n", ns, "get", "satellite", SAT).stdout.splitlines()[:2]
    cols = dict(zip(head.split(), row.split(), strict=True))
    assert (cols["PARENT"], cols["CONNECTED"], cols["BACKLOG"], cols["PHASE"]) == (
        "fy", "true", "0", "Online"), (head, row)
    print(f"\nsatellite e2e: setup {setup_s:.0f} s, join {join_s:.0f} s, converged "
          f"{converge_s:.1f} s after the writers stopped; acked: ring {len(ring_ledger)} "
          f"keys ({sum(w.commits for w in ring_writers)} commits), satellite "
          f"{len(sat_ledger)} keys ({sat_writer.commits} commits); refused: "
          f"{sum(w.errors for w in (*ring_writers, sat_writer))}; total "
          f"{time.monotonic() - t0:.0f} s")

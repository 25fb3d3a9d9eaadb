"""Partial failures of a campus on the local cluster, judged by a ledger and a role sampler.

Each scenario runs a PostgreSQL 17 campus of three instances (ANY 1 synchronous,
detection delay 3 s) through the operator, with:
- a writer through the `-rw` Service recording every acknowledged commit (the ledger),
  from before the fault until after recovery; every one must be on the new primary and
  on every replica afterwards;
- a role sampler that, every half second, asks each instance over its own address to
  commit a durable write (synchronous_commit on, 1 s statement time-out): an instance
  that acknowledges is a writer, and no round may find two (a frozen or isolated old
  primary cannot acknowledge: its standbys are gone or it is stopped).

The outage is the time from the fault to the writer's first acknowledged commit after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

import asyncpg
import pytest

from e2e.campus_helpers import (
    Writer,
    campus_yaml,
    committed_ids,
    endpoints,
    install_operator,
    pod_ip,
    secret,
    status,
    wait_ready,
)
from e2e.conftest import Cluster, wait_for

NAMES = [f"lab-{i}" for i in range(3)]
DETECTION = 3.0  # campus_yaml's failover.detectionDelaySeconds
# What a test tolerates on this shared 2-core machine; `make bench-failover` holds the
# target (detection delay + 5 s) over repeated rounds.
OUTAGE_LIMIT = DETECTION + 12.0


@dataclass
class RoleSampler:
    """Which instances acknowledge a durable write, sampled in rounds."""

    cluster: Cluster
    ns: str
    rounds: list[tuple[float, list[str]]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def _acks(self, pod: str, ip: str, password: str) -> bool:
        try:
            conn = await asyncpg.connect(host=ip, port=5432, user="app", password=password,
                                         database="app", timeout=1)
        except Exception:
            return False
        try:
            await conn.execute("SET statement_timeout = 1000")
            # Negative ids: never in the writer's ledger, so they cannot mask a lost commit.
            await asyncio.wait_for(conn.execute(
                "INSERT INTO acked (id) VALUES ($1)", -next(self._ids)), 2)
            return True
        except Exception:
            return False
        finally:
            conn.terminate()

    async def run(self) -> None:
        password = await asyncio.to_thread(secret, self.cluster, self.ns, "lab-app", "password")
        ips = {n: await asyncio.to_thread(pod_ip, self.cluster, self.ns, n) for n in NAMES}
        while not self.stop.is_set():
            t = time.monotonic()
            acks = await asyncio.gather(*(self._acks(n, ips[n], password) for n in NAMES))
            self.rounds.append((t, [n for n, ok in zip(NAMES, acks, strict=True) if ok]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)

    def two_writers(self) -> list[tuple[float, list[str]]]:
        return [(t, w) for t, w in self.rounds if len(w) > 1]

    def writers_seen(self) -> set[str]:
        return {p for _, w in self.rounds for p in w}


async def _setup(cluster: Cluster, ns: str) -> tuple[str, Writer, RoleSampler,
                                                      list[asyncio.Task[None]]]:
    install_operator(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=campus_yaml("lab", "17"))
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab")
    primary = str(st["currentPrimary"])
    await asyncio.to_thread(wait_for, "-rw to select the primary", lambda: endpoints(
        cluster, ns, "lab-rw") == [pod_ip(cluster, ns, primary)], 30)
    writer = Writer(cluster, ns, "lab")
    sampler = RoleSampler(cluster, ns)
    tasks = [asyncio.create_task(writer.run())]
    await asyncio.to_thread(wait_for, "first writes", lambda: len(writer.acked) > 20, 30)
    tasks.append(asyncio.create_task(sampler.run()))
    await asyncio.to_thread(wait_for, "sampler rounds", lambda: len(sampler.rounds) > 2, 30)
    return primary, writer, sampler, tasks


async def _outage(writer: Writer, t0: float, timeout: float) -> float:
    def back() -> float | None:
        v = writer.first_ok_after.get(t0, -1.0)
        return v if v >= 0 else None
    return float(await asyncio.to_thread(wait_for, "writes through -rw again", back, timeout,
                                         0.1))


async def _check_ledger(cluster: Cluster, ns: str, writer: Writer,
                        patience: float = 60) -> None:
    """Every acknowledged commit is on every instance once the campus is whole again."""
    acked = set(writer.acked)
    for pod in NAMES:
        ip = await asyncio.to_thread(pod_ip, cluster, ns, pod)
        deadline = time.monotonic() + patience
        while True:
            try:
                missing = acked - await committed_ids(cluster, ns, "lab", ip)
            except (OSError, asyncpg.PostgresError) as exc:
                # A rejoining instance restarts its server (CI saw connection refused
                # here): not an answer yet, ask again until the deadline.
                missing, err = acked, exc
            else:
                err = None
            if not missing:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{pod} misses {len(missing)} acknowledged commits, "
                                     f"e.g. {sorted(missing)[:10]} (last error: {err!r})")
            await asyncio.sleep(0.5)


async def _finish(cluster: Cluster, ns: str, writer: Writer, sampler: RoleSampler,
                  tasks: list[asyncio.Task[None]]) -> None:
    n = len(writer.acked)
    await asyncio.to_thread(wait_for, "writes after recovery", lambda: len(writer.acked) > n + 20,
                            60)
    writer.stop.set()
    sampler.stop.set()
    await asyncio.gather(*tasks)
    await _check_ledger(cluster, ns, writer)
    assert not sampler.two_writers(), f"two instances acknowledged: {sampler.two_writers()}"


async def test_frozen_primary_is_replaced_and_returns_fenced(cluster: Cluster,
                                                             namespace: str) -> None:
    """SIGSTOP the primary's container for 20 s: a replica takes over within the detection
    delay plus a few seconds, the thawed old primary never acknowledges a write, and it
    rejoins as a replica."""
    ns = namespace
    old, writer, sampler, tasks = await _setup(cluster, ns)
    t_fault = time.monotonic()
    await asyncio.to_thread(cluster.dev, "fault", "stop", "-n", ns, old)
    # Counted from before the command (so the figure errs long), waiting for the first
    # acknowledgement after it returned (a write acknowledged while the signal was on its
    # way is not a recovery).
    t0 = writer.mark_kill()
    try:
        outage = await _outage(writer, t0, 60) + (t0 - t_fault)
        new = status(cluster, ns, "lab").get("currentPrimary")
        print(f"frozen primary {old}: writes back after {outage:.1f} s on {new}")
        assert new != old
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - t0)))
    finally:
        await asyncio.to_thread(cluster.dev, "fault", "cont", "-n", ns, old)
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab", 180)
    await _finish(cluster, ns, writer, sampler, tasks)
    roles = {i["name"]: i["role"] for i in st["instances"]}
    assert roles[old] == "replica", roles
    assert outage <= OUTAGE_LIMIT, f"outage {outage:.1f} s > {OUTAGE_LIMIT} s"
    # The old primary acknowledged nothing after the freeze began.
    late = [t for t, w in sampler.rounds if old in w and t > t0]
    assert not late, f"the frozen primary acknowledged writes after the fault: {late[:3]}"


# Failed in two full CI runs of one session (the second with ConnectionRefusedError from
# the ledger check reading a rejoining instance, now retried until the deadline); passed
# in every run since. tests/integration/test_ha_cuts.py covers the same cut on real servers.
async def test_primary_cut_from_replicas_only_is_replaced(cluster: Cluster,
                                                          namespace: str) -> None:
    """Cut the primary from both replicas (it still reaches the API server and the
    operator): under ANY 1 it can commit nothing, so it must be failed over, not waited
    out for the length of the cut."""
    ns = namespace
    old, writer, sampler, tasks = await _setup(cluster, ns)
    replicas = [n for n in NAMES if n != old]
    t_fault = time.monotonic()
    await asyncio.to_thread(cluster.dev, "fault", "partition", "-n", ns, "--from", old,
                            "--to", *replicas)
    t0 = writer.mark_kill()
    try:
        outage = await _outage(writer, t0, 60) + (t0 - t_fault)
        new = status(cluster, ns, "lab").get("currentPrimary")
        print(f"primary {old} cut from its replicas: writes back after {outage:.1f} s on {new}")
        assert new in replicas
    finally:
        await asyncio.to_thread(cluster.dev, "fault", "heal")
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab", 180)
    await _finish(cluster, ns, writer, sampler, tasks)
    roles = {i["name"]: i["role"] for i in st["instances"]}
    assert roles[old] == "replica", roles
    assert outage <= OUTAGE_LIMIT, f"outage {outage:.1f} s > {OUTAGE_LIMIT} s"


def _operator_pod(cluster: Cluster, ns: str) -> str:
    pods = cluster.get("-n", ns, "pods", "-l", "app.kubernetes.io/component=operator")
    running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    assert running, "no running operator pod"
    return str(running[0]["metadata"]["name"])


async def test_asymmetric_cut_promotes_a_replica_that_sees_the_api(
        cluster: Cluster, namespace: str) -> None:
    """Cut the primary from the API server and the operator, and one replica from the API
    server: the primary must be replaced (by either replica: the one without the API
    promotes on the operator's word), within the limit, nothing lost, never two writers."""
    ns = namespace
    old, writer, sampler, tasks = await _setup(cluster, ns)
    replicas = [n for n in NAMES if n != old]
    operator = await asyncio.to_thread(_operator_pod, cluster, ns)
    t_fault = time.monotonic()
    await asyncio.to_thread(cluster.dev, "fault", "partition", "-n", ns, "--from", old,
                            "--to", "apiserver", operator)
    await asyncio.to_thread(cluster.dev, "fault", "partition", "-n", ns, "--from",
                            replicas[0], "--to", "apiserver")
    t0 = writer.mark_kill()
    # Stricter than the write sampler: at no sample do two servers run as primary
    # (pg_is_in_recovery false, asked over each pod's own socket), acknowledged writes or
    # not. The old primary still reaches its replicas: their word must not keep it up
    # beside the promoted one (core.instance.vouches_for, core.ha.fence_barrier).
    primaries = asyncio.create_task(_watch_primaries(cluster, ns))
    try:
        outage = await _outage(writer, t0, 90) + (t0 - t_fault)
        new = status(cluster, ns, "lab").get("currentPrimary")
        print(f"primary {old} cut from API and operator, {replicas[0]} from the API: writes "
              f"back after {outage:.1f} s on {new}")
        assert new in replicas
        await asyncio.sleep(5)  # the cut lasts past the failover: the old primary stays out
    finally:
        primaries.cancel()
        await asyncio.to_thread(cluster.dev, "fault", "heal")
    two = [sample for sample in _PRIMARY_SAMPLES[ns] if len(sample) > 1]
    assert not two, f"two servers ran as primary at once: {two[:3]}"
    assert len(_PRIMARY_SAMPLES[ns]) >= 10, "too few samples to judge"
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab", 180)
    await _finish(cluster, ns, writer, sampler, tasks)
    roles = {i["name"]: i["role"] for i in st["instances"]}
    assert roles[old] == "replica", roles
    assert outage <= OUTAGE_LIMIT, f"outage {outage:.1f} s > {OUTAGE_LIMIT} s"


_PRIMARY_SAMPLES: dict[str, list[list[str]]] = {}


async def _watch_primaries(cluster: Cluster, ns: str) -> None:
    """Every instance asked in turn whether its server runs as a primary, until cancelled;
    each round's answers go to _PRIMARY_SAMPLES[ns]."""
    from e2e.test_campus_ha import _accepts_writes

    samples = _PRIMARY_SAMPLES.setdefault(ns, [])
    while True:
        up = await asyncio.gather(*(asyncio.to_thread(_accepts_writes, cluster, ns, n)
                                    for n in NAMES))
        samples.append([n for n, yes in zip(NAMES, up, strict=True) if yes])
        await asyncio.sleep(0.5)


async def test_operator_killed_mid_failover_finishes_it(cluster: Cluster,
                                                         namespace: str) -> None:
    """SIGKILL the primary, and the operator while it fails over: the restarted operator
    finishes the failover (or runs it again) with nothing lost and never two writers."""
    ns = namespace
    old, writer, sampler, tasks = await _setup(cluster, ns)
    operator = await asyncio.to_thread(_operator_pod, cluster, ns)
    t_fault = time.monotonic()
    await asyncio.to_thread(cluster.dev, "fault", "kill", "-n", ns, old)
    t0 = writer.mark_kill()
    # Mid-failover: after the detection delay, when the operator has started acting.
    await asyncio.sleep(DETECTION + 0.5)
    await asyncio.to_thread(cluster.dev, "fault", "kill", "-n", ns, operator)
    outage = await _outage(writer, t0, 120) + (t0 - t_fault)
    new = status(cluster, ns, "lab").get("currentPrimary")
    print(f"primary {old} and the operator killed: writes back after {outage:.1f} s on {new}")
    st = await asyncio.to_thread(wait_ready, cluster, ns, "lab", 180)
    await _finish(cluster, ns, writer, sampler, tasks)
    roles = [i["role"] for i in st["instances"]]
    assert roles.count("primary") == 1, st["instances"]
    # The operator's own restart (its process, then its leader lease) adds to the outage.
    assert outage <= OUTAGE_LIMIT + 30, f"outage {outage:.1f} s > {OUTAGE_LIMIT + 30} s"


def test_sampler_sees_two_writers_when_there_are_two() -> None:
    """The two-writer check can fail: a round with two acknowledging instances is caught."""
    s = RoleSampler(cluster=None, ns="x")  # type: ignore[arg-type]
    s.rounds = [(0.0, ["lab-0"]), (0.5, ["lab-0", "lab-1"]), (1.0, ["lab-1"])]
    assert s.two_writers() == [(0.5, ["lab-0", "lab-1"])]


async def test_ledger_check_catches_a_dropped_commit(cluster: Cluster,
                                                     namespace: str) -> None:
    """The ledger check can fail: delete one acknowledged row on the primary and the check
    names it."""
    ns = namespace
    _, writer, sampler, tasks = await _setup(cluster, ns)
    writer.stop.set()
    sampler.stop.set()
    await asyncio.gather(*tasks)
    victim = writer.acked[len(writer.acked) // 2]
    primary = status(cluster, ns, "lab")["currentPrimary"]
    ip = await asyncio.to_thread(pod_ip, cluster, ns, primary)
    password = await asyncio.to_thread(secret, cluster, ns, "lab-app", "password")
    conn = await asyncpg.connect(host=ip, port=5432, user="app", password=password,
                                 database="app", timeout=5)
    try:
        await conn.execute("DELETE FROM acked WHERE id = $1", victim)
    finally:
        await conn.close()
    with pytest.raises(AssertionError, match=str(victim)):
        await _check_ledger(cluster, ns, writer, patience=3)

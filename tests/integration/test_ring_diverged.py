"""Continuous verification on a real ring: PostgreSQL 15 and 18 with their sync sidecars.

The operator's own verification executor (controller.ring._verify, against the in-memory
API server tests/fakekube.py) runs incremental passes; core.divergence turns each
outcome into the Diverged condition, as the ring daemon does every cycle:

1. a converged ring verifies Converged (the control: the check can say no);
2. a row deleted at one member behind the ring's back (a session under the stock-sync
   origin, which the ring never forwards) makes the next pass Diverged, naming the table
   and the count of differing keys, with one Event and the gauge at 1 key;
3. the next pass still says so (an incremental pass keeps the dirty keys that differ,
   and only those), without a second Event;
4. after a repair, Converged again;
5. a row deleted on a key the ring did not change since is not seen by incremental
   passes (the documented limit), is found by a scheduled full run, and from then on the
   incremental passes keep the ring Diverged until that key agrees.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting
from prometheus_client import REGISTRY

from fakekube import FakeKube, serve
from pgserver import unavailable
from ringkeeper.adapters.kube import api_client
from ringkeeper.api.v1alpha1.common import ConditionStatus
from ringkeeper.api.v1alpha1.ring import VerificationResult
from ringkeeper.contracts.ringconfig import RingConfig
from ringkeeper.controller import ring as ring_ctl
from ringkeeper.core import divergence
from ringkeeper.verify import load_report
from waiting import await_until

from .ringlocal import LocalRing

pytestmark = pytest.mark.postgres

NS = "lab"
RING_PATH = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/replicationrings/lis"


def streaming(ring: LocalRing) -> Any:
    async def check() -> bool:
        return all(sc.state.role == "Primary" and sc.state.links and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in ring.sidecars.values())
    return check


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"namespace": NS, "ring": "lis"})


async def test_bypassed_delete_turns_diverged_and_back(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for major in ("15", "18"):
        if reason := unavailable(major):
            pytest.skip(f"PostgreSQL {major}: {reason}")
    ring = LocalRing(("15", "18"))
    ring.start_servers()
    try:
        for n in ring.names:
            ring.start_sidecar(n)
        await await_until("sidecars streaming", streaming(ring), 30)
        for i, n in enumerate(ring.names):
            c = await ring.conn(n)
            try:
                await c.execute(
                    "INSERT INTO lis.samples (id, campus, patient, status, result) "
                    "SELECT g, $2, 'p-' || g, 'collected', g / 7.0 "
                    "FROM generate_series($1::int8, $1::int8 + 199) g", (i + 1) * 1000, n)
            finally:
                await c.close()
        await ring.wait_converged(("lis.samples",), timeout=60)

        async with serve() as kube:
            monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
            monkeypatch.setattr(ring_ctl, "REPORT_DIR", str(tmp_path / "reports"))
            await _passes(ring, kube, tmp_path)
    finally:
        await ring.stop_all()
        ring.destroy()


async def _run(kube: FakeKube, ring: LocalRing, state: ring_ctl._State,
               previous: dict[str, Any] | None, mode: str = "incremental"
               ) -> tuple[divergence.DivergedVerdict, float]:
    """One pass through the operator's executor (incremental: a continuous one; full: a
    scheduled one), then the decision the next ring cycle makes from it."""
    cfg = RingConfig.load(ring.config_path)
    body = kube.objects[RING_PATH]
    t0 = time.monotonic()
    async with await api_client() as api:
        await ring_ctl._verify(api, body, cfg, {"chunkRows": 1000}, state, mode=mode,
                               trigger="continuous" if mode == "incremental" else "schedule")
    took = time.monotonic() - t0
    return divergence.decide(state.outcome, previous), took


def _cond(d: divergence.DivergedVerdict) -> dict[str, Any]:
    return {"type": "Diverged", "status": str(d.status), "reason": str(d.reason),
            "message": d.message}


async def _passes(ring: LocalRing, kube: FakeKube, tmp_path: Path) -> None:
    kube.put(RING_PATH, {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
                         "metadata": {"name": "lis", "namespace": NS}, "spec": {},
                         "status": {}})
    state = ring_ctl._State()
    posting.settings_var.set(kopf.OperatorSettings())  # scheduled runs post Events
    posting.event_queue_var.set(asyncio.Queue())
    posting.event_queue_loop_var.set(asyncio.get_running_loop())

    # 1. Converged: every key the sidecars applied compares equal.
    d1, took = await _run(kube, ring, state, None)
    assert state.outcome is not None and state.outcome.result == VerificationResult.PASSED, \
        state.outcome
    assert (d1.status, d1.reason, d1.event) == (ConditionStatus.FALSE,
                                                divergence.DivergedReason.CONVERGED, None)
    last = kube.objects[RING_PATH]["status"]["lastVerification"]
    assert (last["result"], last["differences"], last["mode"]) == ("Passed", 0, "incremental")
    assert "report" not in last  # a passing continuous run writes no report file
    assert _gauge("ringkeeper_ring_diverged_keys") == 0
    print(f"\ncontinuous pass 1 (converged, 400 keys applied): {took:.2f}s")

    # New rows at a travel to b; then b loses one behind the ring's back.
    a, b = await ring.conn("a"), await ring.conn("b")
    try:
        await a.execute("INSERT INTO lis.samples (id, campus, patient, status, result) "
                        "SELECT g, 'a', 'p-' || g, 'collected', 1 "
                        "FROM generate_series(5000, 5049) g")
        await ring.wait_converged(("lis.samples",), timeout=60)
        async with b.transaction():
            await b.execute("SELECT pg_replication_origin_session_setup('rk_lis__seed')")
            await b.execute("DELETE FROM lis.samples WHERE id = 5007")
        await b.execute("SELECT pg_replication_origin_session_reset()")
        await b.execute("INSERT INTO lis.samples (id, campus, status) VALUES (5100, 'b', 'x')")

        async def travelled() -> bool:  # a change made after the delete has reached a
            return bool(await a.fetchval("SELECT count(*) FROM lis.samples WHERE id = 5100"))
        await await_until("b's later write at a", travelled, 30)
        # The bypass held: a still has the row (else the test proves nothing).
        assert await a.fetchval("SELECT count(*) FROM lis.samples WHERE id = 5007") == 1
        assert await b.fetchval("SELECT count(*) FROM lis.samples WHERE id = 5007") == 0
    finally:
        await a.close()
        await b.close()

    # 2. Diverged: named, counted, told once.
    d2, took = await _run(kube, ring, state, _cond(d1))
    assert (d2.status, d2.reason, d2.event) == (ConditionStatus.TRUE,
                                                divergence.DivergedReason.KEYS_DIFFER,
                                                divergence.DivergenceEvent.DIVERGED)
    assert d2.message.startswith("1 key(s) differ between members in lis.samples (1); "
                                 "report "), d2.message
    assert _gauge("ringkeeper_ring_diverged_keys") == 1
    last = kube.objects[RING_PATH]["status"]["lastVerification"]
    assert (last["result"], last["differences"]) == ("Failed", 1)
    report = load_report(last["report"])  # a failing run writes its report
    [diff] = report.differences
    assert (diff.table, diff.key, diff.missing_on) == ("lis.samples", ["5007"], ["b"])
    samples = next(t for t in report.tables if t.table == "lis.samples")
    assert 50 <= samples.keys_touched <= 51  # what the ring applied since pass 1, no more
    print(f"continuous pass 2 (one key deleted at b behind the ring): {took:.2f}s "
          f"(5 s settle window included), {samples.keys_touched} keys touched")

    # 3. Still diverged on the next pass (the dirty keys stay), no second Event.
    d3, _ = await _run(kube, ring, state, _cond(d2))
    assert (d3.status, d3.event) == (ConditionStatus.TRUE, None)
    assert state.outcome is not None and state.outcome.differing == {"lis.samples": 1}
    # ... and it looked up only that key: the 50 found equal were forgotten (cheap).
    third = load_report(kube.objects[RING_PATH]["status"]["lastVerification"]["report"])
    assert next(t for t in third.tables if t.table == "lis.samples").keys_touched == 1

    # 4. Put back at b the way it went (the stock-sync origin: not forwarded), with a's
    # values: Converged, told once. (`ringkeeper verify --repair` needs the member's
    # origin, which the live sidecar holds; test_verify_cli covers it.)
    a, b = await ring.conn("a"), await ring.conn("b")
    try:
        row = await a.fetchrow("SELECT * FROM lis.samples WHERE id = 5007")
        async with b.transaction():
            await b.execute("SELECT pg_replication_origin_session_setup('rk_lis__seed')")
            await b.execute(f"INSERT INTO lis.samples ({', '.join(row.keys())}) VALUES "
                            f"({', '.join(f'${i + 1}' for i in range(len(row)))})",
                            *row.values())
        await b.execute("SELECT pg_replication_origin_session_reset()")
    finally:
        await a.close()
        await b.close()
    d4, _ = await _run(kube, ring, state, _cond(d3))
    assert (d4.status, d4.reason, d4.event) == (ConditionStatus.FALSE,
                                                divergence.DivergedReason.CONVERGED,
                                                divergence.DivergenceEvent.CONVERGED)
    assert _gauge("ringkeeper_ring_diverged_keys") == 0

    # 5. Damage on a key the ring did not change since the last pass: incremental passes
    # cannot see it (they compare changed keys), a scheduled full run does; from then
    # on the incremental passes look at that key too, and do not call the ring
    # Converged while it differs.
    await _bypassed_delete(ring, "b", 1003)
    d5, _ = await _run(kube, ring, state, _cond(d4))
    assert d5.status == ConditionStatus.FALSE  # the documented limit: a full run is needed
    d6, _ = await _run(kube, ring, state, _cond(d5), mode="full")
    assert (d6.status, d6.event) == (ConditionStatus.TRUE, divergence.DivergenceEvent.DIVERGED)
    assert d6.message.startswith("1 key(s) differ between members in lis.samples (1)")
    d7, _ = await _run(kube, ring, state, _cond(d6))
    assert (d7.status, d7.event) == (ConditionStatus.TRUE, None), d7
    assert [list(k) for k in _keys(kube)] == [["1003"]]

    runs = {r: REGISTRY.get_sample_value(
        "ringkeeper_verification_runs_total",
        {"namespace": NS, "ring": "lis", "trigger": "continuous", "mode": "incremental",
         "result": r}) for r in ("Passed", "Failed")}
    assert runs == {"Passed": 3, "Failed": 3}


def _keys(kube: FakeKube) -> list[tuple[str, ...]]:
    """The differing keys of the report the last run wrote."""
    report = load_report(kube.objects[RING_PATH]["status"]["lastVerification"]["report"])
    return [tuple(d.key) for d in report.differences]


async def _bypassed_delete(ring: LocalRing, member: str, key: int) -> None:
    """Delete a row at one member under the stock-sync origin, which no link forwards."""
    conn = await ring.conn(member)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_replication_origin_session_setup('rk_lis__seed')")
            await conn.execute("DELETE FROM lis.samples WHERE id = $1", key)
        await conn.execute("SELECT pg_replication_origin_session_reset()")
    finally:
        await conn.close()

"""Continuous verification through the real ring daemon cycle (controller.ring.ring_cycle)
against tests/fakekube.py (HTTP on 127.0.0.1), with the sidecars' reports planted:

- the Diverged condition follows the last verification's outcome (Unknown, True naming
  tables and counts, False Converged), and survives an operator restart;
- Ready turns False (reason Diverged) while links stream but members disagree;
- one Warning Event when Diverged turns True, one Normal Event when it turns back, none
  per cycle; the ringkeeper_ring_diverged gauge follows;
- a continuous run starts by default once the links stream, never while one runs or a
  link is down, and a run that fails is told once and backed off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._core.engines import posting
from prometheus_client import REGISTRY

from fakekube import FakeKube, serve
from ringkeeper.adapters.kube import api_client
from ringkeeper.api.v1alpha1.ring import VerificationResult
from ringkeeper.controller import ring as ring_ctl
from ringkeeper.core.divergence import VerifyOutcome

NS = "ns"
RING = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/replicationrings/lis"
CAMPUSES = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses"
MEMBERS = ("east", "west")
FAR = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        monkeypatch.setattr(ring_ctl, "REPORT_DIR", str(tmp_path / "reports"))
        yield fake


class Events:
    """Events the code under test posts through kopf, as (type, reason, message)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
        posting.settings_var.set(kopf.OperatorSettings())
        posting.event_queue_var.set(self.queue)
        posting.event_queue_loop_var.set(asyncio.get_running_loop())
        self.seen: list[tuple[str, str, str]] = []

    def all(self) -> list[tuple[str, str, str]]:
        while not self.queue.empty():
            e = self.queue.get_nowait()
            self.seen.append((e.type, e.reason, e.message))
        return list(self.seen)

    def kinds(self) -> list[tuple[str, str]]:
        """Divergence and verification Events (LinkStreaming and the like left out)."""
        return [(t, r) for t, r, _ in self.all()
                if r in ("Diverged", "Converged") or r.startswith("Verification")]


def _objects(kube: FakeKube, verification: dict[str, Any] | None = None) -> None:
    for c in MEMBERS:
        kube.put(f"{CAMPUSES}/{c}", {
            "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": c, "namespace": NS},
            "spec": {"engine": "postgresql", "version": "17", "instances": 1}})
    kube.put(RING, {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis", "namespace": NS, "generation": 2},
        "spec": {"members": [{"name": c, "campusRef": {"name": c}} for c in MEMBERS],
                 "verification": verification or {}},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]}})


def _links(monkeypatch: pytest.MonkeyPatch, state: str = "Streaming") -> None:
    """Every member's sidecar reports its inbound link in `state`."""
    async def report(_session: Any, _host: Any) -> dict[str, Any]:
        return {"links": [{"from": "east", "to": "west", "state": state},
                          {"from": "west", "to": "east", "state": state}]}
    monkeypatch.setattr(ring_ctl, "_report", report)


async def _cycle(kube: FakeKube, state: ring_ctl._State) -> dict[str, dict[str, Any]]:
    async with await api_client() as api, aiohttp.ClientSession() as session:
        await ring_ctl.ring_cycle(api, session, kube.objects[RING], state)
        if state.verification is not None:
            await state.verification  # the run patches status through this client
    return {c["type"]: c for c in kube.objects[RING]["status"]["conditions"]}


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("ringkeeper_ring_diverged",
                                     {"namespace": NS, "ring": "lis"})


DIFFER = VerifyOutcome(VerificationResult.FAILED, differing={"lis.samples": 2, "lis.results": 1})


async def test_diverged_condition_ready_events_and_gauge(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    events = Events()
    _objects(kube)
    _links(monkeypatch)
    state = ring_ctl._State()
    state.next_continuous = FAR  # runs are planted here, not started
    conds = await _cycle(kube, state)
    assert (conds["Diverged"]["status"], conds["Diverged"]["reason"]) == ("Unknown",
                                                                        "NotVerifiedYet")
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True",
                                                                    "AllLinksStreaming")
    assert _gauge() == -1

    state.outcome = DIFFER
    conds = await _cycle(kube, state)
    d = conds["Diverged"]
    assert (d["status"], d["reason"], d["observedGeneration"]) == ("True", "KeysDiffer", 2)
    assert d["message"] == ("3 key(s) differ between members in lis.samples (2), "
                            "lis.results (1)")
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "Diverged")
    assert "lis.samples (2)" in conds["Ready"]["message"]
    assert events.kinds() == [("Warning", "Diverged")]
    assert _gauge() == 1
    ready_since = conds["Ready"]["lastTransitionTime"]

    for _ in range(3):  # the same outcome, cycle after cycle: no more Events
        conds = await _cycle(kube, state)
    assert events.kinds() == [("Warning", "Diverged")]
    assert conds["Ready"]["lastTransitionTime"] == ready_since

    restarted = ring_ctl._State()  # an operator restart: the stored condition stands
    restarted.next_continuous = FAR
    conds = await _cycle(kube, restarted)
    assert conds["Diverged"]["status"] == "True" and conds["Ready"]["reason"] == "Diverged"
    assert len(events.kinds()) == 1

    restarted.outcome = VerifyOutcome(VerificationResult.PASSED)
    conds = await _cycle(kube, restarted)
    assert (conds["Diverged"]["status"], conds["Diverged"]["reason"]) == ("False",
                                                                          "Converged")
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True",
                                                                    "AllLinksStreaming")
    assert events.kinds() == [("Warning", "Diverged"), ("Normal", "Converged")]
    assert _gauge() == 0


async def test_continuous_run_by_default_told_once_and_backed_off(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    """No schedule set: a run starts once the links stream. The campuses have no primary
    here, so the run cannot reach its members: Error, told once, next run backed off."""
    events = Events()
    _objects(kube)
    _links(monkeypatch, "Down")
    state = ring_ctl._State()
    await _cycle(kube, state)
    assert state.verification is None  # a link down: a run would raise a false alarm
    assert "lastVerification" not in kube.objects[RING]["status"]

    _links(monkeypatch)
    before = datetime.now(UTC)
    await _cycle(kube, state)
    assert state.verification is not None and state.verification.done()
    last = kube.objects[RING]["status"]["lastVerification"]
    assert (last["result"], last["mode"]) == ("Error", "incremental")
    assert state.outcome is not None and "no primary" in state.outcome.error
    # Backed off: the first retry one interval (5 minutes) later.
    assert state.next_continuous is not None
    assert state.next_continuous - before >= timedelta(minutes=5)
    conds = await _cycle(kube, state)
    assert (conds["Diverged"]["status"], conds["Diverged"]["reason"]) == (
        "Unknown", "VerificationError")
    errors = [m for t, r, m in events.all() if r == "VerificationError"]
    assert len(errors) == 1 and "no primary" in errors[0]
    assert not [r for _, r, _ in events.all() if r.startswith("VerificationStarted")]

    state.next_continuous = datetime.now(UTC)  # due again: the same error is not re-told
    await _cycle(kube, state)
    assert [r for _, r, _ in events.all()].count("VerificationError") == 1
    assert state.verify_failures == 2
    assert state.next_continuous - datetime.now(UTC) > timedelta(minutes=9)  # doubled
    runs = REGISTRY.get_sample_value(
        "ringkeeper_verification_runs_total",
        {"namespace": NS, "ring": "lis", "trigger": "continuous", "mode": "incremental",
         "result": "Error"})
    assert runs is not None and runs >= 2


async def test_no_overlap_and_off_switch(kube: FakeKube,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    Events()
    _objects(kube)
    _links(monkeypatch)
    state = ring_ctl._State()
    busy: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.verification = asyncio.ensure_future(busy)  # a run still going
    state.next_continuous = datetime.now(UTC) - timedelta(minutes=1)
    async with await api_client() as api, aiohttp.ClientSession() as session:
        await ring_ctl.ring_cycle(api, session, kube.objects[RING], state)
    assert state.verification is not None and not state.verification.done()
    assert "lastVerification" not in kube.objects[RING]["status"]  # nothing new started
    busy.set_result(None)
    await state.verification

    _objects(kube, {"continuous": False})
    off = ring_ctl._State()
    conds = await _cycle(kube, off)
    assert off.verification is None and off.next_continuous is None
    assert (conds["Diverged"]["status"], conds["Diverged"]["reason"]) == (
        "Unknown", "VerificationDisabled")


async def test_bad_schedule_does_not_stop_continuous_runs(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron expression that can never fire takes Ready down (InvalidSchedule), but the
    continuous passes still run: the links stream, and divergence must still be seen."""
    Events()
    _objects(kube, {"schedule": "0 0 31 2 *"})
    _links(monkeypatch)
    state = ring_ctl._State()
    conds = await _cycle(kube, state)
    assert conds["Ready"]["reason"] == "InvalidSchedule"
    assert state.verification is not None  # it ran (and could not reach the members)
    assert kube.objects[RING]["status"]["lastVerification"]["mode"] == "incremental"
    assert state.next_verification is None  # the cron never fires

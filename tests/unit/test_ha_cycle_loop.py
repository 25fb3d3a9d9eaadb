"""controller.campus.ha_cycle end to end against fakes of its stores: which steps it runs.

The Campus and its pods live in tests/fakekube.py (an API server over real HTTP on
127.0.0.1); the agents are an in-memory fake that answers /api/status from a table and
records every call. run_failover is the real one, so a failover here goes through the
same pause -> elect -> record -> promote -> follow sequence as in a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from fakekube import FakeKube, serve
from ringkeeper.adapters.kube import api_client
from ringkeeper.controller import campus as campus_ctl

NS = "ns"
CAMPUS = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses/c"
PODS = f"/api/v1/namespaces/{NS}/pods"
NAMES = ["c-0", "c-1", "c-2"]
IPS = {n: f"10.0.0.{i + 1}" for i, n in enumerate(NAMES)}


def primary(lsn: str = "0/3000000") -> dict[str, Any]:
    return {"role": "primary", "server": {"running": True, "in_recovery": False,
                                          "current_lsn": lsn}}


def replica(lsn: str = "0/3000000", receiver: bool = True) -> dict[str, Any]:
    return {"role": "replica", "server": {"running": True, "in_recovery": True,
                                          "receive_lsn": lsn, "receiver": receiver}}


class FakeAgents:
    """The AgentClient's calls, answered from `raws` (by instance) and recorded."""

    def __init__(self, raws: dict[str, dict[str, Any] | None]) -> None:
        self.raws = raws
        self.calls: list[tuple[str, str]] = []
        self.by_ip = {ip: n for n, ip in IPS.items()}

    def _raw(self, ip: str) -> dict[str, Any] | None:
        return self.raws.get(self.by_ip[ip])

    async def status(self, ip: str) -> dict[str, Any] | None:
        return self._raw(ip)

    async def pause(self, ip: str, timeout: float = 15) -> dict[str, Any] | None:
        self.calls.append(("pause", self.by_ip[ip]))
        raw = self._raw(ip)
        if raw is None:
            return None
        return {**raw, "server": {**raw["server"], "receiver": False}}

    async def promote(self, ip: str, target: str | None = None) -> dict[str, Any]:
        name = self.by_ip[ip]
        self.calls.append(("promote", name))
        lsn = (self.raws[name] or {}).get("server", {}).get("receive_lsn", "0/3000000")
        self.raws[name] = primary(lsn)
        return {"promoted": True}

    async def follow(self, ip: str, primary: str, timeout: float = 30) -> dict[str, Any]:
        self.calls.append(("follow", f"{self.by_ip[ip]}->{primary}"))
        return {}

    async def recover(self, ip: str) -> dict[str, Any]:
        self.calls.append(("recover", self.by_ip[ip]))
        return {}

    async def fence(self, ip: str, on: bool = True, timeout: float = 5) -> dict[str, Any]:
        self.calls.append(("fence", self.by_ip[ip]))
        return {}


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        yield fake


def _events() -> asyncio.Queue[posting.K8sEvent]:
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def _setup(kube: FakeKube, status: dict[str, Any], annotations: dict[str, str] | None = None,
           ready: tuple[str, ...] = tuple(NAMES)) -> None:
    meta: dict[str, Any] = {"name": "c", "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    kube.put(CAMPUS, {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus", "metadata": meta,
        "spec": {"engine": "postgresql", "version": "17", "instances": 3,
                 "synchronous": {"dataDurability": "preferred"},
                 # 1 s: each failover's fence barrier (core.ha.fence_barrier) is 1.5 s
                 "failover": {"detectionDelaySeconds": 5, "selfFenceAfterSeconds": 1}},
        "status": status})
    for n in NAMES:
        kube.put(f"{PODS}/{n}", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": n, "namespace": NS,
                         "labels": {"ringkeeper.io/campus": "c"}},
            "status": {"podIP": IPS[n], "conditions": [
                {"type": "Ready", "status": "True" if n in ready else "False"}]}})


async def _cycle(kube: FakeKube, agents: FakeAgents) -> list[str]:
    queue = _events()
    async with await api_client() as api:
        await campus_ctl.ha_cycle(api, agents, kube.objects[CAMPUS], 0.0)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # fire-and-forget fences
    return [queue.get_nowait().reason for _ in range(queue.qsize())]


def _roles(kube: FakeKube) -> dict[str, str | None]:
    return {n: kube.objects[f"{PODS}/{n}"]["metadata"]["labels"].get("ringkeeper.io/role")
            for n in NAMES}


LONG_AGO = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat() \
    .replace("+00:00", "Z")


async def test_healthy_cycle_labels_roles_and_publishes(kube: FakeKube) -> None:
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-0"})
    agents = FakeAgents({"c-0": primary(), "c-1": replica(), "c-2": None})
    events = await _cycle(kube, agents)
    assert agents.calls == [] and events == []
    assert _roles(kube) == {"c-0": "primary", "c-1": "replica", "c-2": "unavailable"}
    status = kube.objects[CAMPUS]["status"]
    assert status["phase"] == "Ready" and status["readyInstances"] == 3
    assert [i["name"] for i in status["instances"]] == NAMES


async def test_a_former_primary_still_primary_keeps_the_campus_degraded(
        kube: FakeKube) -> None:
    """The CI failure: c-1 is currentPrimary, every pod is ready, and c-0 (the former
    primary) still answers as primary. Not Ready (it was, and the test's wait_ready took
    it as settled); nothing else changes: no call to any agent, the roles as before."""
    _setup(kube, {"currentPrimary": "c-1", "targetPrimary": "c-1"})
    agents = FakeAgents({"c-0": primary(), "c-1": primary(), "c-2": replica()})
    events = await _cycle(kube, agents)
    assert agents.calls == [] and events == []
    assert _roles(kube) == {"c-0": "unavailable", "c-1": "primary", "c-2": "replica"}
    status = kube.objects[CAMPUS]["status"]
    assert (status["phase"], status["readyInstances"]) == ("Degraded", 3)
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "StrayPrimary")
    assert "c-0 still runs as a primary beside currentPrimary c-1" in conds["Ready"]["message"]
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == (
        "True", "StrayPrimary")
    # Once c-0 reports replica, the next cycle publishes Ready.
    agents.raws["c-0"] = replica()
    await _cycle(kube, agents)
    status = kube.objects[CAMPUS]["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert (status["phase"], conds["Ready"]["reason"]) == ("Ready", "AllInstancesReady")


async def test_failed_primary_is_failed_over(kube: FakeKube) -> None:
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-0",
                  "failingSince": LONG_AGO}, ready=("c-1", "c-2"))
    agents = FakeAgents({"c-0": None, "c-1": replica("0/3000100"), "c-2": replica()})
    events = await _cycle(kube, agents)
    pauses = [c for c in agents.calls if c[0] == "pause"]
    assert sorted(pauses) == [("pause", "c-1"), ("pause", "c-2")]
    assert agents.calls.index(("promote", "c-1")) > max(map(agents.calls.index, pauses))
    assert ("promote", "c-1") in agents.calls and ("follow", "c-2->c-1") in agents.calls
    assert ("fence", "c-0") in agents.calls
    status = kube.objects[CAMPUS]["status"]
    assert (status["currentPrimary"], status["targetPrimary"]) == ("c-1", "c-1")
    assert status["lastFailover"]["from"] == "c-0"
    assert "primary failed: agent of c-0 unreachable" in status["lastFailover"]["reason"]
    assert events[-1] == "Promoted" and "FailoverStarted" in events
    assert _roles(kube)["c-1"] == "primary"


async def test_crashed_primary_without_safe_replica_is_restarted_in_place(
        kube: FakeKube) -> None:
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-0",
                  "failingSince": LONG_AGO}, ready=("c-1", "c-2"))
    kube.objects[CAMPUS]["spec"]["synchronous"] = {"dataDurability": "required"}
    agents = FakeAgents({"c-0": {"crashed": True, "server": {"running": False}},
                         "c-1": replica(), "c-2": replica()})
    events = await _cycle(kube, agents)
    assert agents.calls == [("recover", "c-0")], "nothing paused, nobody promoted"
    assert events == ["FailoverRefused", "RecoveringInPlace"]
    assert kube.objects[CAMPUS]["status"]["currentPrimary"] == "c-0"


async def test_switchover_annotation_promotes_the_asked_replica(kube: FakeKube) -> None:
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-0"},
           annotations={"ringkeeper.io/switchover-to": "c-2"})
    agents = FakeAgents({"c-0": primary(), "c-1": replica(), "c-2": replica()})
    events = await _cycle(kube, agents)
    assert agents.calls[0] == ("fence", "c-0"), "the old primary stops first"
    assert ("promote", "c-2") in agents.calls and ("follow", "c-1->c-2") in agents.calls
    status = kube.objects[CAMPUS]["status"]
    # Not Ready on the promotion alone: the old primary and the followers have not yet
    # reported their new roles (core.haplan.campus_phase decides on the next cycle).
    assert (status["currentPrimary"], status["phase"]) == ("c-2", "Degraded")
    assert "switchover requested to c-2" in status["lastFailover"]["reason"]
    await _cycle(kube, FakeAgents({"c-0": replica(), "c-1": replica(), "c-2": primary()}))
    assert kube.objects[CAMPUS]["status"]["phase"] == "Ready"
    assert "SwitchoverStarted" in events
    assert "ringkeeper.io/switchover-to" not in (
        kube.objects[CAMPUS]["metadata"].get("annotations") or {})


async def test_switchover_to_a_lagging_replica_is_refused(kube: FakeKube) -> None:
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-0"},
           annotations={"ringkeeper.io/switchover-to": "c-2"})
    agents = FakeAgents({"c-0": primary(), "c-1": replica("0/3000100"),
                         "c-2": replica("0/3000000")})
    events = await _cycle(kube, agents)
    assert not [c for c in agents.calls if c[0] == "promote"]
    assert ("follow", "c-1->c-0") in agents.calls, "replicas go back to the old primary"
    assert events == ["FailoverRefused"]
    assert kube.objects[CAMPUS]["status"]["currentPrimary"] == "c-0"
    assert _roles(kube)["c-0"] == "primary"


async def test_interrupted_failover_is_resumed_not_re_elected(kube: FakeKube) -> None:
    # targetPrimary was written (the election ran) but currentPrimary was not: c-1 is
    # promoted although c-2 is further ahead now.
    _setup(kube, {"currentPrimary": "c-0", "targetPrimary": "c-1",
                  "lastFailover": {"from": "c-0", "to": "c-1", "startedAt": LONG_AGO}},
           ready=("c-1", "c-2"))
    agents = FakeAgents({"c-0": None, "c-1": replica(), "c-2": replica("0/4000000")})
    events = await _cycle(kube, agents)
    assert [c for c in agents.calls if c[0] in ("pause", "promote")] == [("promote", "c-1")]
    status = kube.objects[CAMPUS]["status"]
    assert status["currentPrimary"] == "c-1" and status["lastFailover"]["rtoSeconds"] > 0
    assert events == ["Promoted"]

"""A verification schedule that passed admission but cannot fire (31 February, a range
that runs backwards, or one written before admission checked cron) gives the ring
Ready=False with reason InvalidSchedule and the parse error, on the first cycle, and
no exception in later ones (the ring daemon used to log a ValueError every 2 s).

Runs the real ring_cycle against tests/fakekube.py (HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from fakekube import FakeKube, serve
from ringkeeper.adapters.kube import api_client
from ringkeeper.controller import ring as ring_ctl

NS = "ns"
RING = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/replicationrings/lis"
CAMPUSES = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        yield fake


def _objects(kube: FakeKube, schedule: str) -> None:
    for c in ("east", "west"):
        kube.put(f"{CAMPUSES}/{c}", {
            "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": c, "namespace": NS},
            "spec": {"engine": "postgresql", "version": "17", "instances": 1}})
    kube.put(RING, {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis", "namespace": NS, "generation": 3},
        "spec": {"members": [{"name": c, "campusRef": {"name": c}} for c in ("east", "west")],
                 "verification": {"schedule": schedule}},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]}})


async def _cycle(kube: FakeKube, state: ring_ctl._State) -> dict[str, Any]:
    async with await api_client() as api, aiohttp.ClientSession() as session:
        await ring_ctl.ring_cycle(api, session, kube.objects[RING], state)
    return kube.objects[RING]


def _ready(ring: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in ring["status"]["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize("schedule,why", [
    ("0 0 31 2 *", "never fires"),
    ("5-1 * * * *", "runs backwards"),
    ("99 99 99 99 99", "minute field: 99 is outside 0-59"),  # from before admission checked
])
async def test_bad_schedule_is_a_condition_not_an_exception(kube: FakeKube, schedule: str,
                                                            why: str) -> None:
    _objects(kube, schedule)
    state = ring_ctl._State()
    ready = _ready(await _cycle(kube, state))
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSchedule")
    assert ready["message"].startswith("spec.verification.schedule: cron ")
    assert why in ready["message"]
    assert ready["observedGeneration"] == 3
    first = ready["lastTransitionTime"]
    again = _ready(await _cycle(kube, state))
    assert again["reason"] == "InvalidSchedule" and again["lastTransitionTime"] == first
    assert state.next_verification is None and state.verification is None


async def test_good_schedule_is_scheduled(kube: FakeKube) -> None:
    _objects(kube, "0 3 * * *")
    state = ring_ctl._State()
    ready = _ready(await _cycle(kube, state))
    assert ready["reason"] != "InvalidSchedule"
    assert state.next_verification is not None


def _accept(kind: str, spec: dict[str, Any], status: dict[str, Any] | None = None
            ) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Run the operator's create/update handler; (the status it patches, Events)."""
    import asyncio
    import logging

    import kopf
    from kopf._core.engines import posting

    from ringkeeper.controller import handlers

    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    body = kopf.Body(cast(Any, {"apiVersion": "ringkeeper.io/v1alpha1", "kind": kind,
                      "metadata": {"name": "d", "namespace": NS, "generation": 2,
                                   "uid": "u"},
                      "spec": spec, "status": status or {}}))
    patch = kopf.Patch()
    handlers._accept(kind, body, patch, cast(Any, logging.getLogger("test")))
    events = []
    while not queue.empty():
        e = queue.get_nowait()
        events.append((e.type, e.reason, e.message))
    return dict(patch["status"]), events


DRILL = {"target": {"kind": "Campus", "name": "east"}, "scenario": "primaryKill"}
SATELLITE = {"parentRef": {"name": "east"}, "version": "17",
             "tables": [{"name": "lis.test_catalog"}]}


async def test_drill_schedule_checked_on_first_sight() -> None:
    status, events = _accept("Drill", {**DRILL, "schedule": "0 0 30 2 *"})
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Accepted"]["status"] == "True"
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "InvalidSchedule")
    assert "spec.schedule: cron '0 0 30 2 *': never fires" in conds["Ready"]["message"]
    assert [r for t, r, _ in events if t == "Warning"] == ["InvalidSchedule"]
    # Corrected: Ready no longer claims the schedule is bad.
    fixed, events = _accept("Drill", {**DRILL, "schedule": "0 3 * * *"}, status)
    ready = next(c for c in fixed["conditions"] if c["type"] == "Ready")
    # The drill executor (controller/drill.py) sets Ready from its planner from here on.
    assert (ready["status"], ready["reason"]) == ("Unknown", "ScheduleValid")
    assert "InvalidSchedule" not in str(fixed["conditions"])
    assert not [e for e in events if e[0] == "Warning"]


async def test_ring_schedule_checked_on_first_sight() -> None:
    spec = {"members": [{"name": c, "campusRef": {"name": c}} for c in ("east", "west")],
            "verification": {"schedule": "5-1 * * * *"}}
    status, _ = _accept("ReplicationRing", spec)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSchedule"
    assert ready["message"].startswith("spec.verification.schedule: ")


async def test_acted_on_kinds_get_no_not_implemented() -> None:
    """Satellites are deployed by controller/satellite.py and Drills run by
    controller/drill.py: the admission handler accepts them and claims nothing else."""
    for kind, spec in (("Satellite", SATELLITE), ("Drill", DRILL)):
        status, _ = _accept(kind, spec)
        conds = {c["type"]: c for c in status["conditions"]}
        assert conds["Accepted"]["status"] == "True"
        assert "NotImplemented" not in str(status["conditions"])

"""Satellite reconcile against tests/fakekube.py (an API server over real HTTP on 127.0.0.1):
a missing parent and a parent in no ring give a clear Ready condition and write nothing; a
parent in a ring gets the one-instance database, owned by the Satellite; every API refusal
(422, 403), a foreign object in the way and a spec that bypassed admission become Ready=False
with the reason, one Event, and a retry that backs off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from fakekube import FakeKube, serve
from ringkeeper.controller import satellite as sat_ctl

NS = "ns"
API = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}"
SATS, CAMPUSES, RINGS = f"{API}/satellites", f"{API}/campuses", f"{API}/replicationrings"
STS = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        sat_ctl._FAILURES.clear()
        sat_ctl._TOLD.clear()
        yield fake


def _listen() -> asyncio.Queue[posting.K8sEvent]:
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def _drain(queue: asyncio.Queue[posting.K8sEvent]) -> list[tuple[str, str]]:
    out = []
    while not queue.empty():
        e = queue.get_nowait()
        out.append((e.type, e.reason))
    return out


def _satellite(kube: FakeKube, **spec: Any) -> dict[str, Any]:
    return kube.put(f"{SATS}/xindeng", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
        "metadata": {"name": "xindeng", "namespace": NS, "generation": 2},
        "spec": {"parentRef": {"name": "fuyang"}, "engine": "postgresql", "version": "17",
                 "tables": [{"name": "lis.specimen", "filter": {"all": [
                     {"column": "site", "op": "Equals", "values": ["XD"]}]}}], **spec}})


def _campus(kube: FakeKube) -> None:
    kube.put(f"{CAMPUSES}/fuyang", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
        "metadata": {"name": "fuyang", "namespace": NS},
        "spec": {"engine": "postgresql", "version": "17", "instances": 1}})


def _ring(kube: FakeKube, *campuses: str) -> None:
    kube.put(f"{RINGS}/lis-ring", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis-ring", "namespace": NS},
        "spec": {"members": [{"name": c, "campusRef": {"name": c}} for c in campuses]}})


def _ready(kube: FakeKube) -> dict[str, Any]:
    conds = (kube.objects[f"{SATS}/xindeng"].get("status") or {}).get("conditions") or []
    return next(c for c in conds if c["type"] == "Ready")


async def _pass(kube: FakeKube, timer: bool = False) -> None:
    await sat_ctl.reconcile(dict(kube.objects[f"{SATS}/xindeng"]), timer=timer)


def _deployed(kube: FakeKube) -> list[str]:
    return sorted(p for p in kube.objects if "xindeng" in p and not p.startswith(SATS))


async def test_parent_missing_then_not_in_ring_then_deployed(kube: FakeKube) -> None:
    events = _listen()
    _satellite(kube)
    _ring(kube, "zhaohui", "yuecheng")
    await _pass(kube)
    await _pass(kube, timer=True)
    # kopf's accept handler writes its older conditions list over Ready (same event).
    kube.objects[f"{SATS}/xindeng"]["status"]["conditions"] = [
        {"type": "Accepted", "status": "True", "reason": "SpecValid", "message": ""}]
    await _pass(kube, timer=True)
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("False", "ParentMissing")
    assert "'fuyang' does not exist" in ready["message"]
    assert _deployed(kube) == []
    assert _drain(events) == [("Warning", "ParentMissing")]  # once, not once per pass

    _campus(kube)
    await _pass(kube)
    assert _ready(kube)["reason"] == "ParentNotInRing"
    assert _deployed(kube) == []
    assert _drain(events) == [("Warning", "ParentNotInRing")]

    _ring(kube, "zhaohui", "fuyang")
    await _pass(kube)
    sat = kube.objects[f"{SATS}/xindeng"]
    status = sat["status"]
    assert (status["phase"], status["observedGeneration"]) == ("Initializing", 2)
    assert "currentPrimary" not in status
    assert (_ready(kube)["status"], _ready(kube)["reason"]) == ("False", "InstanceNotReady")
    sts = kube.objects[f"{STS}/xindeng"]
    assert sts["spec"]["replicas"] == 1
    assert sts["metadata"]["ownerReferences"][0]["uid"] == sat["metadata"]["uid"]
    assert f"{SERVICES}/xindeng-rw" in kube.objects
    assert [r for _, r in _drain(events)] == ["SecretGenerated"] * 4

    # The pod appears and is Ready: labelled primary (what -rw selects), Ready=True.
    kube.put(f"{PODS}/xindeng-0", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "xindeng-0", "namespace": NS,
                     "labels": {"ringkeeper.io/satellite": "xindeng"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await _pass(kube)
    pod = kube.objects[f"{PODS}/xindeng-0"]
    assert pod["metadata"]["labels"]["ringkeeper.io/role"] == "primary"
    assert (_ready(kube)["status"], _ready(kube)["reason"]) == ("True", "InstanceReady")
    assert _drain(events) == [("Normal", "InstanceReady")]


async def test_foreign_pod_is_never_labelled(kube: FakeKube) -> None:
    _listen()
    _satellite(kube)
    _campus(kube)
    _ring(kube, "zhaohui", "fuyang")
    kube.put(f"{PODS}/xindeng-0", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "xindeng-0", "namespace": NS, "labels": {"app": "other"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await _pass(kube)
    assert "ringkeeper.io/role" not in kube.objects[f"{PODS}/xindeng-0"]["metadata"]["labels"]
    assert _ready(kube)["reason"] == "InstanceNotReady"


async def test_refused_statefulset_one_event_condition_and_backoff(kube: FakeKube) -> None:
    events = _listen()
    _satellite(kube)
    _campus(kube)
    _ring(kube, "zhaohui", "fuyang")
    msg = 'StatefulSet.apps "xindeng" is invalid: spec.template: Invalid value'
    kube.refuse[("PATCH", f"{STS}/xindeng")] = (422, "Invalid", msg)
    await _pass(kube)
    await _pass(kube)
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("False", "Invalid")
    assert msg in ready["message"]
    assert [r for t, r in _drain(events) if t == "Warning"] == ["Invalid"]
    before = len(kube.requests)
    await _pass(kube, timer=True)  # backing off: asks nothing
    assert len(kube.requests) == before
    del kube.refuse[("PATCH", f"{STS}/xindeng")]
    await _pass(kube)
    assert _ready(kube)["reason"] == "InstanceNotReady"
    _drain(events)
    # Ready, then refused, then mended: the return to Ready is told again.
    kube.put(f"{PODS}/xindeng-0", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "xindeng-0", "namespace": NS,
                     "labels": {"ringkeeper.io/satellite": "xindeng"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await _pass(kube)
    kube.refuse[("PATCH", f"{STS}/xindeng")] = (422, "Invalid", msg)
    await _pass(kube)
    del kube.refuse[("PATCH", f"{STS}/xindeng")]
    await _pass(kube)
    assert _drain(events) == [("Normal", "InstanceReady"), ("Warning", "Invalid"),
                              ("Normal", "InstanceReady")]


async def test_forbidden_ring_list_is_a_condition(kube: FakeKube) -> None:
    events = _listen()
    _satellite(kube)
    _campus(kube)
    _ring(kube, "fuyang", "zhaohui")
    kube.refuse[("GET", RINGS)] = (403, "Forbidden", "replicationrings is forbidden")
    await _pass(kube)
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("False", "Forbidden")
    assert "forbidden" in ready["message"]
    assert _drain(events) == [("Warning", "Forbidden")]
    assert _deployed(kube) == []


async def test_foreign_service_in_the_way(kube: FakeKube) -> None:
    _listen()
    _satellite(kube)
    _campus(kube)
    _ring(kube, "fuyang", "zhaohui")
    kube.put(f"{SERVICES}/xindeng-rw", {"apiVersion": "v1", "kind": "Service",
                                        "metadata": {"name": "xindeng-rw", "namespace": NS}})
    await _pass(kube)
    ready = _ready(kube)
    assert ready["reason"] == "ForeignObject"
    assert "Service xindeng-rw" in ready["message"]
    assert f"{STS}/xindeng" not in kube.objects


async def test_spec_past_admission_is_refused(kube: FakeKube) -> None:
    """A raw SQL filter written with validation off never reaches a StatefulSet."""
    _listen()
    _satellite(kube, tables=[{"name": "lis.specimen", "rowFilter": "1=1; DROP TABLE x"}])
    _campus(kube)
    _ring(kube, "fuyang", "zhaohui")
    await _pass(kube)
    ready = _ready(kube)
    assert ready["reason"] == "InvalidSpec"
    assert "rowFilter" in ready["message"]
    assert _deployed(kube) == []

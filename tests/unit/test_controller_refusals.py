"""Campus reconcile and the ring cycle when the API server refuses, or a name is taken.

They run against tests/fakekube.py: an API server over real HTTP on 127.0.0.1
that stores objects and answers planted errors with kube-apiserver's Status
bodies. Events are read from kopf's posting queue, exactly what kopf would
post to the cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._core.engines import posting

from fakekube import FakeKube, serve
from ringkeeper.controller import campus as campus_ctl
from ringkeeper.controller import campus_reconcile
from ringkeeper.controller import ring as ring_ctl

NS = "ns"
CAMPUSES = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses"
RINGS = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/replicationrings"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
SERVICES = f"/api/v1/namespaces/{NS}/services"
STS = f"/apis/apps/v1/namespaces/{NS}/statefulsets"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        campus_reconcile._FAILURES.clear()
        yield fake


def _listen() -> asyncio.Queue[posting.K8sEvent]:
    """kopf's Event queue, as the operator has it (set in the test's own task)."""
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def _drain(queue: asyncio.Queue[posting.K8sEvent]) -> list[tuple[str, str, str]]:
    out = []
    while not queue.empty():
        e = queue.get_nowait()
        out.append((e.type, e.reason, e.message))
    return out


def _campus(kube: FakeKube, name: str) -> dict[str, Any]:
    return kube.put(f"{CAMPUSES}/{name}", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"engine": "postgresql", "version": "17", "instances": 3,
                 "storage": {"size": "1Gi"}}})


def _conds(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def test_refused_statefulset_gives_one_event_a_condition_and_backs_off(
        kube: FakeKube) -> None:
    events = _listen()
    body = _campus(kube, "victim")
    msg = ('StatefulSet.apps "victim" is invalid: spec.volumeClaimTemplates[0].spec.resources'
           '.requests[storage]: Invalid value: "-1Gi": must be greater than or equal to 0')
    kube.refuse[("PATCH", f"{STS}/victim")] = (422, "Invalid", msg)
    for _ in range(3):  # create, then two spec updates: each tries at once
        await campus_reconcile.reconcile(dict(body), None)
        body = kube.objects[f"{CAMPUSES}/victim"]
    told = _drain(events)
    assert [r for t, r, _ in told if t == "Normal"] == ["SecretGenerated"] * 4
    warnings = [(r, m) for t, r, m in told if t == "Warning"]
    assert warnings == [("Invalid", f"Invalid: {msg}")]
    conds = _conds(kube.objects[f"{CAMPUSES}/victim"])
    assert (conds["Reconciled"]["status"], conds["Reconciled"]["reason"]) == ("False", "Invalid")
    assert conds["Ready"]["reason"] == "Invalid" and msg in conds["Ready"]["message"]
    # The timer backs off: a drift pass straight after a failure asks nothing.
    before = len(kube.requests)
    await campus_reconcile.reconcile(dict(body), None, timer=True)
    assert len(kube.requests) == before
    # Mended: Reconciled=True, and the HA loop's Ready no longer carries the refusal.
    del kube.refuse[("PATCH", f"{STS}/victim")]
    await campus_reconcile.reconcile(dict(body), None)
    conds = _conds(kube.objects[f"{CAMPUSES}/victim"])
    assert conds["Reconciled"]["status"] == "True"
    # The Secrets existed: no SecretGenerated this time; only the first primary is named.
    assert [r for _, r, _ in _drain(events)] == ["Bootstrapping"]
    assert f"{STS}/victim" in kube.objects


async def test_a_restarted_operator_does_not_repeat_the_event(kube: FakeKube) -> None:
    events = _listen()
    body = _campus(kube, "victim")
    kube.refuse[("PATCH", f"{STS}/victim")] = (422, "Invalid", "cpu: Invalid value: -1")
    await campus_reconcile.reconcile(dict(body), None)
    campus_reconcile._FAILURES.clear()  # a new operator process
    await campus_reconcile.reconcile(dict(kube.objects[f"{CAMPUSES}/victim"]), None)
    assert [r for t, r, _ in _drain(events) if t == "Warning"] == ["Invalid"]


async def test_campus_named_after_anothers_service_is_refused_and_writes_nothing(
        kube: FakeKube) -> None:
    events = _listen()
    other = _campus(kube, "victim-rw")
    await campus_reconcile.reconcile(dict(other), None)
    assert kube.objects[f"{SERVICES}/victim-rw"]["metadata"]["ownerReferences"][0]["uid"] == \
        other["metadata"]["uid"]
    _drain(events)
    body = _campus(kube, "victim")
    kube.requests.clear()
    await campus_reconcile.reconcile(dict(body), None)
    written = [w for w in kube.writes() if not w[1].startswith(f"{CAMPUSES}/victim/")]
    assert written == []  # not one Secret, Service or StatefulSet of victim
    conds = _conds(kube.objects[f"{CAMPUSES}/victim"])
    assert conds["Reconciled"]["reason"] == "ForeignObject"
    assert "Service victim-rw" in conds["Ready"]["message"]
    assert "Campus victim-rw" in conds["Ready"]["message"]
    assert [r for t, r, _ in _drain(events) if t == "Warning"] == ["ForeignObject"]
    # victim-rw's Service is untouched.
    assert kube.objects[f"{SERVICES}/victim-rw"]["metadata"]["ownerReferences"][0]["uid"] == \
        other["metadata"]["uid"]


async def test_campus_adopts_its_orphan_but_not_a_hand_made_secret(kube: FakeKube) -> None:
    _listen()
    body = _campus(kube, "east")
    kube.put(f"{SERVICES}/east-ro", {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "east-ro", "namespace": NS, "labels": {
            "app.kubernetes.io/managed-by": "ringkeeper", "ringkeeper.io/campus": "east"}}})
    kube.put(f"{SECRETS}/east-app", {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "east-app", "namespace": NS}, "stringData": {"password": "mine"}})
    await campus_reconcile.reconcile(dict(body), None)
    conds = _conds(kube.objects[f"{CAMPUSES}/east"])
    assert conds["Reconciled"]["reason"] == "ForeignObject"
    assert "Secret east-app" in conds["Reconciled"]["message"]
    assert kube.objects[f"{SECRETS}/east-app"]["stringData"] == {"password": "mine"}
    assert kube.metadata_reads >= 2  # the ownership checks never fetched a Secret's value
    del kube.objects[f"{SECRETS}/east-app"]
    await campus_reconcile.reconcile(dict(kube.objects[f"{CAMPUSES}/east"]), None)
    assert _conds(kube.objects[f"{CAMPUSES}/east"])["Reconciled"]["status"] == "True"
    refs = kube.objects[f"{SERVICES}/east-ro"]["metadata"]["ownerReferences"]
    assert refs[0]["uid"] == body["metadata"]["uid"]


def _ring(kube: FakeKube, name: str, campuses: list[str]) -> dict[str, Any]:
    return kube.put(f"{RINGS}/{name}", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"topology": "ring",
                 "members": [{"name": c, "campusRef": {"name": c}} for c in campuses]},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]}})


async def _cycle(kube: FakeKube, name: str, state: ring_ctl._State) -> dict[str, Any]:
    from ringkeeper.adapters.kube import api_client

    async with await api_client() as api, aiohttp.ClientSession() as session:
        await ring_ctl.ring_cycle(api, session, kube.objects[f"{RINGS}/{name}"], state)
    return kube.objects[f"{RINGS}/{name}"]


async def test_second_ring_over_a_campus_is_refused_and_writes_nothing_for_it(
        kube: FakeKube) -> None:
    events = _listen()
    for c in ("east", "west", "north"):
        _campus(kube, c)
    _ring(kube, "ring-a", ["east", "west"])
    _ring(kube, "ring-b", ["east", "north"])
    a, b = ring_ctl._State(), ring_ctl._State()
    await _cycle(kube, "ring-a", a)
    kube.requests.clear()
    for _ in range(2):
        ring = await _cycle(kube, "ring-b", b)
    east = kube.objects[f"{SECRETS}/east-ring"]
    assert json.loads(east["stringData"]["ring.json"])["ring"] == "ring-a"
    assert not [w for w in kube.writes() if w[1] == f"{SECRETS}/east-ring"]
    assert json.loads(kube.objects[f"{SECRETS}/north-ring"]["stringData"]["ring.json"])[
        "ring"] == "ring-b"
    ready = _conds(ring)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "CampusInAnotherRing")
    assert "ring ring-a" in ready["message"] and "campus east" in ready["message"]
    warned = [(r, m) for t, r, m in _drain(events) if t == "Warning" and
              r == "CampusInAnotherRing"]
    assert len(warned) == 1
    # ring-a lets east go: its Secret is deleted, and ring-b claims east on its next cycle.
    kube.objects[f"{RINGS}/ring-a"]["spec"]["members"] = [
        {"name": "west", "campusRef": {"name": "west"}}]
    await _cycle(kube, "ring-a", a)
    assert f"{SECRETS}/east-ring" not in kube.objects
    ring = await _cycle(kube, "ring-b", b)
    assert json.loads(kube.objects[f"{SECRETS}/east-ring"]["stringData"]["ring.json"])[
        "ring"] == "ring-b"
    assert _conds(ring)["Ready"]["reason"] != "CampusInAnotherRing"


async def test_ring_does_not_take_over_an_unrelated_secret(kube: FakeKube) -> None:
    events = _listen()
    _campus(kube, "east")
    _ring(kube, "payroll", ["east"])
    kube.put(f"{SECRETS}/payroll-sync", {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "payroll-sync", "namespace": NS}, "stringData": {"db": "salaries"}})
    for _ in range(2):
        ring = await _cycle(kube, "payroll", ring_ctl._State())
    assert kube.objects[f"{SECRETS}/payroll-sync"]["stringData"] == {"db": "salaries"}
    assert "ownerReferences" not in kube.objects[f"{SECRETS}/payroll-sync"]["metadata"]
    ready = _conds(ring)["Ready"]
    assert ready["reason"] == "ForeignObject" and "Secret payroll-sync" in ready["message"]
    assert [r for t, r, _ in _drain(events) if t == "Warning"] == ["ForeignObject"]


async def test_cli_reports_a_refusal_without_a_traceback(kube: FakeKube, tmp_path: Path
                                                         ) -> None:
    import sys

    _campus(kube, "victim")
    kube.refuse[("PATCH", f"{CAMPUSES}/victim")] = (
        403, "Forbidden", 'campuses.ringkeeper.io "victim" is forbidden: user cannot patch')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringkeeper", "fence", "victim", "victim-1", "--kubeconfig",
        str(kube.kubeconfig(tmp_path)), "-n", NS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (out, err)
    assert b"Traceback" not in err
    assert b"403 Forbidden" in err and b"user cannot patch" in err


async def test_unreachable_api_server_is_a_failure_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    events = _listen()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = FakeKube()
    fake.url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
    campus_reconcile._FAILURES.clear()
    body = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": "victim", "namespace": NS, "uid": "u-1"},
            "spec": {"engine": "postgresql", "version": "17", "instances": 1}}
    for _ in range(2):
        await campus_reconcile.reconcile(body, None)
    failure = campus_reconcile._FAILURES["u-1"]
    assert failure.count == 2 and failure.signature.startswith("ApiUnavailable:")
    assert [r for t, r, _ in _drain(events) if t == "Warning"] == ["ApiUnavailable"]


async def test_loop_failures_are_told_once_and_back_off(kube: FakeKube) -> None:
    from ringkeeper.adapters.kube import api_client

    events = _listen()
    body = _campus(kube, "victim")
    ring = _ring(kube, "ring-a", ["victim", "west"])
    state = ring_ctl._State()
    async with await api_client() as api:
        told = None
        for _ in range(3):
            told = await campus_ctl._ha_failed(api, body, told, "Forbidden",
                                               "pods is forbidden")
        waits = [await ring_ctl._ring_failed(api, ring, state, "Invalid", "bad")
                 for _ in range(4)]
    assert waits == [2.0, 4.0, 8.0, 16.0]
    warned = [(r, m) for t, r, m in _drain(events) if t == "Warning"]
    assert warned == [("Forbidden", "pods is forbidden"), ("Invalid", "bad")]
    assert _conds(kube.objects[f"{CAMPUSES}/victim"])["Ready"]["reason"] == "Forbidden"
    assert _conds(kube.objects[f"{RINGS}/ring-a"])["Ready"]["reason"] == "Invalid"


async def test_ring_that_loses_the_create_race_backs_off_its_claim(kube: FakeKube) -> None:
    events = _listen()
    for c in ("east", "west"):
        _campus(kube, c)
    _ring(kube, "ring-a", ["east", "west"])
    _ring(kube, "ring-b", ["east", "west"])
    await _cycle(kube, "ring-a", ring_ctl._State())
    # ring-b reads east-ring before ring-a's create lands: absent; its create then gets 409.
    for c in ("east", "west"):
        kube.refuse_once[("GET", f"{SECRETS}/{c}-ring")] = (404, "NotFound", "not yet")
    ring = await _cycle(kube, "ring-b", ring_ctl._State())
    for c in ("east", "west"):
        secret = kube.objects[f"{SECRETS}/{c}-ring"]
        assert json.loads(secret["stringData"]["ring.json"])["ring"] == "ring-a"
    assert not [w for w in kube.writes() if w[0] == "PATCH" and w[1].endswith("-ring")]
    ready = _conds(ring)["Ready"]
    assert ready["reason"] == "CampusInAnotherRing"
    assert "campus east" in ready["message"] and "campus west" in ready["message"]
    warned = [m for t, r, m in _drain(events) if r == "CampusInAnotherRing"]
    assert len(warned) == 2

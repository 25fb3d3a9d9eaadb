"""The real ring cycle, against an in-memory API server over HTTP: a Secret an external
member names is read only when labelled for the ring, never when the operator made it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._core.engines import posting

from fakekube import FakeKube, serve
from ringkeeper.adapters import secretrefs
from ringkeeper.contracts.conninfo import SslMode, parse_dsn
from ringkeeper.controller import ring as ring_ctl

NS = "ns"
RINGS = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/replicationrings"
CAMPUSES = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PASSWORD = "lab-Pa55:@/?"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        yield fake


@pytest.fixture
def values_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the Secrets whose values the ring code asked for."""
    read: list[str] = []
    real = secretrefs.secret_key

    async def spy(api: Any, namespace: str, name: str, key: str) -> str:
        read.append(name)
        return await real(api, namespace, name, key)

    monkeypatch.setattr(secretrefs, "secret_key", spy)
    return read


def _events() -> asyncio.Queue[posting.K8sEvent]:
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def _secret(kube: FakeKube, name: str, data: dict[str, str],
            labels: dict[str, str] | None = None) -> None:
    kube.put(f"{SECRETS}/{name}", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def _setup(kube: FakeKube, password_secret: str) -> None:
    kube.put(f"{CAMPUSES}/east", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
        "metadata": {"name": "east", "namespace": NS},
        "spec": {"engine": "postgresql", "version": "17", "instances": 3}})
    kube.put(f"{RINGS}/lis", {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis", "namespace": NS},
        "spec": {"topology": "ring", "members": [
            {"name": "east", "campusRef": {"name": "east"}},
            {"name": "lab", "external": {
                "host": "lab.partner.example.org", "port": 6432, "database": "lis",
                "user": "ringkeeper_sync", "engine": "postgresql", "version": "17",
                "passwordSecret": {"name": password_secret, "key": "password"},
                "tls": {"caSecret": {"name": "lab-ca", "key": "ca.crt"}}}}]},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]}})
    _secret(kube, "lab-ca", {"ca.crt": CA}, {"ringkeeper.io/ring": "lis"})


async def _cycle(kube: FakeKube, state: ring_ctl._State) -> dict[str, Any]:
    from ringkeeper.adapters.kube import api_client

    async with await api_client() as api, aiohttp.ClientSession() as session:
        await ring_ctl.ring_cycle(api, session, kube.objects[f"{RINGS}/lis"], state)
    ring: dict[str, Any] = kube.objects[f"{RINGS}/lis"]
    return ring


def _ready(ring: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in ring["status"]["conditions"] if c["type"] == "Ready")
    return found


def _lab(kube: FakeKube) -> dict[str, Any]:
    cfg = json.loads(kube.objects[f"{SECRETS}/lis-sync"]["stringData"]["ring.json"])
    lab: dict[str, Any] = cfg["members"]["lab"]
    return lab


async def test_an_unlabelled_secret_is_named_and_never_read(
        kube: FakeKube, values_read: list[str]) -> None:
    events = _events()
    _setup(kube, "lab-sync")
    _secret(kube, "lab-sync", {"password": PASSWORD})
    state = ring_ctl._State()
    for _ in range(2):
        ring = await _cycle(kube, state)
    ready = _ready(ring)
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotLabelled")
    assert "Secret lab-sync" in ready["message"]
    assert "ringkeeper.io/ring=lis" in ready["message"]
    assert "lab-sync" not in values_read
    assert _lab(kube)["dsn"] is None
    assert PASSWORD not in json.dumps(kube.objects[f"{SECRETS}/lis-sync"])
    warned = []
    while not events.empty():
        e = events.get_nowait()
        if e.type == "Warning":
            warned.append(e.reason)
    assert warned.count("SecretNotLabelled") == 1  # told once over two cycles


async def test_the_campus_superuser_secret_is_refused_even_when_labelled(
        kube: FakeKube, values_read: list[str]) -> None:
    _events()
    _setup(kube, "east-superuser")
    _secret(kube, "east-superuser", {"username": "postgres", "password": "root-of-all"},
            {"ringkeeper.io/ring": "lis"})
    ring = await _cycle(kube, ring_ctl._State())
    ready = _ready(ring)
    assert (ready["status"], ready["reason"]) == ("False", "SecretGeneratedByOperator")
    assert "east-superuser" not in values_read
    assert _lab(kube)["dsn"] is None
    assert "root-of-all" not in json.dumps(kube.objects[f"{SECRETS}/lis-sync"])


async def test_a_labelled_secret_gives_a_verify_full_dsn(
        kube: FakeKube, values_read: list[str]) -> None:
    _events()
    _setup(kube, "lab-sync")
    _secret(kube, "lab-sync", {"password": PASSWORD}, {"ringkeeper.io/ring": "lis"})
    ring = await _cycle(kube, ring_ctl._State())
    assert _ready(ring)["reason"] not in ("SecretNotLabelled", "SecretGeneratedByOperator")
    assert sorted(values_read) == ["lab-ca", "lab-sync"]
    lab = _lab(kube)
    assert lab["ca"] == CA
    t = parse_dsn(lab["dsn"])
    assert (t.host, t.port, t.user, t.password, t.database, t.sslmode) == (
        "lab.partner.example.org", 6432, "ringkeeper_sync", PASSWORD, "lis",
        SslMode.VERIFY_FULL)

"""A heterogeneous ring through the operator: three Campuses on PostgreSQL 15, 17 and 18,
one ReplicationRing, writes at every campus, and the same data everywhere."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import yaml

from e2e.campus_helpers import campus_yaml, install_operator, secret, wait_ready
from e2e.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster

CAMPUSES = {"east": "15", "west": "17", "north": "18"}
SCHEMA = ("CREATE SCHEMA IF NOT EXISTS lis; CREATE TABLE IF NOT EXISTS lis.samples ("
          "id bigint PRIMARY KEY, campus text NOT NULL, status text, result numeric(10,2), "
          "collected_at timestamptz NOT NULL DEFAULT '2026-01-01')")


def ring_yaml() -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": "lis"},
        "spec": {"members": [{"name": c, "campusRef": {"name": c}} for c in CAMPUSES],
                 "tables": {"include": ["lis.*"]}, "lagAlertSeconds": 30,
                 # Every minute, so the test sees the operator run one.
                 "verification": {"schedule": "* * * * *", "mode": "full"}}})


async def _connect(cluster: Cluster, ns: str, campus: str) -> asyncpg.Connection:
    st = cluster.get("-n", ns, "campus", campus)["status"]
    ip = next(i["podIP"] for i in st["instances"] if i["name"] == st["currentPrimary"])
    pw = secret(cluster, ns, f"{campus}-superuser", "password")
    conn: asyncpg.Connection = await asyncpg.connect(host=ip, port=5432, user="postgres",
                                                     password=pw, database="app", timeout=5)
    return conn


async def _checksum(cluster: Cluster, ns: str, campus: str) -> str:
    conn = await _connect(cluster, ns, campus)
    try:
        return str(await conn.fetchval(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY id)),"
            " '') FROM lis.samples t"))
    finally:
        await conn.close()


def _ring(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(cluster.get("-n", ns, "replicationring", "lis").get("status") or {})


async def test_ring_of_three_majors_through_the_operator(cluster: Cluster, namespace: str
                                                         ) -> None:
    ns = namespace
    install_operator(cluster, ns)
    for name, major in CAMPUSES.items():
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml(
            name, major, 1, synchronous={"number": 0, "dataDurability": "preferred"}))
    for name in CAMPUSES:
        await asyncio.to_thread(wait_ready, cluster, ns, name, 180, False)
        conn = await _connect(cluster, ns, name)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=ring_yaml())

    def ready() -> dict[str, Any] | None:
        st = _ring(cluster, ns)
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        return st if conds.get("Ready") == "True" else None

    st = await asyncio.to_thread(wait_for, "ring Ready", ready, 180)
    assert st["healthyLinks"] == "3/3"
    assert {(lk["from"], lk["to"]) for lk in st["links"]} == {
        ("north", "east"), ("east", "west"), ("west", "north")}

    for i, name in enumerate(CAMPUSES):
        conn = await _connect(cluster, ns, name)
        try:
            await conn.execute(
                "INSERT INTO lis.samples (id, campus, status, result) "
                f"SELECT {i} * 1000 + g, $1, 'new', g / 3.0 FROM generate_series(1, 200) g",
                name)
            await conn.execute("UPDATE lis.samples SET status = 'checked' WHERE id = $1",
                               i * 1000 + 7)
        finally:
            await conn.close()

    async def converged() -> set[str] | None:
        sums = {await _checksum(cluster, ns, c) for c in CAMPUSES}
        return sums if len(sums) == 1 and next(iter(sums)).startswith("600:") else None

    deadline = asyncio.get_running_loop().time() + 90
    while (await converged()) is None:
        assert asyncio.get_running_loop().time() < deadline, "campuses did not converge"
        await asyncio.sleep(1)

    # What a platform team sees: columns, Events, the sidecar's metrics.
    out = cluster.kubectl("-n", ns, "get", "replicationring", "lis").stdout
    assert "3/3" in out.splitlines()[1], out
    events = cluster.kubectl("-n", ns, "get", "events", "--field-selector",
                             "involvedObject.kind=ReplicationRing").stdout
    assert "LinkStreaming" in events
    secret_names = {s["metadata"]["name"] for s in cluster.get("-n", ns, "secrets")["items"]}
    assert {"east-ring", "west-ring", "north-ring", "lis-sync"} <= secret_names

    # The scheduled verification (cron in spec.verification) runs in the operator.
    def verified() -> dict[str, Any] | None:
        last = _ring(cluster, ns).get("lastVerification") or {}
        if last.get("result") == "Passed" and (last.get("rowsCompared") or 0) < 600:
            return None  # a run from before the rows above were written: wait for the next
        return last if last.get("result") in ("Passed", "Failed", "Error") else None

    last = await asyncio.to_thread(wait_for, "a scheduled verification", verified, 150)
    assert last["result"] == "Passed", last
    assert last["differences"] == 0 and last["rowsCompared"] >= 600

    # Continuous verification (on by default) and the Diverged condition.
    def diverged(status: str) -> Any:
        def check() -> dict[str, Any] | None:
            d = next((c for c in _ring(cluster, ns).get("conditions") or []
                      if c["type"] == "Diverged"), None)
            return d if d and d["status"] == status else None
        return check

    d = await asyncio.to_thread(wait_for, "Diverged False", diverged("False"), 60)
    assert d["reason"] == "Converged", d
    # A row deleted at west behind the ring's back (the stock-sync origin is never
    # forwarded): the next run (the full one each minute, or an incremental pass) sees it.
    conn = await _connect(cluster, ns, "west")
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_replication_origin_session_setup('rk_lis__seed')")
            await conn.execute("DELETE FROM lis.samples WHERE id = 1007")
    finally:
        await conn.close()
    d = await asyncio.to_thread(wait_for, "Diverged True", diverged("True"), 150)
    assert d["reason"] == "KeysDiffer" and "lis.samples (1)" in d["message"], d
    ready = next(c for c in _ring(cluster, ns)["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Diverged"), ready
    events = cluster.kubectl("-n", ns, "get", "events", "--field-selector",
                             "involvedObject.kind=ReplicationRing,reason=Diverged").stdout
    assert "Diverged" in events, events

"""The hospital example's Satellite on the local cluster, from `kubectl apply` (issue 17,
step 1): refused with a clear condition while its parent is missing or in no ring, then a
one-instance database that reaches Ready and takes writes through `<satellite>-rw`.
Sync with the parent is tested on local servers (tests/integration/test_satellite_sync.py);
this ring never streams (one member does not exist), so nothing here claims it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from conftest import EXAMPLES, load_docs
from e2e.campus_helpers import campus_yaml, endpoints, install_operator, secret
from e2e.conftest import Cluster, wait_for


def _example() -> dict[str, Any]:
    (sat,) = [d for d in load_docs(EXAMPLES / "hospital-group" / "satellite.yaml")
              if d["kind"] == "Satellite"]
    del sat["metadata"]["namespace"]
    return dict(sat)


def _ready(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    st = cluster.get("-n", ns, "satellite", name).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})


def _wait_reason(cluster: Cluster, ns: str, name: str, status: str, reason: str,
                 timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        f"satellite {name} Ready={status} {reason}",
        lambda: (c := _ready(cluster, ns, name)).get("reason") == reason
        and c.get("status") == status and c, timeout=timeout)
    return found


def _apply(cluster: Cluster, ns: str, doc: dict[str, Any] | str, tmp: Path) -> None:
    path = tmp / "obj.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    cluster.kubectl("-n", ns, "apply", "-f", str(path))


def _events(cluster: Cluster, ns: str, name: str) -> set[str]:
    items = cluster.get("-n", ns, "events", "--field-selector",
                        f"involvedObject.kind=Satellite,involvedObject.name={name}")["items"]
    return {e["reason"] for e in items}


async def _write_and_read(host: str, password: str) -> list[str]:
    conn = await asyncpg.connect(host=host, port=5432, user="app", password=password,
                                 database="app", timeout=5)
    try:
        await conn.execute("CREATE TABLE specimen (id int PRIMARY KEY, site text)")
        await conn.execute("INSERT INTO specimen VALUES (1, 'XD'), (2, 'FY')")
        return [r["site"] for r in await conn.fetch("SELECT site FROM specimen ORDER BY id")]
    finally:
        await conn.close()


def test_example_satellite_runs(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    ns = namespace
    install_operator(cluster, ns)
    orphan = {**_example(), "metadata": {"name": "orphan"}}
    orphan["spec"] = {**orphan["spec"], "parentRef": {"name": "nowhere"}}
    _apply(cluster, ns, orphan, tmp_path)
    _apply(cluster, ns, campus_yaml("fuyang", "17", instances=1, synchronous={"number": 0,
                                                               "dataDurability": "preferred"}),
           tmp_path)
    _apply(cluster, ns, _example(), tmp_path)

    missing = _wait_reason(cluster, ns, "orphan", "False", "ParentMissing")
    assert "'nowhere' does not exist" in missing["message"]
    lonely = _wait_reason(cluster, ns, "xindeng", "False", "ParentNotInRing")
    assert "in no ReplicationRing" in lonely["message"]
    for name in ("orphan", "xindeng"):  # refused: nothing deployed, nothing claimed
        assert cluster.kubectl("-n", ns, "get", "statefulset", name,
                               check=False).returncode != 0
    assert "ParentNotInRing" in _events(cluster, ns, "xindeng")

    ring: dict[str, Any] = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": "lis-ring"},
            "spec": {"members": [{"name": "fuyang", "campusRef": {"name": "fuyang"}},
                                 {"name": "yuecheng", "campusRef": {"name": "yuecheng"}}]}}
    _apply(cluster, ns, ring, tmp_path)
    ready = _wait_reason(cluster, ns, "xindeng", "True", "InstanceReady", timeout=240)
    assert "syncs through the sync sidecar of 'fuyang'" in ready["message"]
    sat = cluster.get("-n", ns, "satellite", "xindeng")
    st = sat["status"]
    # yuecheng never exists, so fuyang's ring never streams and nothing reaches the
    # satellite: its phase comes from the parent's report (core.satsync), never Online.
    assert st["phase"] in ("Initializing", "Offline", "Syncing"), st
    assert st["currentPrimary"] == "xindeng-0"
    assert st["observedGeneration"] == sat["metadata"]["generation"]
    sts = cluster.get("-n", ns, "statefulset", "xindeng")
    assert sts["spec"]["replicas"] == 1
    (owner,) = sts["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("Satellite", sat["metadata"]["uid"])
    assert {"InstanceReady", "PrimaryReady", "SecretGenerated"} <= _events(cluster, ns,
                                                                           "xindeng")
    # The campus's HA loop selects pods by its own label and never sees the satellite's.
    assert not cluster.get("-n", ns, "pods", "-l", "ringkeeper.io/campus=xindeng")["items"]

    rw = wait_for("xindeng-rw endpoint", lambda: endpoints(cluster, ns, "xindeng-rw"))
    assert len(rw) == 1
    password = secret(cluster, ns, "xindeng-app", "password")
    assert asyncio.run(_write_and_read(rw[0], password)) == ["XD", "FY"]

    # The ring drops the parent: Ready says so again (the database keeps running).
    ring["spec"]["members"][0] = {"name": "wangjiangshan",
                                  "campusRef": {"name": "wangjiangshan"}}
    _apply(cluster, ns, ring, tmp_path)
    _wait_reason(cluster, ns, "xindeng", "False", "ParentNotInRing")

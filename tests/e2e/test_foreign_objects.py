"""The operator takes over nothing it did not make, and says so once (issue 13, findings 3, 4).

On the real local control plane with the operator installed by Helm: a hand-made
Service `victim-rw` blocks Campus `victim` (ForeignObject, one Event, no
StatefulSet, no Secrets); a hand-made Secret `payroll-sync` survives a ring named
`payroll` and its deletion; of two rings over one Campus the one that claimed it
first keeps it and the other is told CampusInAnotherRing. No Campus here gets
pods: the blocked Campus never has a StatefulSet.
"""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from e2e.campus_helpers import campus_yaml, install_operator
from e2e.conftest import Cluster, wait_for


def _conditions(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, dict[str, Any]]:
    st = cluster.get("-n", ns, kind, name).get("status") or {}
    return {c["type"]: c for c in st.get("conditions") or []}


def _warnings(cluster: Cluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    events = cluster.get("-n", ns, "events")["items"]
    return [e for e in events if e["involvedObject"].get("name") == name
            and e.get("reason") == reason]


def _ring(name: str, campuses: list[str]) -> str:
    return yaml.safe_dump({
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
        "metadata": {"name": name},
        "spec": {"topology": "ring",
                 "members": [{"name": c, "campusRef": {"name": c}} for c in campuses]}})


def test_foreign_objects_are_refused_once_and_left_alone(cluster: Cluster,
                                                         namespace: str) -> None:
    ns = namespace
    release = install_operator(cluster, ns)
    try:
        cluster.kubectl("-n", ns, "create", "service", "clusterip", "victim-rw",
                        "--tcp=5432:5432")
        cluster.kubectl("-n", ns, "create", "secret", "generic", "payroll-sync",
                        "--from-literal=db=salaries")
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=campus_yaml("victim", "17", 2))

        def refused() -> dict[str, Any] | None:
            c = _conditions(cluster, ns, "campus", "victim").get("Reconciled")
            return c if c and c["reason"] == "ForeignObject" else None

        cond = wait_for("Campus victim refused", refused, timeout=90)
        assert "Service victim-rw" in cond["message"]
        ready = _conditions(cluster, ns, "campus", "victim")["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "ForeignObject")
        # Nothing was written for victim: no StatefulSet, no generated Secrets, and the
        # hand-made Service carries no owner reference.
        assert cluster.kubectl("-n", ns, "get", "statefulset", "victim",
                               check=False).returncode != 0
        assert cluster.kubectl("-n", ns, "get", "secret", "victim-superuser",
                               check=False).returncode != 0
        svc = cluster.get("-n", ns, "service", "victim-rw")
        assert not svc["metadata"].get("ownerReferences")

        # Two rings over Campus victim (and a Campus that does not exist).
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring("ring-a", ["victim", "ghost"]))
        wait_for("ring-a to claim victim", lambda: cluster.kubectl(
            "-n", ns, "get", "secret", "victim-ring", check=False).returncode == 0, timeout=60)
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring("ring-b", ["victim", "ghost"]))
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring("payroll", ["ghost", "north"]))

        def in_other_ring() -> dict[str, Any] | None:
            c = _conditions(cluster, ns, "replicationring", "ring-b").get("Ready")
            return c if c and c["reason"] == "CampusInAnotherRing" else None

        cond = wait_for("ring-b refused", in_other_ring, timeout=60)
        assert "ring ring-a" in cond["message"]
        owner = cluster.get("-n", ns, "secret", "victim-ring")["metadata"]["ownerReferences"]
        assert [o["name"] for o in owner] == ["ring-a"]

        def payroll_refused() -> dict[str, Any] | None:
            c = _conditions(cluster, ns, "replicationring", "payroll").get("Ready")
            return c if c and c["reason"] == "ForeignObject" else None

        cond = wait_for("ring payroll refused", payroll_refused, timeout=60)
        assert "Secret payroll-sync" in cond["message"]

        # Let several timer passes and ring cycles go by: still one Event each.
        time.sleep(65)
        assert len(_warnings(cluster, ns, "victim", "ForeignObject")) == 1
        assert len(_warnings(cluster, ns, "ring-b", "CampusInAnotherRing")) == 1
        assert len(_warnings(cluster, ns, "payroll", "ForeignObject")) == 1
        assert not _warnings(cluster, ns, "victim", "SecretGenerated")

        # ring-a lets victim go: it deletes its victim-ring, and ring-b claims victim.
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=_ring("ring-a", ["ghost", "west"]))

        def claimed_by_b() -> bool:
            res = cluster.kubectl("-n", ns, "get", "secret", "victim-ring", "-o", "json",
                                  check=False)
            if res.returncode != 0:
                return False
            refs = json.loads(res.stdout)["metadata"].get("ownerReferences") or []
            return [o["name"] for o in refs] == ["ring-b"]

        wait_for("ring-b to claim victim", claimed_by_b, timeout=60)
        assert _warnings(cluster, ns, "ring-a", "CampusReleased")

        # Deleting the ring leaves the hand-made Secret exactly as it was.
        cluster.kubectl("-n", ns, "delete", "replicationring", "payroll", "--wait=true",
                        "--timeout=60s")
        time.sleep(3)
        sec = cluster.get("-n", ns, "secret", "payroll-sync")
        assert not sec["metadata"].get("ownerReferences")
        assert set(sec["data"]) == {"db"}

        # The way out: remove the hand-made Service, and the Campus reconciles.
        cluster.kubectl("-n", ns, "delete", "service", "victim-rw")
        cluster.kubectl("-n", ns, "annotate", "campus", "victim", "test/nudge=1")
        wait_for("Campus victim reconciled", lambda: (_conditions(
            cluster, ns, "campus", "victim").get("Reconciled") or {}).get("status") == "True",
            timeout=150)
        svc = cluster.get("-n", ns, "service", "victim-rw")
        assert svc["metadata"]["ownerReferences"][0]["kind"] == "Campus"
    finally:
        for kind in ("replicationrings", "campuses"):
            cluster.kubectl("-n", ns, "delete", kind, "--all", "--wait=true", "--timeout=60s",
                            check=False, timeout=90)
        cluster.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s", check=False)

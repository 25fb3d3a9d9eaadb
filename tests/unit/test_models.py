"""Model rules, table-driven: each case is one thing a user might write."""

from __future__ import annotations

from typing import Any

import pytest

from ringkeeper.api.v1alpha1 import Campus, CampusSpec, ReplicationRingSpec
from ringkeeper.api.validation import validate


def campus(**spec: Any) -> dict[str, Any]:
    body = {"engine": "postgresql", "version": "17", **spec}
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": "c1"}, "spec": body}


def ring(*members: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": "r"}, "spec": {"members": list(members), **spec}}


def member(name: str, campus: str | None = None) -> dict[str, Any]:
    return {"name": name, "campusRef": {"name": campus or name}}


def test_defaults_are_safe() -> None:
    spec = CampusSpec.model_validate({"engine": "postgresql", "version": "17"})
    assert spec.instances == 3
    assert spec.synchronous.number == 1
    assert spec.synchronous.data_durability == "required"
    assert spec.failover.self_fence_after_seconds < spec.failover.detection_delay_seconds
    assert spec.tls.enabled


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param(campus(instances=1), "synchronous.number must be below instances",
                     id="single-instance-needs-async"),
        pytest.param(campus(instances=1, synchronous={"number": 0}),
                     "dataDurability required needs synchronous.number of at least 1",
                     id="required-durability-without-standby"),
        pytest.param(campus(failover={"healthCheckPeriodSeconds": 9, "detectionDelaySeconds": 5}),
                     "healthCheckPeriodSeconds must not exceed", id="slow-health-checks"),
        pytest.param(campus(engine="kingbase", version="17"),
                     "version must look like V8R6 or V9R1", id="kingbase-with-pg-version"),
        pytest.param(campus(parameters={"port": "6543"}), "parameters may not set port",
                     id="port-is-managed"),
        pytest.param(campus(storage={"size": "lots"}), "spec.storage.size: Invalid value",
                     id="bad-quantity"),
        pytest.param(ring(member("a"), member("a", "b")), "member names must be unique",
                     id="duplicate-member-name"),
        pytest.param(ring(member("a"), {"name": "b"}),
                     "each ring member names exactly one of campusRef or external",
                     id="member-without-target"),
        pytest.param(ring(member("a"), member("b"), tables={"include": ["no_dot"]}),
                     "spec.tables.include[0]: Invalid value", id="table-pattern"),
        pytest.param(ring(member("a"), member("b"), verification={"schedule": "every day"}),
                     "spec.verification.schedule: Invalid value", id="bad-cron"),
    ],
)
def test_rejected(doc: dict[str, Any], message: str) -> None:
    text = "\n".join(str(p) for p in validate(doc))
    assert message in text, text


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(campus(instances=1, synchronous={"number": 0, "dataDurability": "preferred"}),
                     id="single-instance-async"),
        pytest.param(campus(engine="kingbase", version="V8R6"), id="kingbase"),
        pytest.param(campus(displayName="望江山院区", parameters={"work_mem": "64MB"}),
                     id="unicode-and-free-parameter"),
        pytest.param(ring(member("a"), member("b"), topology="mesh"), id="mesh"),
        pytest.param(ring(member("a"), member("b"),
                          verification={"schedule": "@daily", "mode": "full"}), id="macro-cron"),
    ],
)
def test_accepted(doc: dict[str, Any]) -> None:
    assert validate(doc) == []


def test_wire_round_trip_keeps_camel_case() -> None:
    obj = Campus.model_validate(campus(failover={"detectionDelaySeconds": 8}))
    wire = obj.to_wire()
    assert wire["spec"]["failover"]["detectionDelaySeconds"] == 8
    assert Campus.model_validate(wire) == obj


def test_python_and_cel_share_rule_sentences() -> None:
    rules = {r.message for r in ReplicationRingSpec.rules}
    assert "a ring needs at least two distinct members" in rules

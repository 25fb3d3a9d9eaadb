"""spec.target.kind Satellite at admission, run by the API server's own code (hack/celcheck),
and in Python (`ringkeeper validate`, the operator's model): both refuse a Satellite target
with any scenario but networkPartition, with the same sentence, and accept the same Drills
for every kind and scenario. Whether the Satellite exists, its parent is in a ring and it
keeps the drill's table is only known at run time (tests/unit/test_drill_satellite.py).
Skips, saying why, without Go or its module cache."""

from __future__ import annotations

from typing import Any

from test_drill_campus_cel import admission, celcheck, python_errors

__all__ = ["celcheck"]  # the module-scoped fixture, shared

KINDS = ("Campus", "ReplicationRing", "Satellite")
SCENARIOS = ("primaryKill", "networkPartition", "campusLoss", "syncCrash")
SENTENCE = "a Satellite target takes scenario networkPartition only"


def drill(kind: str, scenario: str, campus: str | None) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": kind, "name": "xiaoshan-clinic"}
    if campus is not None:
        target["campus"] = campus
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Drill", "metadata": {"name": "d"},
            "spec": {"target": target, "scenario": scenario}}


def test_admission_and_python_agree_on_satellite_targets(celcheck: Any) -> None:
    cases = [(k, s, c) for k in KINDS for s in SCENARIOS for c in (None, "fuyang")]
    results = admission(celcheck, [drill(*c) for c in cases])
    for (kind, scenario, campus), server in zip(cases, results, strict=True):
        mine = python_errors(drill(kind, scenario, campus))
        assert bool(server) == bool(mine), (kind, scenario, campus, server, mine)
        said_there = any(SENTENCE in e for e in server)
        assert said_there == (kind == "Satellite" and scenario != "networkPartition")
        if campus is None and scenario in ("primaryKill", "networkPartition"):
            # one rule at play: Python says the same sentence (it stops at the first
            # rule that fails, the API server lists every one)
            assert (SENTENCE in " ".join(mine)) == said_there, (kind, scenario, mine)
    accepted = {c for c, r in zip(cases, results, strict=True) if not r}
    assert ("Satellite", "networkPartition", None) in accepted
    assert ("Satellite", "networkPartition", "fuyang") not in accepted
    assert ("Satellite", "primaryKill", None) not in accepted
    assert ("ReplicationRing", "networkPartition", None) in accepted
    assert ("Campus", "primaryKill", None) in accepted

"""spec.target.campus at admission, run by the API server's own code (hack/celcheck), and
in Python (`ringkeeper validate`, the operator's model): both refuse the same Drills with
the same sentence (a campus named for a scenario that does not use it; a name no Campus
can have) and accept the same. Whether the name is a member of the ring is only known at
run time: the planner refuses it there (tests/unit/test_drill_plan.py, CampusNotInRing).
Skips, saying why, without Go or its module cache."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import celtool
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import BY_KIND, Drill

SCENARIOS = ("primaryKill", "networkPartition", "campusLoss", "syncCrash")
NAMES = ("yuecheng", "a", "fu-yang2", "a" * 40, "a" * 41, "Yuecheng", "1st", "yue_cheng",
         "yuecheng-", "-x", "", "zhao hui", "zhaohui\n", "zhaohui'--", "朝晖", "x.y")


def drill(scenario: str, campus: str | None) -> dict[str, Any]:
    kind = "Campus" if scenario == "primaryKill" else "ReplicationRing"
    target: dict[str, Any] = {"kind": kind, "name": "lis-ring"}
    if campus is not None:
        target["campus"] = campus
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Drill", "metadata": {"name": "d"},
            "spec": {"target": target, "scenario": scenario}}


def python_errors(doc: dict[str, Any]) -> list[str]:
    try:
        Drill.model_validate(doc)
    except (ValidationError, ValueError) as exc:
        return [str(exc)]
    return []


@pytest.fixture(scope="module")
def celcheck(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("celcheck")
    binary = celtool.binary(out)
    crd = out / "drill.yaml"
    crd.write_text(crdgen.render(BY_KIND["Drill"]), encoding="utf-8")
    return binary, crd


def admission(tool: tuple[Path, Path], docs: list[dict[str, Any]]) -> list[list[str]]:
    binary, crd = tool
    res = subprocess.run([str(binary), str(crd)],
                         input="".join(json.dumps(d) + "\n" for d in docs),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.split("\n") if line]
    assert len(out) == len(docs)
    return out


def test_admission_and_python_agree_on_target_campus(celcheck: tuple[Path, Path]) -> None:
    cases = [(s, n) for s in SCENARIOS for n in (None, *NAMES)]
    results = admission(celcheck, [drill(s, n) for s, n in cases])
    refused_somewhere = 0
    for (scenario, name), server in zip(cases, results, strict=True):
        mine = python_errors(drill(scenario, name))
        assert bool(server) == bool(mine), (scenario, name, server, mine)
        refused_somewhere += bool(server)
        if name is not None and scenario in ("primaryKill", "networkPartition") and server:
            # a well-formed name: the scenario rule speaks, with one sentence on both sides
            sentence = "target.campus picks the campus a campusLoss or syncCrash strikes"
            well_formed = not any("should match" in e or "Too long" in e or "at least" in e
                                  for e in server)
            if well_formed:
                assert any(sentence in e for e in server), server
                assert sentence in mine[0], mine
    # the table is not all-accepting or all-refusing
    assert 0 < refused_somewhere < len(cases)
    accepted = [c for c, r in zip(cases, results, strict=True) if not r]
    assert ("campusLoss", "yuecheng") in accepted and ("syncCrash", "a" * 40) in accepted
    assert ("networkPartition", "yuecheng") not in accepted
    assert ("campusLoss", "a" * 41) not in accepted and ("syncCrash", "1st") not in accepted

"""The demo's closing summary (tools/devcluster demosummary.summarize): every figure it
prints comes from the objects read back, and each kind of failure (a drill that failed,
a lost commit, a lost count never measured, a link not streaming, a failed or missing
verification) makes it say FAILED and the demo exit 1."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core.verify import KeyDifference
from ringkeeper.core.verify_report import Report, TableReport
from ringkeeper_devcluster.demosummary import Facts, summarize


def _drill(ns: str, name: str, kind: str, target: str, scenario: str,
           **run: Any) -> dict[str, Any]:
    last = {"result": "Passed", "reason": "Passed", "rtoSeconds": 4.25,
            "lostTransactions": 0, "committedTransactions": 312, **run}
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"target": {"kind": kind, "name": target}, "scenario": scenario},
            "status": {"phase": last["result"], "lastRun": last}}


RING = {"metadata": {"namespace": "lis", "name": "lis-ring"},
        "spec": {"members": [{"name": m, "campusRef": {"name": m}} for m in ("fy", "xs")]},
        "status": {"links": [
            {"from": "fy", "to": "xs", "state": "Streaming", "lagSeconds": 0.12,
             "lagBytes": 0},
            {"from": "xs", "to": "fy", "state": "Streaming", "lagSeconds": 0.3,
             "lagBytes": 128}]}}


def _verify(diffs: int = 0) -> Report:
    t = TableReport(table="lis.samples", key_columns=["id"], mode="full",
                    differences=[KeyDifference.model_validate(
                        {"table": "lis.samples", "key": ["1"], "reference": "fy",
                         "missing_on": ["xs"]}) for _ in range(diffs)] if diffs else [])
    return Report(mode="full", members=["fy", "xs"], reference="fy",
                  started_at=datetime(2026, 12, 1, tzinfo=UTC), tables=[t])


def _facts() -> Facts:
    return Facts(
        drills=[_drill("demo", "kill-now", "Campus", "zhaohui", "primaryKill"),
                _drill("lis", "split", "ReplicationRing", "lis-ring", "networkPartition",
                       rtoSeconds=1.5, committedTransactions=120)],
        campuses={("demo", "zhaohui"): None,
                  ("lis", "fy"): {"status": {"currentPrimary": "fy-1"}},
                  ("lis", "xs"): {"status": {"currentPrimary": "xs-1"}}},
        rings=[RING], verify=_verify(), verify_path="/tmp/v.json",
        pictures=["/tmp/kill.svg"])


def test_summary_of_a_good_demo() -> None:
    lines, problems = summarize(_facts())
    text = "\n".join(lines)
    print(text)
    assert problems == []
    assert "result: OK" in text
    row = next(x for x in lines if x.strip().startswith("zhaohui"))
    assert "(removed)" in row and "kill-now (primaryKill)" in row and "4.25 s" in row
    assert row.rstrip().endswith("0 of 312")
    fy = next(x for x in lines if x.strip().startswith("fy "))
    assert "fy-1" in fy and "1.50 s" in fy and "0 of 120" in fy
    assert any("xs -> fy" in x and "Streaming" in x and "0.30 s, 128 B" in x for x in lines)
    assert "verification: Passed: 1 table(s) compared at 2 members" in text
    assert "kubectl ringkeeper drill report split -n lis" in text and "/tmp/kill.svg" in text


def _lost(f: Facts) -> None:
    f.drills[1]["status"]["lastRun"]["lostTransactions"] = 1


def _unmeasured(f: Facts) -> None:
    f.drills[0]["status"]["lastRun"]["lostTransactions"] = None


def _failed(f: Facts) -> None:
    f.drills[0]["status"]["lastRun"].update(result="Failed", reason="RtoExceeded")


def _link(f: Facts) -> None:
    f.rings[0]["status"]["links"][1]["state"] = "Down"


def _verify_failed(f: Facts) -> None:
    f.verify = _verify(diffs=2)


def _no_verify(f: Facts) -> None:
    f.verify = None


@pytest.mark.parametrize(("spoil", "said"), [
    (_lost, "lost commits 1"), (_unmeasured, "lost commits not measured"),
    (_failed, "Failed: RtoExceeded"), (_link, "xs -> fy is Down"),
    (_verify_failed, "verification failed: 2"), (_no_verify, "no verification report"),
])
def test_each_failure_makes_the_summary_fail(spoil: Any, said: str) -> None:
    f = _facts()
    f.rings = copy.deepcopy(f.rings)
    spoil(f)
    lines, problems = summarize(f)
    assert problems and any(said in p for p in problems), problems
    assert "result: FAILED" in lines[-1] and said in lines[-1]

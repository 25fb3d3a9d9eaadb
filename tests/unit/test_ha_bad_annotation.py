"""A malformed ringkeeper.io/fenced-instances annotation neither crashes the HA cycle nor
holds up failover: it is reported (AnnotationsValid=False, InvalidAnnotation) and ignored.

Runs the real ha_cycle against tests/fakekube.py (an API server over real HTTP on
127.0.0.1); only run_failover is replaced by a recorder, since what it does is not
the question here, only whether the cycle gets to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fakekube import FakeKube, serve
from ringkeeper.adapters.kube import api_client
from ringkeeper.controller import campus as campus_ctl
from ringkeeper.controller.failover import FailoverOutcome

NS = "ns"
CAMPUS = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses/zhaohui"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKube]:
    async with serve() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path)))
        yield fake


def _campus(kube: FakeKube, fenced: str | None, fenced_status: list[str]) -> dict[str, Any]:
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    meta: dict[str, Any] = {"name": "zhaohui", "namespace": NS}
    if fenced is not None:
        meta["annotations"] = {"ringkeeper.io/fenced-instances": fenced}
    return kube.put(CAMPUS, {
        "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus", "metadata": meta,
        "spec": {"engine": "postgresql", "version": "17", "instances": 3,
                 "failover": {"detectionDelaySeconds": 5}},
        "status": {"currentPrimary": "zhaohui-0", "targetPrimary": "zhaohui-0",
                   "fencedInstances": fenced_status,
                   "failingSince": long_ago.isoformat().replace("+00:00", "Z")}})


async def _cycle(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reasons: list[str] = []

    async def failover(**kw: Any) -> FailoverOutcome:
        reasons.append(kw["reason"])
        return FailoverOutcome(promoted="zhaohui-1", election=None, message="promoted")

    monkeypatch.setattr(campus_ctl, "run_failover", failover)
    async with await api_client() as api:
        # The primary's agent does not answer (no pods): the primary has failed.
        await campus_ctl.ha_cycle(api, object(), kube.objects[CAMPUS], 0.0)  # type: ignore[arg-type]
    return reasons


@pytest.mark.parametrize("bad", ["zhaohui-2", "[zhaohui-2", '{"a": 1}', "[1, null]",
                                 '["zhaohui-7"]'])
async def test_bad_annotation_reported_and_failover_still_runs(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    _campus(kube, bad, ["zhaohui-2"])
    reasons = await _cycle(kube, monkeypatch)
    assert reasons == ["primary failed: agent of zhaohui-0 unreachable"]
    status = kube.objects[CAMPUS]["status"]
    (cond,) = [c for c in status["conditions"] if c["type"] == "AnnotationsValid"]
    assert (cond["status"], cond["reason"]) == ("False", "InvalidAnnotation")
    assert cond["message"].startswith("ringkeeper.io/fenced-instances: ")
    assert status["fencedInstances"] == ["zhaohui-2"], "the last good list is kept"


async def test_good_annotation_is_applied_and_condition_cleared(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    _campus(kube, "nope", [])
    await _cycle(kube, monkeypatch)
    kube.objects[CAMPUS]["metadata"]["annotations"] = {
        "ringkeeper.io/fenced-instances": '["zhaohui-1"]'}
    await _cycle(kube, monkeypatch)
    status = kube.objects[CAMPUS]["status"]
    assert status["fencedInstances"] == ["zhaohui-1"]
    (cond,) = [c for c in status["conditions"] if c["type"] == "AnnotationsValid"]
    assert cond["status"] == "True"


async def test_fence_cli_replaces_a_malformed_annotation(
        kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    from ringkeeper.cli import campus_ops

    _campus(kube, "\x1b[31mzhaohui-2", ["zhaohui-2"])
    args = argparse.Namespace(kubeconfig=str(tmp_path / "kubeconfig"), namespace=NS,
                              campus="zhaohui", instance="zhaohui-1")
    assert await campus_ops._fence(args, True) == 0
    written = kube.objects[CAMPUS]["metadata"]["annotations"]["ringkeeper.io/fenced-instances"]
    assert json.loads(written) == ["zhaohui-1", "zhaohui-2"]
    err = capsys.readouterr().err
    assert "replacing a malformed annotation" in err and "\x1b" not in err


async def test_bad_switchover_is_refused_quoted_and_cleared(
        kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import kopf
    from kopf._core.engines import posting

    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    campus = _campus(kube, None, [])
    campus["metadata"]["annotations"] = {
        "ringkeeper.io/switchover-to": "zhaohui-1\n\x1b[2Jfake line"}
    reasons = await _cycle(kube, monkeypatch)
    assert reasons == [], "no switchover to a name that is not an instance"
    (event,) = [queue.get_nowait() for _ in range(queue.qsize())]
    assert event.reason == "SwitchoverRefused"
    assert "\n" not in event.message and "\x1b" not in event.message
    assert "is not an instance of this campus" in event.message
    annotations = kube.objects[CAMPUS]["metadata"].get("annotations") or {}
    assert "ringkeeper.io/switchover-to" not in annotations

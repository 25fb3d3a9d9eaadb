"""SatRun.observe (controller/drill_sat.py) over a scripted Satellite status and clock: a
status written before the cut never passes for convergence; once the status showed the
cut, the first whole reading after the heal is the convergence; a cut the status never
showed converges only on a reading a full polling period after the heal."""

from __future__ import annotations

from typing import Any

import pytest

from ringkeeper.controller import drill_sat
from ringkeeper.controller.drill_sat import SatRun
from ringkeeper.controller.satellite import POLL_SECONDS
from ringkeeper.core.drill_satellite import DRILL_QUALIFIED, SatelliteTarget

WHOLE = {"connected": True, "backlogRows": 0, "conditions": [
    {"type": "Streaming", "status": "True", "reason": "BothWays"}]}
CUT = {"connected": False, "backlogRows": 40, "conditions": [
    {"type": "Streaming", "status": "False", "reason": "UpLinkStopped"}]}


class Script:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.status: dict[str, Any] = WHOLE
        self.now = 100.0

        async def read_custom(api: Any, ns: str, plural: str, name: str) -> dict[str, Any]:
            assert (plural, name) == ("satellites", "xd")
            return {"status": self.status}

        monkeypatch.setattr(drill_sat.resources, "read_custom", read_custom)
        monkeypatch.setattr(drill_sat.time, "monotonic", lambda: self.now)


def _run() -> SatRun:
    return SatRun(SatelliteTarget(name="xd", parent="fy", parent_exists=True,
                                  parent_rings=("lis",), tables=(DRILL_QUALIFIED,)),
                  fault_mono=100.0)


async def test_cut_seen_then_whole_after_the_heal(monkeypatch: pytest.MonkeyPatch) -> None:
    s, run = Script(monkeypatch), _run()
    assert await run.observe(None, "ns") == [] and not run.seen_cut  # written before the cut
    s.now, s.status = 104.0, CUT
    said = await run.observe(None, "ns")
    assert run.seen_cut and said[0][0] == "SatelliteCut"
    s.now, s.status = 110.0, WHOLE  # whole again but not healed yet: not counted
    assert await run.observe(None, "ns") == [] and run.converged_s is None
    run.healed_mono = 120.0
    s.now, s.status = 121.0, CUT
    assert await run.observe(None, "ns") == [] and run.converged_s is None
    s.now, s.status = 126.5, WHOLE
    said = await run.observe(None, "ns")
    assert said[0][0] == "SatelliteConverged" and run.converged_s == pytest.approx(6.5)


async def test_a_cut_never_shown_needs_a_fresh_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    s, run = Script(monkeypatch), _run()
    run.healed_mono = 105.0
    s.now = 106.0
    assert await run.observe(None, "ns") == [] and run.converged_s is None
    s.now = 105.0 + POLL_SECONDS + 2
    said = await run.observe(None, "ns")
    assert said and run.converged_s == pytest.approx(POLL_SECONDS + 2) and not run.seen_cut

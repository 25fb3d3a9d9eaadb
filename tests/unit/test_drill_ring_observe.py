"""RingDrill.observe (controller/drill_ring.py) over a scripted ring status: a status
written before the fault never passes for convergence (campusLoss needs to have seen the
ring broken; syncCrash a status read one status period after the stream came back)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ringkeeper.api.v1alpha1.drill import Scenario
from ringkeeper.controller import drill_ring
from ringkeeper.controller.drill_ring import STATUS_PERIOD, RingDrill, RingFacts

MEMBERS = ["north", "east", "west"]
WHOLE = [{"from": a, "to": b, "state": "Streaming"}
         for a, b in (("north", "east"), ("east", "west"), ("west", "north"))]
LOST = [{"from": "north", "to": "east", "state": "Down"},
        {"from": "east", "to": "west", "state": "Streaming"},
        {"from": "west", "to": "north", "state": "Down"},
        {"from": "west", "to": "east", "state": "CatchingUp"}]


class Script:
    """The ring's status and the clock, as the test sets them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.links: list[dict[str, Any]] = WHOLE
        self.now = 100.0
        self.streaming = False

        async def read_ring(api: Any, ns: str, name: str) -> RingFacts:
            return RingFacts(MEMBERS, {m: m for m in MEMBERS}, "ring", self.links)

        async def streaming_again(api: Any, ns: str, campus: str,
                                  killed: dict[str, list[int]]) -> bool:
            return self.streaming

        monkeypatch.setattr(drill_ring, "read_ring", read_ring)
        monkeypatch.setattr(drill_ring, "streaming_again", streaming_again)
        monkeypatch.setattr(time, "monotonic", lambda: self.now)

    async def tick(self, ring: RingDrill, seconds: float = 1.0) -> list[str]:
        self.now += seconds
        return [reason for reason, _ in await ring.observe(None, "ns")]  # type: ignore[arg-type]


async def test_campus_loss_counts_convergence_only_after_the_status_showed_the_loss(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Script(monkeypatch)
    ring = RingDrill(Scenario.CAMPUS_LOSS, "lis", "north", fault_mono=s.now,
                     bypass_needed=["west->east"])
    assert await s.tick(ring) == []  # the status still says whole: the loss not seen yet
    ring.healed_mono = s.now  # lifted before the status ever showed the loss
    assert await s.tick(ring) == []  # whole, but proves nothing
    assert ring.converged_s is None
    s.links = LOST
    assert await s.tick(ring) == []  # a bypass after the lift is not the loss's bypass
    ring.healed_mono = None  # (rewound: the fence still holds)
    assert await s.tick(ring) == ["RingBypassed"] and ring.bypass_s == pytest.approx(4.0)
    ring.healed_mono = s.now
    assert await s.tick(ring) == []  # lifted, still broken
    s.links = WHOLE
    assert await s.tick(ring, 2.0) == ["RingConverged"]
    assert ring.converged_s == pytest.approx(3.0)


async def test_sync_crash_convergence_waits_a_status_period_after_the_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Script(monkeypatch)
    ring = RingDrill(Scenario.SYNC_CRASH, "lis", "east", fault_mono=s.now,
                     killed={"west": [42], "east": [-1]})
    assert await s.tick(ring) == []  # the stream is not back
    s.streaming = True
    assert await s.tick(ring) == ["LinkStreaming"] and ring.link_back_s == pytest.approx(2.0)
    assert await s.tick(ring, STATUS_PERIOD - 0.5) == []  # the whole status may be stale
    assert await s.tick(ring, 1.0) == ["RingConverged"]
    assert ring.converged_s == pytest.approx(2.0 + STATUS_PERIOD + 0.5)


async def test_sync_crash_without_a_stream_to_end_never_claims_it_came_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Script(monkeypatch)
    s.streaming = True
    ring = RingDrill(Scenario.SYNC_CRASH, "lis", "east", fault_mono=s.now,
                     fault_error="no replication stream")
    assert await s.tick(ring, 10.0) == []
    assert ring.link_back_s is None and ring.converged_s is None

"""A drill run's memory in the operator (LiveRun) and the planner's snapshot of it.

Kept apart from the executor (drill.py): what a run holds (load, probes, proxies, the
ring fault) and how it reads as core.drill.Snapshot, without the actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.v1alpha1.drill import DrillPhase, Scenario, TargetKind
from ..base.timefmt import parse_rfc3339
from ..core.drill import DrillCampus, Measured, Snapshot, Stage
from ..core.drill_satellite import SatelliteTarget
from ..workload import Ledger
from . import drill_io as io
from .drill_ring import RingDrill
from .drill_sat import SatRun


@dataclass
class LiveRun:
    campuses: list[str]
    started: datetime
    stage: Stage = Stage.STARTED
    fault_at: datetime | None = None
    healed: bool = False
    healed_at: datetime | None = None
    ring: RingDrill | None = None  # campusLoss, syncCrash
    sat: SatRun | None = None  # networkPartition of a Satellite from its parent
    struck: list[str] = field(default_factory=list)  # the campuses the fault hit
    measured: Measured | None = None
    ledger: Ledger = field(default_factory=Ledger)
    proxies: dict[str, io.RwProxy] = field(default_factory=dict)
    probes: dict[str, io.Probe] = field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    load: asyncio.Task[Any] | None = None
    timeline: list[dict[str, str]] = field(default_factory=list)
    load_result: dict[str, Any] = field(default_factory=dict)
    check_result: dict[str, Any] = field(default_factory=dict)

    def rto(self) -> float | None:
        """Writes back at every campus (campusLoss: every other campus); syncCrash: the
        crashed sidecar's streams are back; a Satellite: its longest write gap from the
        cut (None until it wrote after the cut)."""
        if self.sat is not None:
            return self.sat.rto() if self.sat.wrote_after_fault() else None
        if self.ring is not None and self.ring.scenario == Scenario.SYNC_CRASH:
            return self.ring.link_back_s
        rtos = [p.rto for c, p in self.probes.items()
                if self.ring is None or c != self.ring.campus]
        return None if not rtos or any(r is None for r in rtos) else max(
            r for r in rtos if r is not None)

    async def close(self) -> None:
        for p in self.probes.values():
            p.stop.set()
        for w in self.sat.writers.values() if self.sat else []:
            w.stop.set()
        for t in [*self.tasks, *([self.load] if self.load else [])]:
            t.cancel()
        for t in [*self.tasks, *([self.load] if self.load else [])]:
            with contextlib.suppress(BaseException):
                await t
        for px in self.proxies.values():
            await px.close()


def snapshot_of(body: dict[str, Any], exists: bool, campuses: tuple[DrillCampus, ...],
              other: str | None, live: LiveRun | None,
              leftovers: tuple[str, ...] = (),
              satellite: SatelliteTarget | None = None) -> Snapshot:
    spec, st = body.get("spec") or {}, body.get("status") or {}
    exp, load = spec.get("expectations") or {}, spec.get("workload") or {}
    last = st.get("lastRun") or {}
    return Snapshot(
        scenario=Scenario(spec["scenario"]), target_kind=TargetKind(spec["target"]["kind"]),
        target_exists=exists, campuses=campuses, other_running=other, now=datetime.now(UTC),
        max_rto_seconds=int(exp.get("maxRtoSeconds", 600)),
        max_lost=int(exp.get("maxLostTransactions", 0)),
        load_seconds=int(load.get("durationSeconds", 120)), schedule=spec.get("schedule"),
        time_zone=spec.get("timeZone"), suspend=bool(spec.get("suspend")),
        runs=int(st.get("runs") or 0), last_started=parse_rfc3339(last.get("startedAt")),
        created=parse_rfc3339(body["metadata"].get("creationTimestamp")),
        phase_running=st.get("phase") == DrillPhase.RUNNING, leftover_faults=leftovers,
        stage=live.stage if live else None, started_at=live.started if live else None,
        fault_at=live.fault_at if live else None,
        probes_writing=bool(live and all(p.writes for p in live.probes.values())
                            and (live.sat is None or live.sat.writing)),
        recovered=bool(live and live.rto() is not None),
        healed=bool(live and live.healed), healed_at=live.healed_at if live else None,
        returned=bool(live and live.ring and live.probes[live.ring.campus].rto is not None),
        converged=bool(live and ((live.ring and live.ring.converged_s is not None) or (
            live.sat and live.sat.converged_s is not None))),
        load_done=bool(live and live.load and
                                                          live.load.done()),
        measured=live.measured if live else None,
        fault_campus=(spec["target"].get("campus") or None), satellite=satellite)


async def observe(live: LiveRun | None, api: Any, ns: str) -> list[tuple[str, str]]:
    """What a ring drill's or a Satellite partition's watch saw this tick (Events)."""
    if live is not None and live.ring is not None:
        return await live.ring.observe(api, ns)
    if live is not None and live.sat is not None:
        if live.healed_at is not None and live.sat.healed_mono is None:  # just healed
            since = (datetime.now(UTC) - live.healed_at).total_seconds()
            live.sat.healed_mono = time.monotonic() - since
        return await live.sat.observe(api, ns)
    return []

"""Run Drills: a thin executor around core.drill.plan.

One kopf daemon per Drill polls every second: snapshot (Drill, target, campuses, live
run), plan, act. A live run holds the load (workload.run through each campus's -rw; a
Satellite's writers, drill_sat.py), the RTO probes and the fault, all asyncio on kopf's
loop. The partition policy is removed when the run ends or fails, when the daemon stops,
and by the delete handler (kopf's finalizer) when the Drill is deleted mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import kopf
from kubernetes_asyncio import client

from ..adapters import resources
from ..adapters.kube import api_client
from ..adapters.resources import KubeApiError
from ..api.v1alpha1.drill import (
    HISTORY,
    REPORT_CHARS,
    TIMELINE,
    DrillPhase,
    Scenario,
    TargetKind,
)
from ..base.timefmt import rfc3339
from ..core.conditions import condition, set_condition
from ..core.drill import (
    DrillAction,
    DrillStep,
    Measured,
    Snapshot,
    Stage,
    plan,
    ring_fault_campus,
)
from ..core.drill_faults import DRILL_LABEL, partition_policy
from ..core.failures import backoff_delay, should_emit, signature
from ..core.manifests import CAMPUS_LABEL
from ..observability.metrics import DRILL_LOST, DRILL_RTO, DRILL_RUNS
from ..workload import SiteTarget
from ..workload import plan as load_plan
from ..workload import run as run_load
from . import drill_io as io
from .drill_live import LiveRun, observe, snapshot_of
from .drill_report import lost_text, report
from .drill_ring import RingDrill, fenced_campuses, unfence_all
from .drill_sat import SatRun, cut, measure_sat, read_target, sat_result, start_sat

log = logging.getLogger("ringkeeper.drill")
# (namespace, target kind, target name) -> the Drill running on it, in this process
# (only the leader runs drills, so this is the whole cluster's view).
_BUSY: dict[tuple[str, str, str], str] = {}
API_BACKOFF = 10.0


def _ns_name(body: kopf.Body) -> tuple[str, str, str]:
    meta = body["metadata"]
    return str(meta["namespace"]), str(meta["name"]), str(meta.get("uid", ""))


class Executor:
    def __init__(self, api: client.ApiClient, body: kopf.Body) -> None:
        self.api, self.body = api, body
        self.ns, self.name, self.uid = _ns_name(body)
        self.live: LiveRun | None = None
        # The Drill as last read from the API: kopf's body lags our own status patches, and
        # a stale phase Running would read as an interrupted run.
        self.fresh: dict[str, Any] = dict(body)

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        if self.live is not None:
            self.live.timeline.append({"at": rfc3339(datetime.now(UTC), micro=True),
                                       "event": reason, "message": message})
        (kopf.warn if warning else kopf.info)(self.body, reason=reason, message=message)

    async def _status(self, patch: dict[str, Any]) -> dict[str, Any]:
        self.fresh = await resources.patch_custom_status(self.api, self.ns, "drills",
                                                         self.name, patch)
        return self.fresh

    async def _condition(self, step: DrillStep, status: str) -> None:
        # The accept handler writes Accepted into the same list: write against the version
        # read, and read again on a conflict (a re-read alone still lost Accepted).
        for _ in range(5):
            self.fresh = await resources.read_custom(self.api, self.ns, "drills", self.name)
            conds = list((self.fresh.get("status") or {}).get("conditions") or [])
            old = condition(conds, "Ready") or {}
            if (old.get("reason"), old.get("message"), old.get("status")) == (
                    str(step.reason), step.message, status):
                return
            new = set_condition(conds, type="Ready", status=status, reason=str(step.reason),
                                message=step.message, now=datetime.now(UTC),
                                generation=self.fresh["metadata"].get("generation"))
            try:
                self.fresh = await resources.patch_custom_status(
                    self.api, self.ns, "drills", self.name, {"conditions": new},
                    self.fresh["metadata"].get("resourceVersion"))
            except client.ApiException as exc:
                if exc.status == 409:
                    continue
                raise
            if step.action == DrillAction.REFUSE:
                kopf.warn(self.body, reason=str(step.reason), message=step.message)
            return

    async def _start(self, snap: Snapshot) -> None:
        live = LiveRun([c.name for c in snap.campuses], snap.now)
        self.live = live
        spec = self.fresh.get("spec") or {}
        load = spec.get("workload") or {}
        the_plan = load_plan(duration=float(load.get("durationSeconds", 120)),
                             rate=float(load.get("ratePerSecond", 200)),
                             workers=int(load.get("writers", 4)))
        if snap.satellite is not None:  # its writers, not the LIS load (drill_sat.py)
            live.sat = SatRun(snap.satellite)
            live.load = await start_sat(self.api, self.ns, live.sat, live.proxies,
                                        the_plan.rate, the_plan.duration)
        sites = []
        for i, campus in enumerate(live.campuses if live.sat is None else [], start=1):
            px = io.RwProxy(self.api, self.ns, campus)
            await px.start()
            live.proxies[campus] = px
            dsn = px.dsn(await io.app_password(self.api, self.ns, campus))
            sites.append(SiteTarget(campus, i, dsn, io.DRILL_SCHEMA))
            live.probes[campus] = io.Probe(campus, dsn)
            live.tasks.append(asyncio.create_task(live.probes[campus].run()))
        if live.sat is None:
            live.load = asyncio.create_task(run_load(sites, the_plan, live.ledger))
        blank = dict.fromkeys(("completedAt", "result", "rtoSeconds", "lostTransactions",
                               "lostRows", "committedTransactions", "reason", "faultCampuses",
                               "convergedSeconds", "timeline", "report"))
        await self._status({"phase": DrillPhase.RUNNING, "lastRun": {
            **blank, "startedAt": rfc3339(snap.now),
            "message": f"{snap.scenario.value} under load"}})
        units = list(live.sat.writers) if live.sat else live.campuses
        self._event("DrillStarted", f"{snap.scenario.value} against "
                    f"{snap.target_kind.value} {', '.join(units)}: load for "
                    f"{the_plan.duration:.0f} s at {the_plan.rate:.0f} specimens/s")

    async def _inject(self, snap: Snapshot) -> None:
        live = self.live
        assert live is not None
        if snap.scenario == Scenario.PRIMARY_KILL:
            campus = snap.campuses[0]
            for p in live.probes.values():
                p.fault(killed=True)
            await io.kill_pod(self.api, self.ns, str(campus.primary))
            what = f"deleted primary pod {campus.primary} of {campus.name} (grace 0)"
            live.struck = [campus.name]
        elif snap.scenario in (Scenario.CAMPUS_LOSS, Scenario.SYNC_CRASH):
            ring = RingDrill(snap.scenario, str(self.fresh["spec"]["target"]["name"]),
                             ring_fault_campus(snap))
            live.ring = ring
            await ring.prepare(self.api, self.ns, live.campuses)
            for c, p in live.probes.items():  # the others' writes must not stop
                if c != ring.campus or snap.scenario == Scenario.SYNC_CRASH:
                    p.fault(killed=False)
            what = await ring.inject(self.api, self.ns, self.name, live.campuses)
            live.struck = [ring.campus]
        elif live.sat is not None:
            what = await cut(self.api, self.ns, self.name, self.uid, live.sat)
            live.struck = [live.sat.target.name, live.sat.target.parent]
        else:
            a, b = live.campuses[0], live.campuses[1]
            ips = await io.campus_pod_ips(self.api, self.ns, b, CAMPUS_LABEL)
            body = partition_policy(self.name, self.uid, self.ns, a, b, ips, CAMPUS_LABEL)
            await io.create_policy(self.api, self.ns, body)
            live.struck = [a, b]
            for p in live.probes.values():
                p.fault(killed=False)
            what = f"NetworkPolicy {body['metadata']['name']} cuts {a} from {b}"  # type: ignore[index]
        live.fault_at, live.stage = datetime.now(UTC), Stage.FAULTED
        self._event("FaultInjected", what, warning=True)

    async def _heal(self) -> None:
        live = self.live
        assert live is not None
        if live.ring is not None:  # campusLoss: the campus returns
            what = await live.ring.heal(self.api, self.ns, self.name)
            live.probes[live.ring.campus].fault(killed=True)  # its return: a new server
            live.healed, live.healed_at = True, datetime.now(UTC)
            self._event("FenceLifted", what)
            return
        gone = await io.remove_policies(self.api, self.ns, self.name, DRILL_LABEL)
        live.healed, live.healed_at = True, datetime.now(UTC)
        self._event("PartitionHealed", f"removed NetworkPolicy {', '.join(gone) or '(none)'}")

    async def _verify(self) -> None:
        live = self.live
        assert live is not None
        if live.sat is not None:
            live.measured = await measure_sat(live.sat, live.proxies, self.api, self.ns,
                                              live.load)
            live.load_result, live.check_result = sat_result(live.sat)
            live.stage = Stage.VERIFIED
            return
        if live.load is not None:
            if not live.load.done():  # recovery timed out: the load stops here
                live.load.cancel()
                with contextlib.suppress(BaseException):
                    await live.load
            if live.load.cancelled():
                live.load_result = {"error": "stopped early"}
            elif live.load.exception() is not None:
                live.load_result = {"error": repr(live.load.exception())[:300]}
            else:
                live.load_result = live.load.result().as_dict()
        rto = live.rto()
        if rto is not None:
            self._event("Recovered", f"first write through -rw {rto:.2f} s after the fault")
        lost, live.check_result = await io.check_ledger(
            {c: live.probes[c].dsn for c in live.campuses}, live.ledger)
        if lost:  # name the lost keys and what every server holds for them
            live.check_result["lost"] = await io.explain_lost_at(
                self.api, self.ns, CAMPUS_LABEL, live.ledger, live.check_result)
            self._event("TransactionsLost", lost_text(live.check_result["lost"]), True)
        committed = sum(live.ledger.commits.values())
        if lost is None:
            lost = committed  # nothing could be checked: nothing is proven kept
        ring = live.ring
        if ring is not None and ring.scenario == Scenario.CAMPUS_LOSS:
            ring.returned_s = live.probes[ring.campus].rto  # from the fence's lift
        rows = live.check_result.get("lostRows")
        live.measured = Measured(rto, lost, committed, live.load_result.get("error"),
                                 ring.converged_s if ring else None,
                                 ring.fault_error if ring else None,
                                 rows if isinstance(rows, int) else None)
        live.stage = Stage.VERIFIED

    async def _finish(self, step: DrillStep, snap: Snapshot) -> None:
        live, st = self.live, self.fresh.get("status") or {}
        m = live.measured if live else None
        result = DrillPhase.PASSED if step.passed else DrillPhase.FAILED
        self._event("DrillPassed" if step.passed else "DrillFailed", step.message,
                    warning=not step.passed)
        run = {"startedAt": (st.get("lastRun") or {}).get("startedAt"),
               "completedAt": rfc3339(datetime.now(UTC)), "result": result,
               "rtoSeconds": None if m is None or m.rto_seconds is None
               else round(m.rto_seconds, 2),
               "lostTransactions": m.lost if m else None,
               "lostRows": m.lost_rows if m else None,
               "committedTransactions": m.committed if m else None,
               "faultCampuses": live.struck if live else [],
               "convergedSeconds": None if m is None or m.converge_seconds is None
               else round(m.converge_seconds, 2),
               "reason": str(step.reason), "message": step.message}
        if live is not None:
            run["timeline"] = live.timeline[-TIMELINE:]
            data = report(self.name, snap, run, live.timeline, live.load_result,
                          live.check_result, live.ring.figures() if live.ring else None)
            run["report"] = data["report.md"][:REPORT_CHARS]
            log.info("drill %s/%s report: %s", self.ns, self.name, data["report.json"])
        # History keeps the figures; the timeline and report stay on lastRun only.
        history = [{k: v for k, v in run.items() if k not in ("timeline", "report")},
                   *list(st.get("history") or [])][:HISTORY]
        await self._status({"phase": result, "runs": int(st.get("runs") or 0) + 1,
                            "passed": int(st.get("passed") or 0) + int(bool(step.passed)),
                            "lastRun": run, "history": history})
        await self._condition(step, "True")
        labels = (self.ns, self.name, snap.scenario.value)
        DRILL_RTO.labels(*labels).set(-1.0 if m is None or m.rto_seconds is None
                                      else m.rto_seconds)
        DRILL_LOST.labels(*labels).set(m.lost if m else 0)
        DRILL_RUNS.labels(self.ns, self.name, result.value).inc()
        await self.end()

    async def end(self) -> None:
        """Whatever happens, the run's tasks stop and its policy goes."""
        live, self.live = self.live, None
        for key, who in list(_BUSY.items()):
            if who == self.name and key[0] == self.ns:
                del _BUSY[key]
        if live is not None:
            await live.close()
        await io.remove_policies(self.api, self.ns, self.name, DRILL_LABEL)
        await unfence_all(self.api, self.ns, self.name)

    async def _leftovers(self) -> tuple[str, ...]:
        """The faults of this Drill still in the cluster, found from the cluster alone
        (an operator restarted mid-run has nothing else)."""
        policies = await io.drill_policies(self.api, self.ns, self.name, DRILL_LABEL)
        fenced = await fenced_campuses(self.api, self.ns, self.name)
        return (*(f"NetworkPolicy {p}" for p in policies),
                *(f"fence on Campus {c}" for c in fenced))

    async def _undo(self, step: DrillStep) -> None:
        """A run lost with its process: remove what its fault left, then say so."""
        gone = await io.remove_policies(self.api, self.ns, self.name, DRILL_LABEL)
        lifted = await unfence_all(self.api, self.ns, self.name)
        what = ", ".join([*(f"NetworkPolicy {p} removed" for p in gone),
                          *(f"fence on Campus {c} lifted" for c in lifted)]) or "nothing"
        log.warning("drill %s/%s: %s; undone: %s", self.ns, self.name, step.message, what)
        self._event("FaultUndone", f"the operator restarted during the run: {what}",
                    warning=True)

    async def tick(self) -> None:
        self.fresh = await resources.read_custom(self.api, self.ns, "drills", self.name)
        status = self.fresh.get("status") or {}
        accepted = condition(status.get("conditions") or [], "Accepted") or {}
        orphaned = self.live is None and status.get("phase") == DrillPhase.RUNNING
        if not orphaned and self.live is None and accepted.get("status") != "True":
            return  # not (yet) accepted: the accept handler says why; nothing runs
        spec = self.fresh.get("spec") or {}
        kind, target = TargetKind(spec["target"]["kind"]), str(spec["target"]["name"])
        for reason, message in await observe(self.live, self.api, self.ns):
            self._event(reason, message)
        exists, campuses, sat = await read_target(self.api, self.ns, kind, target)
        key = (self.ns, kind.value, target)
        other = _BUSY.get(key)
        snap = snapshot_of(self.fresh, exists, campuses,
                         other if other not in (None, self.name) else None, self.live,
                         await self._leftovers() if orphaned else (), sat)
        step = plan(snap)
        if step.action == DrillAction.START:
            _BUSY[key] = self.name
            await self._start(snap)
        elif step.action == DrillAction.INJECT_FAULT:
            await self._inject(snap)
        elif step.action == DrillAction.HEAL:
            await self._heal()
        elif step.action == DrillAction.UNDO_FAULTS:
            await self._undo(step)
        elif step.action == DrillAction.VERIFY:
            await self._verify()
        elif step.action == DrillAction.FINISH:
            await self._finish(step, snap)
        elif step.action in (DrillAction.REFUSE, DrillAction.WAIT) and self.live is None:
            ok = step.action == DrillAction.WAIT and str(step.reason) in (
                "NotDue", "Completed", "Suspended")
            await self._condition(step, "True" if ok else "False")


async def drill_loop(body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    async with await api_client() as api:
        ex = Executor(api, body)
        failures, told = 0, None
        try:
            while not stopped:
                delay = 1.0
                try:
                    await ex.tick()
                    failures, told = 0, None
                except Exception as exc:  # every error is told; none ends the loop
                    # Seen, said and backed off; a live run that cannot go on is failed.
                    # Errors not of API, network or database are named by their type.
                    expected = isinstance(exc, (KubeApiError, client.ApiException, OSError,
                                                ValueError, asyncpg.PostgresError))
                    text = (str(exc) if expected else f"{type(exc).__name__}: {exc}")[:300]
                    failures += 1
                    log.warning("drill %s/%s: %s (attempt %d)", ex.ns, ex.name, text, failures)
                    sig = signature("DrillError", text)
                    if should_emit(told, sig):
                        told = sig
                        with contextlib.suppress(Exception):
                            kopf.warn(body, reason="DrillError", message=text)
                    if ex.live is not None:
                        with contextlib.suppress(Exception):
                            await ex.end()
                        with contextlib.suppress(Exception):
                            await ex._status({"phase": DrillPhase.FAILED, "lastRun": {
                                "result": DrillPhase.FAILED, "reason": "Error",
                                "completedAt": rfc3339(datetime.now(UTC)),
                                "message": f"the run broke off: {text}"}})
                    delay = backoff_delay(failures, first=API_BACKOFF, ceiling=120.0)
                await stopped.wait(delay)
        finally:
            await ex.end()


async def cleanup(body: kopf.Body) -> None:
    """The finalizer's work: no partition or campus fence outlives its Drill."""
    ns, name, _ = _ns_name(body)
    async with await api_client() as api:
        await io.remove_policies(api, ns, name, DRILL_LABEL)
        await unfence_all(api, ns, name)


def register() -> None:
    @kopf.daemon("ringkeeper.io", "v1alpha1", "drills", id="drill-run",
                 cancellation_timeout=15)
    async def _run(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        started = time.monotonic()
        await drill_loop(body, stopped)
        log.debug("drill daemon ended after %.0f s", time.monotonic() - started)

    @kopf.on.delete("ringkeeper.io", "v1alpha1", "drills", id="drill-cleanup")
    async def _delete(body: kopf.Body, **_: Any) -> None:
        await cleanup(body)



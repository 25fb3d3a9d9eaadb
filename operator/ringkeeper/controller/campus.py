"""The Campus HA loop: a thin shell around core/ and controller/failover.

ha_loop: one daemon per Campus that polls every agent each health-check period, keeps
status and the Services' role labels true, and starts or resumes a failover when the
primary has failed. Reconcile (generated Secrets, then server-side apply of the objects
core.manifests builds) is `campus_reconcile.py`'s job; `register` wires both into kopf.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..adapters.kube import api_client
from ..adapters.resources import KubeApiError
from ..core import manifests
from ..core.annotations import annotations_condition, parse_fenced
from ..core.conditions import condition, set_condition
from ..core.failures import (
    backoff_delay,
    reason_for_status,
    should_emit,
    signature,
)
from ..core.ha import instances_status, snapshot_to_status
from ..core.haplan import (
    AfterRefusal,
    CampusSnapshot,
    HaStep,
    HaStepKind,
    after_refused_failover,
    campus_phase,
    plan_cycle,
)
from ..core.names import instance_count, instance_names
from ..observability.metrics import FAILOVERS, PRIMARY_UP
from .campus_reconcile import RECONCILED, reconcile
from .failover import AgentClient, StaleStatus, run_failover

log = logging.getLogger("ringkeeper.campus")
SWITCHOVER_ANNOTATION = "ringkeeper.io/switchover-to"
FENCED_ANNOTATION = "ringkeeper.io/fenced-instances"


def _iso(dt: datetime) -> str:
    return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


class _Store:
    def __init__(self, api: client.ApiClient, ns: str, name: str) -> None:
        self.api, self.ns, self.name = api, ns, name

    async def read(self) -> dict[str, Any]:
        return await resources.read_campus(self.api, self.ns, self.name)

    async def patch_status(self, patch: dict[str, Any], resource_version: str | None
                           ) -> dict[str, Any]:
        try:
            return await resources.patch_campus_status(self.api, self.ns, self.name, patch,
                                                       resource_version)
        except ApiException as exc:
            if exc.status == 409:
                raise StaleStatus(str(exc.reason)) from exc
            raise


class _Roles:
    def __init__(self, api: client.ApiClient, ns: str, pods: dict[str, Any]) -> None:
        self.api, self.ns, self.pods = api, ns, pods

    async def set_role(self, instance: str, role: str) -> None:
        pod = self.pods.get(instance)
        current = (pod.metadata.labels or {}).get(manifests.ROLE_LABEL) if pod else None
        if pod is None or current == role:
            return
        try:
            await resources.label_pod(self.api, self.ns, instance, manifests.ROLE_LABEL, role)
        except ApiException as exc:
            if exc.status != 404:
                raise


class _Events:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def emit(self, reason: str, message: str, warning: bool = False) -> None:
        (kopf.warn if warning else kopf.info)(cast(Any, self.body), reason=reason,
                                              message=message)
        log.log(logging.WARNING if warning else logging.INFO, "%s: %s", reason, message)


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True"
               for c in (pod.status.conditions or [])) if pod.status else False


async def ha_loop(body: dict[str, Any], stopped: Any) -> None:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    async with await api_client() as api, aiohttp.ClientSession() as session:
        token = None
        while not stopped and token is None:
            try:
                token = await resources.secret_value(api, ns, f"{name}-agent", "token")
            except (ApiException, KeyError):
                await stopped.wait(1)
        if token is None:
            return
        agents = AgentClient(session, token)
        last_write = 0.0
        failures, told = 0, None
        while not stopped:
            period = 1.0
            try:
                campus = await resources.read_campus(api, ns, name)
                period = float((campus["spec"].get("failover") or {}).get(
                    "healthCheckPeriodSeconds", 1))
                last_write = await ha_cycle(api, agents, campus, last_write)
                failures, told = 0, None
            except ApiException as exc:
                if exc.status == 404:
                    return
                failures += 1
                told = await _ha_failed(api, body, told, reason_for_status(exc.status),
                                        str(exc) if isinstance(exc, KubeApiError)
                                        else f"{exc.status} {exc.reason}")
                period = backoff_delay(failures, first=1.0, ceiling=30.0)
            except StaleStatus:
                pass  # someone else wrote the Campus first: re-read next round
            except Exception as exc:
                log.exception("campus %s/%s: HA cycle failed", ns, name)
                failures += 1
                told = await _ha_failed(api, body, told, "HACycleFailed",
                                        f"{type(exc).__name__}: {exc}")
                period = backoff_delay(failures, first=1.0, ceiling=30.0)
            await stopped.wait(period)


async def _ha_failed(api: client.ApiClient, body: dict[str, Any], told: str | None,
                     reason: str, message: str) -> str:
    """One Event per distinct HA-loop failure, and Ready=False saying it (best effort)."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    message = message[:1000]
    sig = signature(reason, message)
    log.warning("campus %s/%s: %s: %s", ns, name, reason, message)
    if not should_emit(told, sig):
        return sig
    kopf.warn(cast(Any, body), reason=reason, message=message)
    try:
        campus = await resources.read_campus(api, ns, name)
        conds = set_condition((campus.get("status") or {}).get("conditions") or [],
                              type="Ready", status="False", reason=reason, message=message,
                              now=datetime.now(UTC))
        await resources.patch_campus_status(api, ns, name, {"conditions": conds},
                                            campus["metadata"].get("resourceVersion"))
    except ApiException as exc:
        log.warning("campus %s/%s: cannot record the condition: %s", ns, name, exc)
    return sig


async def ha_cycle(api: client.ApiClient, agents: AgentClient, campus: dict[str, Any],
                   last_write: float) -> float:
    meta, spec = campus["metadata"], campus["spec"]
    status = campus.get("status") or {}
    ns, name = meta["namespace"], meta["name"]
    n = instance_count(spec)
    names = instance_names(name, n)
    pod_list = await client.CoreV1Api(api).list_namespaced_pod(
        ns, label_selector=f"{manifests.CAMPUS_LABEL}={name}")
    pods = {p.metadata.name: p for p in pod_list.items if p.metadata.deletion_timestamp is None}
    ips = {k: p.status.pod_ip for k, p in pods.items() if p.status and p.status.pod_ip}
    ready = {k: _pod_ready(p) for k, p in pods.items()}
    raws_list = await asyncio.gather(*(agents.status(ips[k]) if k in ips else _none()
                                       for k in names))
    raws = dict(zip(names, raws_list, strict=True))
    store = _Store(api, ns, name)
    roles = _Roles(api, ns, pods)
    events = _Events(campus)
    current, target = status.get("currentPrimary"), status.get("targetPrimary")
    now = datetime.now(UTC)
    # A malformed annotation is reported and ignored (the last good list stays), so it can
    # neither crash this cycle nor hold up failover below.
    parsed = parse_fenced((meta.get("annotations") or {}).get(FENCED_ANNOTATION), names)
    fenced = list(parsed.value) if parsed.ok else sorted(status.get("fencedInstances") or [])
    fence_patch: dict[str, Any] = {}
    if sorted(fenced) != sorted(status.get("fencedInstances") or []):
        fence_patch["fencedInstances"] = sorted(fenced)
    conds = annotations_condition(status.get("conditions") or [], [parsed.error], now)
    if conds is not None:
        fence_patch["conditions"] = conds
        status = {**status, "conditions": conds}
        campus = {**campus, "status": status}
    if fence_patch:
        await store.patch_status(fence_patch, None)

    snapshot = CampusSnapshot(
        name=name, spec=spec, names=tuple(names), current=current, target=target,
        failing_since=_parse(status.get("failingSince")),
        last_failover=status.get("lastFailover"), raws=raws, ready=ready,
        addressed=frozenset(ips),
        switchover=(meta.get("annotations") or {}).get(SWITCHOVER_ANNOTATION),
        now=now, since_write=time.monotonic() - last_write)
    step = plan_cycle(snapshot)
    log.debug("campus %s/%s: %s: %s", ns, name, step.kind, step.reason)
    return await _execute(step, snapshot, api, agents, store, roles, events, campus, ips,
                          last_write)


async def _execute(step: HaStep, s: CampusSnapshot, api: client.ApiClient,
                   agents: AgentClient, store: _Store, roles: _Roles, events: _Events,
                   campus: dict[str, Any], ips: dict[str, str], last_write: float) -> float:
    """Carry out the planned step; returns when the status was last written (monotonic)."""
    ns, name = campus["metadata"]["namespace"], s.name
    names = list(s.names)
    status = campus.get("status") or {}
    if step.kind in (HaStepKind.BOOTSTRAP, HaStepKind.AWAIT_BOOTSTRAP):
        if step.kind is HaStepKind.BOOTSTRAP and step.target:
            await roles.set_role(step.target, "primary")
            await store.patch_status({"currentPrimary": step.target, "phase": "Ready"}, None)
            await events.emit("PrimaryReady", f"{step.target} is the first primary")
        await _publish(store, campus, names, dict(s.raws), ips, dict(s.ready), None, s.now,
                       force=True)
        return time.monotonic()
    if step.kind is HaStepKind.RESUME_FAILOVER:
        FAILOVERS.labels(ns, name, "resumed").inc()
        await run_failover(store=store, agents=agents, roles=roles, events=events, ips=ips,
                           reason=step.reason)
        return time.monotonic()
    if step.kind is HaStepKind.REFUSE_SWITCHOVER:
        # The parser's sentence quotes the value: no raw newline or ESC in the Event.
        await events.emit("SwitchoverRefused", step.reason, warning=True)
        await _clear_switchover(api, ns, name)
        return time.monotonic()
    if step.kind is HaStepKind.SWITCHOVER:
        outcome = await run_failover(store=store, agents=agents, roles=roles, events=events,
                                     ips=ips, reason=step.reason, planned_target=step.target)
        FAILOVERS.labels(ns, name, "switchover" if outcome.promoted else "refused").inc()
        # Cleared only once decided, so `ringkeeper promote` reads "annotation gone and
        # primary unchanged" as a refusal, never as a switchover still under way.
        await _clear_switchover(api, ns, name)
        return time.monotonic()
    if step.clear_switchover:
        await _clear_switchover(api, ns, name)
    if step.primary_up is not None:
        PRIMARY_UP.labels(ns, name).set(1 if step.primary_up else 0)
    if step.kind is HaStepKind.FAILOVER:
        outcome = await run_failover(store=store, agents=agents, roles=roles, events=events,
                                     ips=ips, reason=step.reason)
        FAILOVERS.labels(ns, name, "promoted" if outcome.promoted else "refused").inc()
        if outcome.promoted is not None:
            return time.monotonic()
        after, why = after_refused_failover(s)
        log.info("campus %s/%s: failover refused: %s: %s", ns, name, after, why)
        if after is AfterRefusal.RESTART_IN_PLACE and s.current:
            # Nobody is provably complete, but the old primary is: restart it in place.
            await events.emit("RecoveringInPlace", f"no safe failover target "
                              f"({outcome.message}); restarting {s.current} in place",
                              warning=True)
            await agents.recover(ips[s.current])
            return time.monotonic()
        conds = set_condition(status.get("conditions") or [], type="FailingOver",
                              status="False", reason="NoSafeCandidate",
                              message=outcome.message, now=s.now)
        await store.patch_status({"conditions": conds, "phase": "Failed"}, None)
        return time.monotonic()
    if step.kind is HaStepKind.MARK_SUSPECT:
        await store.patch_status({"failingSince": _iso(step.failing_since or s.now)}, None)
        await events.emit("PrimarySuspect", step.reason, warning=True)
        return last_write
    if step.kind is HaStepKind.AWAIT_SUSPECT:
        return last_write
    # Publish (healthy): keep Services' role labels and the synchronous snapshot current.
    for inst in names:
        await roles.set_role(inst, step.roles[inst])
    changed = await _publish(store, campus, names, dict(s.raws), ips, dict(s.ready), step.sync,
                             s.now, force=step.force)
    return time.monotonic() if changed else last_write


async def _none() -> None:
    return None


async def _clear_switchover(api: client.ApiClient, ns: str, name: str) -> None:
    await resources.patch_campus(api, ns, name,
                                 {"metadata": {"annotations": {SWITCHOVER_ANNOTATION: None}}})


async def _publish(store: _Store, campus: dict[str, Any], names: list[str],
                   raws: dict[str, Any], ips: dict[str, str], ready: dict[str, bool],
                   snap: Any, now: datetime, force: bool) -> bool:
    status = campus.get("status") or {}
    current = status.get("currentPrimary")
    insts = instances_status(names, raws, ips, ready, raws.get(current) if current else None)
    n_ready = sum(1 for v in ready.values() if v)
    # Ready needs the agents' roles to agree with currentPrimary, not only ready pods.
    verdict = campus_phase(names, current, {i["name"]: i.get("role") for i in insts}, ready)
    phase = verdict.phase.value
    conds = status.get("conditions") or []
    conds = set_condition(conds, type="Ready", status="True" if phase == "Ready" else "False",
                          reason=verdict.reason.value, message=verdict.message, now=now,
                          generation=campus["metadata"].get("generation"))
    refused = condition(conds, RECONCILED)
    if refused is not None and refused.get("status") == "False":
        # reconcile could not write the Campus's objects: that, not the pods, is why.
        conds = set_condition(conds, type="Ready", status="False",
                              reason=str(refused.get("reason")),
                              message=str(refused.get("message")), now=now,
                              generation=campus["metadata"].get("generation"))
    conds = set_condition(conds, type="Degraded",
                          status="True" if phase == "Degraded" else "False",
                          reason=verdict.degraded_reason, message=verdict.message, now=now)
    conds = set_condition(conds, type="FailingOver", status="False", reason="PrimaryHealthy",
                          message="", now=now) if current else conds
    tls_on = (campus["spec"].get("tls") or {}).get("enabled", True)
    conds = set_condition(conds, type="TLSReady", status="False",
                          reason="NotYetSupported" if tls_on else "Disabled",
                          message="connections use scram-sha-256 passwords but are not yet "
                          "encrypted; TLS arrives with the security work" if tls_on else "",
                          now=now)
    patch: dict[str, Any] = {"instances": insts, "readyInstances": n_ready, "phase": phase,
                             "conditions": conds,
                             "observedGeneration": campus["metadata"].get("generation"),
                             "failingSince": None}
    if snap is not None:
        patch["syncSnapshot"] = snapshot_to_status(snap)

    def coarse(d: dict[str, Any]) -> str:
        keep = {k: v for k, v in d.items() if k not in ("instances", "syncSnapshot")}
        keep["roles"] = [(i["name"], i.get("role"), i.get("ready"), i.get("syncState"))
                         for i in d.get("instances") or []]
        keep["confirming"] = (d.get("syncSnapshot") or {}).get("confirming")
        keep["conditions"] = [(c["type"], c["status"]) for c in d.get("conditions") or []]
        return json.dumps(keep, sort_keys=True, default=str)

    before = {k: status.get(k) for k in patch}
    if not force and coarse(patch) == coarse(before):
        return False
    await store.patch_status(patch, None)
    return True


def register() -> None:
    @kopf.on.create("ringkeeper.io", "v1alpha1", "campuses", id="campus-create")
    @kopf.on.update("ringkeeper.io", "v1alpha1", "campuses", id="campus-update",
                    field="spec")
    @kopf.on.resume("ringkeeper.io", "v1alpha1", "campuses", id="campus-resume")
    async def _reconcile(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(dict(body), logger)

    @kopf.timer("ringkeeper.io", "v1alpha1", "campuses", interval=30, idle=10,
                id="campus-drift")
    async def _drift(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(dict(body), logger, timer=True)

    @kopf.daemon("ringkeeper.io", "v1alpha1", "campuses", id="campus-ha",
                 cancellation_timeout=5)
    async def _ha(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await ha_loop(dict(body), stopped)

"""Campus reconcile and the HA loop: thin shells around core/ and controller/failover.

reconcile: generated Secrets (created once), then server-side apply of the
objects core.manifests builds. ha_loop: one daemon per Campus that polls every
agent each health-check period, keeps status and the Services' role labels
true, and starts or resumes a failover when the primary has failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..adapters.kube import api_client
from ..core import manifests
from ..core.annotations import annotations_condition, parse_fenced
from ..core.conditions import set_condition
from ..core.ha import (
    PrimaryState,
    instances_status,
    primary_verdict,
    snapshot_to_status,
    sync_snapshot,
    to_report,
)
from ..engines import profile_for
from ..observability.metrics import FAILOVERS, PRIMARY_UP
from .failover import AgentClient, StaleStatus, run_failover

log = logging.getLogger("ringkeeper.campus")
SWITCHOVER_ANNOTATION = "ringkeeper.io/switchover-to"
FENCED_ANNOTATION = "ringkeeper.io/fenced-instances"
POD_CIDR = "0.0.0.0/0"


def _iso(dt: datetime) -> str:
    return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


async def reconcile(body: dict[str, Any], logger: Any) -> None:
    spec = body["spec"]
    profile = profile_for(spec["engine"], str(spec["version"]))
    meta = body["metadata"]
    async with await api_client() as api:
        for kind, user in (("superuser", profile.superuser), ("replication", "ringkeeper_repl"),
                           ("app", "app"), ("agent", "")):
            obj = manifests.secret(body, kind, user, secrets.token_urlsafe(24))
            if await resources.create_if_missing(api, obj):
                # Never logs the value: only that a credential now exists.
                kopf.info(cast(Any, body), reason="SecretGenerated",
                          message=f"generated {obj['metadata']['name']}")
        for obj in manifests.desired(body, profile, POD_CIDR):
            await resources.apply(api, obj)
        status = body.get("status") or {}
        if not status.get("currentPrimary") and not status.get("targetPrimary"):
            first = f"{meta['name']}-0"
            await resources.patch_campus_status(api, meta["namespace"], meta["name"], {
                "targetPrimary": first, "phase": "Initializing"}, None)
            kopf.info(cast(Any, body), reason="Bootstrapping",
                      message=f"{first} will be the first primary")


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
        while not stopped:
            period = 1.0
            try:
                campus = await resources.read_campus(api, ns, name)
                period = float((campus["spec"].get("failover") or {}).get(
                    "healthCheckPeriodSeconds", 1))
                last_write = await ha_cycle(api, agents, campus, last_write)
            except ApiException as exc:
                if exc.status == 404:
                    return
                log.warning("campus %s/%s: API error %s", ns, name, exc.reason)
            except StaleStatus:
                pass  # someone else wrote the Campus first: re-read next round
            except Exception:
                log.exception("campus %s/%s: HA cycle failed", ns, name)
            await stopped.wait(period)


async def ha_cycle(api: client.ApiClient, agents: AgentClient, campus: dict[str, Any],
                   last_write: float) -> float:
    meta, spec = campus["metadata"], campus["spec"]
    status = campus.get("status") or {}
    ns, name = meta["namespace"], meta["name"]
    n = int(spec.get("instances", 3))
    names = [f"{name}-{i}" for i in range(n)]
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

    if current is None:
        if target and (raws.get(target) or {}).get("role") == "primary":
            await roles.set_role(target, "primary")
            await store.patch_status({"currentPrimary": target, "phase": "Ready"}, None)
            await events.emit("PrimaryReady", f"{target} is the first primary")
        await _publish(store, campus, names, raws, ips, ready, None, now, force=True)
        return time.monotonic()
    if target and target != current:
        FAILOVERS.labels(ns, name, "resumed").inc()
        await run_failover(store=store, agents=agents, roles=roles, events=events, ips=ips,
                           reason="resuming after an interruption")
        return time.monotonic()
    wanted = meta.get("annotations", {}).get(SWITCHOVER_ANNOTATION)
    if wanted and wanted != current:
        if wanted not in names:
            await events.emit("SwitchoverRefused", f"{wanted} is not an instance of {name}",
                              warning=True)
        else:
            outcome = await run_failover(store=store, agents=agents, roles=roles, events=events,
                                         ips=ips, reason=f"switchover requested to {wanted}",
                                         planned_target=wanted)
            FAILOVERS.labels(ns, name, "switchover" if outcome.promoted else "refused").inc()
        # Cleared only once decided, so `ringkeeper promote` reads "annotation gone and
        # primary unchanged" as a refusal, never as a switchover still under way.
        await _clear_switchover(api, ns, name)
        return time.monotonic()
    if wanted == current:
        await _clear_switchover(api, ns, name)

    delay = float((spec.get("failover") or {}).get("detectionDelaySeconds", 5))
    verdict = primary_verdict(current, to_report(current, raws.get(current)),
                              ready.get(current, False), _parse(status.get("failingSince")),
                              now, delay)
    PRIMARY_UP.labels(ns, name).set(1 if verdict.state == PrimaryState.HEALTHY else 0)
    if verdict.state == PrimaryState.FAILED:
        outcome = await run_failover(store=store, agents=agents, roles=roles, events=events,
                                     ips=ips, reason=f"primary failed: {verdict.reason}")
        FAILOVERS.labels(ns, name, "promoted" if outcome.promoted else "refused").inc()
        old = raws.get(current) or {}
        if outcome.promoted is None and old.get("crashed") and current in ips:
            # Nobody is provably complete, but the old primary is: restart it in place.
            await events.emit("RecoveringInPlace", f"no safe failover target "
                              f"({outcome.message}); restarting {current} in place",
                              warning=True)
            await agents.recover(ips[current])
            return time.monotonic()
        if outcome.promoted is None:
            conds = set_condition(status.get("conditions") or [], type="FailingOver",
                                  status="False", reason="NoSafeCandidate",
                                  message=outcome.message, now=now)
            await store.patch_status({"conditions": conds, "phase": "Failed"}, None)
        return time.monotonic()
    if verdict.state == PrimaryState.SUSPECT:
        if not status.get("failingSince"):
            await store.patch_status({"failingSince": _iso(verdict.failing_since or now)}, None)
            await events.emit("PrimarySuspect", verdict.reason, warning=True)
        return last_write
    # Healthy: keep Services' role labels and the synchronous snapshot current.
    for inst in names:
        raw = raws.get(inst) or {}
        role = "primary" if inst == current else (
            "replica" if raw.get("role") == "replica" else "unavailable")
        await roles.set_role(inst, role)
    snap = sync_snapshot(spec, name, current, raws.get(current))
    force = time.monotonic() - last_write > 5
    changed = await _publish(store, campus, names, raws, ips, ready, snap, now, force=force)
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
    phase = "Initializing" if not current else ("Ready" if n_ready == len(names) else "Degraded")
    conds = status.get("conditions") or []
    conds = set_condition(conds, type="Ready", status="True" if phase == "Ready" else "False",
                          reason="AllInstancesReady" if phase == "Ready" else "NotAllReady",
                          message=f"{n_ready}/{len(names)} instances ready", now=now,
                          generation=campus["metadata"].get("generation"))
    conds = set_condition(conds, type="Degraded",
                          status="True" if phase == "Degraded" else "False",
                          reason="InstancesNotReady" if phase == "Degraded" else "AllServing",
                          message=f"{n_ready}/{len(names)} instances ready", now=now)
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
    @kopf.timer("ringkeeper.io", "v1alpha1", "campuses", interval=30, idle=10,
                id="campus-drift")
    async def _reconcile(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(dict(body), logger)

    @kopf.daemon("ringkeeper.io", "v1alpha1", "campuses", id="campus-ha",
                 cancellation_timeout=5)
    async def _ha(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await ha_loop(dict(body), stopped)

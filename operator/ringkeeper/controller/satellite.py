"""Satellite reconcile: a Satellite becomes a one-instance database built by the Campus's
own code (core.satellite.campus_view, core.manifests, campus_reconcile.write_objects).

Read the facts (the Satellite's spec, its parent Campus, the rings naming that Campus,
its pod), let core.satellite.plan_satellite decide, act: write the objects, label the pod
primary (its `-rw` Service selects that label), and say it in status (phase,
observedGeneration, Ready with a reason) and in one Event per change. Every API error
becomes Ready=False with the status's reason, one Event per distinct failure, and a retry
that backs off (core.failures), as the Campus reconcile does. Sync runs in the parent's
sync sidecar; its report becomes the sync fields and the Streaming condition
(controller/satellite_sync.py, core.satsync).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from ..adapters import resources
from ..adapters.kube import api_client
from ..adapters.resources import KubeApiError
from ..api.v1alpha1 import BY_KIND, GROUP, VERSION
from ..api.v1alpha1.common import parse_quantity
from ..api.validation import problems_of
from ..core import manifests
from ..core.conditions import condition
from ..core.failures import backoff_delay, should_emit, signature
from ..core.ownership import Owner
from ..core.satellite import (
    SatelliteFacts,
    SatellitePlan,
    campus_view,
    failed_patch,
    plan_satellite,
    ready_event,
    rings_naming,
    status_patch,
)
from ..core.satsync import (
    STREAMING_CONDITION,
    backlog_condition,
    backlog_of,
    streaming_condition,
    streaming_event,
    sync_status,
)
from .campus_reconcile import UnbuildableSpec, unit_objects, write_failure, write_objects
from .failover import AgentClient
from .satellite_sync import parent_report

log = logging.getLogger("ringkeeper.satellite")
RETRY_CEILING = 120.0
# While waiting for the parent, a ring or the pod: how often the timer looks again.
POLL_SECONDS = 10


@dataclass
class _Failure:
    signature: str
    count: int
    retry_at: float  # time.monotonic()


_FAILURES: dict[str, _Failure] = {}  # by Satellite uid
_TOLD: dict[str, str] = {}  # by Satellite uid: the Ready reason and message last told


def satellite_owner(body: dict[str, Any]) -> Owner:
    """The Satellite as the owner of what reconcile writes (labels every object carries)."""
    meta = body["metadata"]
    return Owner("Satellite", meta["name"], meta["uid"],
                 {"app.kubernetes.io/managed-by": "ringkeeper",
                  manifests.SATELLITE_LABEL: meta["name"]})


async def reconcile(body: dict[str, Any], timer: bool = False) -> None:
    """One pass; never raises to kopf (kopf would post an Event for every retry): failures
    go to status and one Event, and the timer retries with backoff."""
    meta = body["metadata"]
    uid = str(meta.get("uid", ""))
    failure = _FAILURES.get(uid)
    if timer and failure is not None and time.monotonic() < failure.retry_at:
        return
    async with await api_client() as api:
        try:
            plan = await _pass(api, body)
        except Exception as exc:
            failed = write_failure(exc)
            if failed is None:
                raise
            await _failed(api, body, *failed)
            return
        _FAILURES.pop(uid, None)
        await _record(api, body, plan)


def _checked_spec(body: dict[str, Any]) -> None:
    """The operator's own check of the spec: an object written past admission (CRDs of an
    older version, validation off) must not reach a StatefulSet."""
    meta = body["metadata"]
    try:
        BY_KIND["Satellite"].model_validate(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Satellite",
             "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
             "spec": dict(body.get("spec") or {})})
    except ValidationError as exc:
        raise UnbuildableSpec("; ".join(str(p) for p in problems_of(exc))) from exc


async def _pass(api: client.ApiClient, body: dict[str, Any]) -> SatellitePlan:
    _checked_spec(body)
    meta, spec = body["metadata"], body["spec"]
    ns, name, parent = meta["namespace"], meta["name"], spec["parentRef"]["name"]
    try:
        await resources.read_custom(api, ns, "campuses", parent)
        parent_exists = True
    except KubeApiError as exc:
        if exc.status != 404:
            raise
        parent_exists = False
    rings: tuple[str, ...] = ()
    if parent_exists:
        found = await client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, ns, "replicationrings")
        rings = rings_naming(list(found.get("items") or []), parent)
    facts = SatelliteFacts(name=name, parent=parent, parent_exists=parent_exists,
                           parent_rings=rings, pod_ready=False)
    if not plan_satellite(facts).deploy:
        return plan_satellite(facts)
    generated, objs = unit_objects(campus_view(body))
    await write_objects(api, body, satellite_owner(body), generated, objs)
    current = (body.get("status") or {}).get("currentPrimary")
    ready, primary = await _primary_pod(api, ns, name, asked=current is None)
    return plan_satellite(SatelliteFacts(
        name=name, parent=parent, parent_exists=True, parent_rings=rings, pod_ready=ready,
        current_primary=current, answers_as_primary=primary))


async def _primary_pod(api: client.ApiClient, ns: str, name: str, asked: bool
                       ) -> tuple[bool, bool]:
    """Label the satellite's one pod primary (what `-rw` selects); (whether the pod is
    Ready, whether its agent answers as primary: asked only until that is recorded)."""
    pod_name = f"{name}-0"
    try:
        pod = await client.CoreV1Api(api).read_namespaced_pod(pod_name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return False, False  # the StatefulSet has not made it yet
        raise
    labels = pod.metadata.labels or {}
    if labels.get(manifests.SATELLITE_LABEL) != name or pod.metadata.deletion_timestamp:
        return False, False  # not this satellite's pod (or on its way out): never labelled
    if labels.get(manifests.ROLE_LABEL) != "primary":
        await resources.label_pod(api, ns, pod_name, manifests.ROLE_LABEL, "primary")
    ready = any(c.type == "Ready" and c.status == "True"
                for c in (pod.status.conditions or [])) if pod.status else False
    ip = pod.status.pod_ip if pod.status else None
    primary = False
    if asked and ip:
        try:
            token = await resources.secret_value(api, ns, manifests.secret_name(name, "agent"),
                                                 "token")
        except KeyError:
            log.warning("satellite %s/%s: Secret %s has no token", ns, name,
                        manifests.secret_name(name, "agent"))
            return ready, False
        async with aiohttp.ClientSession() as session:
            answer = await AgentClient(session, token).status(ip)
        primary = (answer or {}).get("role") == "primary"
    return ready, primary


async def _record(api: client.ApiClient, body: dict[str, Any], plan: SatellitePlan) -> None:
    """Status on a fresh read (resourceVersion precondition: the accept handler writes
    conditions too), and an Event when Ready changes."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for _ in range(3):
        try:
            sat = await resources.read_custom(api, ns, "satellites", name)
            status = sat.get("status") or {}
            conds = list(status.get("conditions") or [])
            gen = sat["metadata"].get("generation")
            patch = status_patch(plan, conds, datetime.now(UTC), gen)
            # Sync figures from the parent's sidecar (connected, backlog, phase).
            entry = await parent_report(api, sat)
            # spec.backlog against the parent's spool: a condition and an Event per
            # change of verdict (core.satsync.backlog_verdict); the spool is never trimmed.
            limits = (sat.get("spec") or {}).get("backlog") or {}
            verdict = backlog_of(entry, limits,
                                 int(parse_quantity(str(limits.get("maxBytes", "10Gi")))))
            patch.update(sync_status(entry, ready=plan.ready,
                                     backlog=verdict[0] if verdict else None))
            if plan.ready:  # whether both links stream (core.satsync.streaming_of)
                patch["conditions"] = streaming_condition(patch["conditions"], entry,
                                                          datetime.now(UTC), gen)
                streams = condition(patch["conditions"], STREAMING_CONDITION) or {}
                news = streaming_event(condition(conds, STREAMING_CONDITION), streams)
                if news is not None:
                    (kopf.warn if news[1] else kopf.info)(
                        cast(Any, body), reason=news[0], message=str(streams.get("message")))
            if verdict is not None:
                patch["conditions"], told = backlog_condition(
                    patch["conditions"], verdict[0], verdict[1], datetime.now(UTC), gen)
                if told is not None:
                    (kopf.warn if told[1] else kopf.info)(cast(Any, body), reason=told[0],
                                                          message=verdict[1])
            event = ready_event(condition(conds, "Ready"), plan)
            uid = str(body["metadata"].get("uid", ""))
            # Also by memory: kopf's accept handler may have replaced the conditions list
            # with its older copy after this wrote Ready, which would repeat the Event.
            if event is not None and _TOLD.get(uid) != signature(event[0], plan.message):
                (kopf.warn if event[1] else kopf.info)(cast(Any, body), reason=event[0],
                                                       message=plan.message)
                log.info("satellite %s/%s: %s: %s", ns, name, event[0], plan.message)
            _TOLD[uid] = signature(plan.reason.value, plan.message)
            if plan.record_primary:
                kopf.info(cast(Any, body), reason="PrimaryReady",
                          message=f"{plan.record_primary} answers as primary")
            if any(status.get(k) != v for k, v in patch.items()):
                await resources.patch_custom_status(api, ns, "satellites", name, patch,
                                                    sat["metadata"].get("resourceVersion"))
            return
        except KubeApiError as exc:
            if exc.status == 409:
                continue  # moved since read: read again
            if exc.status == 404:
                return  # deleted meanwhile
            log.warning("satellite %s/%s: cannot record status: %s", ns, name, exc)
            return
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("satellite %s/%s: cannot record status: %s", ns, name, exc)
            return


async def _failed(api: client.ApiClient, body: dict[str, Any], reason: str,
                  message: str) -> None:
    meta = body["metadata"]
    uid, ns, name = str(meta.get("uid", "")), meta["namespace"], meta["name"]
    message = message[:1000]
    sig = signature(reason, message)
    previous = _FAILURES.get(uid)
    count = (previous.count if previous else 0) + 1
    delay = backoff_delay(count, first=POLL_SECONDS, ceiling=RETRY_CEILING)
    _FAILURES[uid] = _Failure(sig, count, time.monotonic() + delay)
    _TOLD[uid] = sig  # Ready now says this failure: the recovery is news again
    told = condition((body.get("status") or {}).get("conditions") or [], "Ready")
    told_sig = (signature(str(told.get("reason")), str(told.get("message")))
                if told and told.get("status") == "False" else None)
    if should_emit(previous.signature if previous else told_sig, sig):
        kopf.warn(cast(Any, body), reason=reason, message=message)
    log.warning("satellite %s/%s not reconciled (%s, attempt %d, next in %.0fs): %s",
                ns, name, reason, count, delay, message)
    try:
        sat = await resources.read_custom(api, ns, "satellites", name)
        conds = list((sat.get("status") or {}).get("conditions") or [])
        patch = failed_patch(reason, message, conds, datetime.now(UTC),
                             sat["metadata"].get("generation"))
        if patch["conditions"] != conds:
            await resources.patch_custom_status(api, ns, "satellites", name, patch,
                                                sat["metadata"].get("resourceVersion"))
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("satellite %s/%s: cannot record the condition: %s", ns, name, exc)


def register() -> None:
    @kopf.on.create("ringkeeper.io", "v1alpha1", "satellites", id="satellite-create")
    @kopf.on.update("ringkeeper.io", "v1alpha1", "satellites", id="satellite-update",
                    field="spec")
    @kopf.on.resume("ringkeeper.io", "v1alpha1", "satellites", id="satellite-resume")
    async def _reconcile(body: kopf.Body, **_: Any) -> None:
        await reconcile(dict(body))

    @kopf.timer("ringkeeper.io", "v1alpha1", "satellites", interval=POLL_SECONDS, idle=5,
                id="satellite-poll")
    async def _poll(body: kopf.Body, **_: Any) -> None:
        await reconcile(dict(body), timer=True)

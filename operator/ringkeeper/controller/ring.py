"""ReplicationRing daemon: tell the sidecars where the members are, and report.

Each member's sync sidecar does the replication work. The operator resolves
every member to its Campus's current primary (it moves on failover), writes the
result to a Secret per member Campus (connection strings carry passwords), polls
each primary's sidecar status on its pod IP, and turns the reports into the
ring's status, conditions, Events and metrics (core.ringplan decides). The Secrets
themselves (credentials, claims, releases) are `ring_secrets.py`'s job.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..adapters.kube import api_client
from ..adapters.resources import ForeignObjectError, KubeApiError
from ..base.cron import next_fire, problem
from ..contracts.ringconfig import RingConfig
from ..core import divergence, manifests
from ..core.conditions import condition, set_condition
from ..core.cron import schedule_condition
from ..core.divergence import VerifyOutcome, error_outcome, outcome_of
from ..core.failures import backoff_delay, reason_for_status, should_emit, signature
from ..core.ownership import OwnershipRefusal
from ..core.ringplan import ring_status, sync_config
from ..core.secretrefs import SecretUse, generated_names, refusal_conditions
from ..core.verify_report import Report, verification_status
from ..observability.metrics import (
    RING_CONFLICTS,
    RING_DIVERGED,
    RING_DIVERGED_KEYS,
    RING_HEALTHY_LINKS,
    RING_MAX_LAG,
    VERIFY_DIFFERENCES,
    VERIFY_RESULT,
    VERIFY_RUNS,
)
from ..verify.schedule import report_name, scheduled_verification
from .ring_secrets import (
    SecretRefused,
    _claim,
    _endpoint,
    _refusals,
    _release,
    _secret_events,
    _write_ring_secret,
    _write_secret,
    satellite_endpoints,
)

log = logging.getLogger("ringkeeper.ring")
PERIOD_SECONDS = 2.0
REPORT_DIR = "/tmp/ringkeeper-verify"  # the operator pod's writable emptyDir


class _State:
    def __init__(self) -> None:
        self.secret_hashes: dict[str, str] = {}
        self.satellites: dict[str, dict[str, Any]] = {}  # last resolved (ring_secrets)
        self.link_states: dict[str, str] = {}
        self.verification: asyncio.Task[None] | None = None
        self.next_verification: datetime | None = None
        # Continuous verification: when the next interval run is due (None: not yet
        # planned), the last finished run's outcome (None until one finishes in this
        # process: the Diverged condition in the ring's status then stands), and the
        # last verification error told in an Event, with the failures in a row.
        self.next_continuous: datetime | None = None
        self.outcome: VerifyOutcome | None = None
        self.verify_told: str | None = None
        self.verify_failures = 0
        self.secret_refusals: set[str] = set()  # Secret refusals already told in an Event
        # Signatures of refusals already told in an Event; None until the first cycle of
        # this process reads what the ring's status says was told before a restart.
        self.refusals: set[str] | None = None
        self.failures = 0
        self.told: str | None = None  # the last API failure told in an Event


async def _report(session: aiohttp.ClientSession, host: str | None) -> dict[str, Any] | None:
    if host is None:
        return None
    try:
        async with session.get(f"http://{host}:{manifests.SYNC_PORT}/status",
                               timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status != 200:
                return None
            data: dict[str, Any] = await resp.json()
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def ring_cycle(api: client.ApiClient, session: aiohttp.ClientSession,
                     ring: dict[str, Any], state: _State) -> None:
    meta, spec = ring["metadata"], ring["spec"]
    ns, name = meta["namespace"], meta["name"]
    accepted = next((c for c in (ring.get("status") or {}).get("conditions") or []
                     if c.get("type") == "Accepted"), None)
    if accepted is None or accepted.get("status") != "True":
        return  # the admission handler has not accepted this spec (yet): touch nothing
    endpoints: dict[str, dict[str, Any]] = {}
    hosts: dict[str, str | None] = {}
    campuses: dict[str, bool] = {}  # campus -> its <campus>-ring Secret exists (and is ours)
    # campus -> (member, reason, message)
    refused: dict[str, tuple[str, OwnershipRefusal, str]] = {}
    secret_refusals: list[SecretUse] = []  # Secrets named by external members, not usable
    generated = generated_names(name, [m["campusRef"]["name"] for m in spec.get("members") or []
                                       if m.get("campusRef")])
    for member in spec.get("members") or []:
        claimed = (member.get("campusRef") or {}).get("name")
        if claimed:
            why, message, exists = await _claim(api, ring, claimed)
            if why is not None:
                # Another ring's campus: no address, no poll, no Secret from this ring.
                refused[claimed] = (member["name"], why, message)
                endpoints[member["name"]], hosts[member["name"]] = {"dsn": None}, None
                continue
        try:
            ep, host, cname = await _endpoint(api, ns, member, name, generated)
        except SecretRefused as exc:
            secret_refusals.append(exc.use)
            ep, host, cname = {"dsn": None}, None, None
        except (ApiException, KeyError, ValueError) as exc:
            log.warning("ring %s/%s: member %s unresolved: %s", ns, name, member["name"],
                        getattr(exc, "reason", exc))
            ep, host, cname = {"dsn": None}, None, None
        endpoints[member["name"]] = ep
        hosts[member["name"]] = host
        if cname:
            campuses[cname] = exists if cname == claimed else False
    try:
        satellites = await satellite_endpoints(api, ns, spec)
        state.satellites = satellites
    except (ApiException, KubeApiError, KeyError, ValueError) as exc:
        # Keep the last satellites known: dropping them would stop their sync.
        log.warning("ring %s/%s: satellites unresolved, keeping the last ones: %s", ns, name,
                    getattr(exc, "reason", exc))
        satellites = state.satellites
    payload = json.dumps(sync_config(name, spec, endpoints, satellites), sort_keys=True)
    for cname, exists in campuses.items():
        why, message = await _write_ring_secret(api, ring, cname, payload, exists, state)
        if why is not None:  # lost the race for it to another ring: drop it, say so
            member = next(m["name"] for m in spec["members"]
                          if (m.get("campusRef") or {}).get("name") == cname)
            refused[cname] = (member, why, message)
            endpoints[member], hosts[member] = {"dsn": None}, None
            payload = json.dumps(sync_config(name, spec, endpoints, satellites),
                                 sort_keys=True)
            state.secret_hashes.clear()  # rewrite the others without it
    for cname in campuses:
        if cname not in refused:
            await _write_ring_secret(api, ring, cname, payload, True, state)
    try:
        await _write_secret(api, ring, f"{name}-sync", payload, state)
    except ForeignObjectError as exc:
        refused[f"{name}-sync"] = ("", OwnershipRefusal.FOREIGN_OBJECT, str(exc))
    named = {(m.get("campusRef") or {}).get("name") for m in spec.get("members") or []}
    await _release(api, ring, {manifests.ring_secret_name(c) for c in named
                               if c and c not in refused}, state)
    reports = {m: await _report(session, h) for m, h in hosts.items()}
    previous = (ring.get("status") or {}).get("conditions") or []
    status = ring_status(spec, reports, meta.get("generation"), datetime.now(UTC), previous)
    links_ready = _links_ready(status["conditions"])  # before refusals or a bad cron say no
    _refusals(ring, status, refused, state)
    bad_schedule = schedule_condition(status["conditions"], "spec.verification.schedule",
                                      (spec.get("verification") or {}).get("schedule"),
                                      datetime.now(UTC), meta.get("generation"), previous)
    if bad_schedule is not None:
        status["conditions"] = bad_schedule
    status["conditions"] = refusal_conditions(status["conditions"], secret_refusals,
                                              datetime.now(UTC), meta.get("generation"))
    _secret_events(ring, secret_refusals, state)
    _events(ring, status, state)
    settings = spec.get("verification") or {}
    decision = divergence.decide(
        state.outcome, condition(previous, divergence.DIVERGED),
        enabled=bool(settings.get("continuous", True) or settings.get("schedule")))
    status["conditions"] = divergence.apply(status["conditions"], decision, datetime.now(UTC),
                                            meta.get("generation"), previous)
    RING_HEALTHY_LINKS.labels(ns, name).set(
        sum(1 for lk in status["links"] if lk["state"] in ("Streaming", "CatchingUp")))
    RING_MAX_LAG.labels(ns, name).set(status["maxLagSeconds"] or 0)
    RING_CONFLICTS.labels(ns, name).set(status["conflictsTotal"] or 0)
    try:
        # Against the version read: the accept handler may have written Accepted (say,
        # False for a new, invalid spec) since, and this whole-list write must not undo it.
        await resources.patch_custom_status(api, ns, "replicationrings", name, status,
                                            meta.get("resourceVersion"))
    except ApiException as exc:
        if exc.status != 409:
            raise
        return  # the ring moved while this cycle ran: the next cycle reads it again
    _divergence_told(ring, decision)
    _maybe_verify(api, ring, payload, state, links_ready)


def _links_ready(conditions: list[dict[str, Any]]) -> bool:
    """Whether the ring is whole enough for a continuous run: Ready from the links (before
    a divergence takes it down) and no member seeding."""
    ready = condition(conditions, "Ready") or {}
    seeding = condition(conditions, "Seeding") or {}
    return ready.get("status") == "True" and seeding.get("status") != "True"


def _divergence_told(ring: dict[str, Any], decision: divergence.DivergedVerdict) -> None:
    """The Diverged gauge, and the Event of a transition (after the status holds it)."""
    meta = ring["metadata"]
    RING_DIVERGED.labels(meta["namespace"], meta["name"]).set(
        {"True": 1, "False": 0}.get(str(decision.status), -1))
    if decision.event == divergence.DivergenceEvent.DIVERGED:
        kopf.warn(cast(Any, ring), reason=str(decision.event), message=decision.message)
    elif decision.event == divergence.DivergenceEvent.CONVERGED:
        kopf.info(cast(Any, ring), reason=str(decision.event), message=decision.message)


def _maybe_verify(api: client.ApiClient, ring: dict[str, Any], payload: str,
                  state: _State, links_ready: bool = True) -> None:
    """Start a verification when the cron schedule fires or the continuous interval is
    due (core.divergence.run_due); one at a time, never two of the same ring at once."""
    settings = ring["spec"].get("verification") or {}
    schedule = settings.get("schedule")
    running = state.verification is not None and not state.verification.done()
    now = datetime.now(UTC)
    scheduled = False
    if schedule and problem(schedule) is None:  # a bad one is reported in Ready
        if state.next_verification is None:
            state.next_verification = next_fire(schedule, now)
        elif now >= state.next_verification and not running:
            state.next_verification = next_fire(schedule, now)
            scheduled = True
    continuous = bool(settings.get("continuous", True))
    interval = int(settings.get("intervalMinutes", divergence.DEFAULT_INTERVAL_MINUTES))
    if not continuous:
        state.next_continuous = None
    elif state.next_continuous is None:
        state.next_continuous = now  # the first run as soon as the links are ready
    if scheduled:
        mode, trigger = str(settings.get("mode", "incremental")), "schedule"
    elif continuous and divergence.run_due(now, state.next_continuous, running=running,
                                           links_ready=links_ready):
        mode, trigger = "incremental", "continuous"
        state.next_continuous = divergence.next_run(now, interval)
    else:
        return
    cfg = RingConfig.from_dict(json.loads(payload))
    state.verification = asyncio.create_task(
        _verify(api, ring, cfg, settings, state, mode=mode, trigger=trigger))


async def _verify(api: client.ApiClient, ring: dict[str, Any], cfg: RingConfig,
                  settings: dict[str, Any], state: _State | None = None, *,
                  mode: str | None = None, trigger: str = "schedule") -> None:
    """One verification run; its outcome goes to `state.outcome` for the next cycle to
    turn into the Diverged condition. Scheduled runs tell each run in Events (someone
    asked for them); continuous runs, every few minutes, only tell transitions (posted by
    ring_cycle) and new errors."""
    ns, name = ring["metadata"]["namespace"], ring["metadata"]["name"]
    state = state if state is not None else _State()
    mode = mode or settings.get("mode", "incremental")
    told = trigger == "schedule"
    started = datetime.now(UTC)

    async def publish(report: Report | None, done: datetime | None, error: bool = False,
                      path: str | None = None) -> None:
        status = verification_status(report, mode=mode, started_at=started, completed_at=done,
                                     report_path=path, error=error)
        await resources.patch_custom_status(api, ns, "replicationrings", name,
                                            {"lastVerification": _jsonable(status)})

    await publish(None, None)
    if told:
        kopf.info(cast(Any, ring), reason="VerificationStarted",
                  message=f"scheduled {mode} verification of ring {name}")
    try:
        report = await scheduled_verification(cfg, mode=cast(Any, mode),
                                              chunk_rows=int(settings.get("chunkRows", 100000)),
                                              report_dir=REPORT_DIR, only_failed=not told)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("ring %s/%s: %s verification failed: %s", ns, name, trigger, message)
        state.outcome = error_outcome(message, mode)
        state.verify_failures += 1
        if state.next_continuous is not None:  # back off: doubling up to an hour
            interval = 60.0 * int(settings.get("intervalMinutes",
                                               divergence.DEFAULT_INTERVAL_MINUTES))
            state.next_continuous = datetime.now(UTC) + timedelta(seconds=backoff_delay(
                state.verify_failures, first=interval, ceiling=max(interval, 3600.0)))
        VERIFY_RESULT.labels(ns, name).set(-1)
        VERIFY_RUNS.labels(ns, name, trigger, mode, "Error").inc()
        sig = signature("VerificationError", message)
        if told or should_emit(state.verify_told, sig):
            state.verify_told = sig
            kopf.warn(cast(Any, ring), reason="VerificationError", message=message)
        await publish(None, datetime.now(UTC), error=True)
        return
    written = told or not report.passed
    path = str(Path(REPORT_DIR) / report_name(cfg.ring, report.started_at)) if written else None
    state.outcome = outcome_of(report, report_path=path)
    state.verify_told, state.verify_failures = None, 0
    RING_DIVERGED_KEYS.labels(ns, name).set(state.outcome.differing_keys)
    VERIFY_DIFFERENCES.labels(ns, name).set(len(report.differences))
    VERIFY_RESULT.labels(ns, name).set(1 if report.passed else 0)
    VERIFY_RUNS.labels(ns, name, trigger, mode,
                       "Passed" if report.passed else "Failed").inc()
    await publish(report, datetime.now(UTC), path=path)
    if told:
        (kopf.info if report.passed else kopf.warn)(
            cast(Any, ring),
            reason="VerificationPassed" if report.passed else "VerificationFailed",
            message=f"{len(report.tables)} tables, {len(report.differences)} differences "
                    f"({path})")


def _jsonable(data: dict[str, object]) -> dict[str, object]:
    return {k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v)
            for k, v in data.items()}


def _events(ring: dict[str, Any], status: dict[str, Any], state: _State) -> None:
    for lk in status["links"]:
        key = f"{lk['from']}->{lk['to']}"
        before = state.link_states.get(key)
        if before == lk["state"]:
            continue
        state.link_states[key] = lk["state"]
        if before is None and lk["state"] == "Streaming":
            kopf.info(cast(Any, ring), reason="LinkStreaming", message=f"link {key} streams")
            continue
        warn = lk["state"] not in ("Streaming", "CatchingUp")
        (kopf.warn if warn else kopf.info)(
            cast(Any, ring), reason=f"Link{lk['state']}",
            message=f"link {key}: {before or 'new'} -> {lk['state']}"
            + (f" ({lk['message']})" if lk.get("message") else ""))


async def ring_loop(body: dict[str, Any], stopped: Any) -> None:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    state = _State()
    async with await api_client() as api, aiohttp.ClientSession() as session:
        while not stopped:
            period = PERIOD_SECONDS
            try:
                ring = await resources.read_custom(api, ns, "replicationrings", name)
                await ring_cycle(api, session, ring, state)
                state.failures, state.told = 0, None
            except ApiException as exc:
                if exc.status == 404:
                    return
                message = str(exc) if isinstance(exc, KubeApiError) else \
                    f"{exc.status} {exc.reason}"
                period = await _ring_failed(api, body, state, reason_for_status(exc.status),
                                            message)
            except Exception as exc:
                log.exception("ring %s/%s: cycle failed", ns, name)
                period = await _ring_failed(api, body, state, "RingCycleFailed",
                                            f"{type(exc).__name__}: {exc}")
            await stopped.wait(period)


async def _ring_failed(api: client.ApiClient, body: dict[str, Any], state: _State,
                       reason: str, message: str) -> float:
    """Ready=False and one Event per distinct failure; returns the backed-off wait."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    message = message[:1000]
    state.failures += 1
    log.warning("ring %s/%s: %s (attempt %d): %s", ns, name, reason, state.failures, message)
    sig = signature(reason, message)
    if should_emit(state.told, sig):
        state.told = sig
        kopf.warn(cast(Any, body), reason=reason, message=message)
        try:
            ring = await resources.read_custom(api, ns, "replicationrings", name)
            conds = set_condition((ring.get("status") or {}).get("conditions") or [],
                                  type="Ready", status="False", reason=reason,
                                  message=message, now=datetime.now(UTC),
                                  generation=ring["metadata"].get("generation"))
            await resources.patch_custom_status(api, ns, "replicationrings", name,
                                                {"conditions": conds},
                                                ring["metadata"].get("resourceVersion"))
        except ApiException as exc:
            log.warning("ring %s/%s: cannot record the condition: %s", ns, name, exc)
    return backoff_delay(state.failures, first=PERIOD_SECONDS, ceiling=60.0)


def register() -> None:
    @kopf.daemon("ringkeeper.io", "v1alpha1", "replicationrings", id="ring-sync",
                 cancellation_timeout=5)
    async def _ring(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await ring_loop(dict(body), stopped)

"""Campus reconcile: the Campus's generated Secrets (created once, never overwritten)
and the objects core.manifests builds, written by server-side apply; every refusal
becomes Reconciled/Ready=False and one Event, retried with backoff.

Kept apart from the HA loop (`campus.py`) because it is a separate job with its own
trigger (spec changes and a 30 s drift timer, not the health-check period) and its own
failure bookkeeping; the two share only the Reconciled condition.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..adapters.kube import api_client
from ..adapters.resources import ForeignObjectError, KubeApiError
from ..core import manifests
from ..core.conditions import condition, set_condition
from ..core.failures import (
    FailureReason,
    backoff_delay,
    reason_for_status,
    should_emit,
    signature,
)
from ..core.ownership import Owner, OwnershipRefusal, Verdict
from ..engines import profile_for

log = logging.getLogger("ringkeeper.campus")
POD_CIDR = "0.0.0.0/0"


class UnbuildableSpec(ValueError):
    """The operator cannot build the Campus's objects from its spec."""


@dataclass
class _Failure:
    """The last failure of one Campus's reconcile: what was told, and when to try again."""

    signature: str
    count: int
    retry_at: float  # time.monotonic()


# By Campus uid. In memory: after a restart the Reconciled condition in status tells
# what was last said, so a restart does not repeat the Event either.
_FAILURES: dict[str, _Failure] = {}
RECONCILED = "Reconciled"
RETRY_CEILING = 120.0


def campus_owner(body: dict[str, Any]) -> Owner:
    """The Campus as the owner of what reconcile writes (labels every object carries)."""
    meta = body["metadata"]
    return Owner("Campus", meta["name"], meta["uid"],
                 {"app.kubernetes.io/managed-by": "ringkeeper",
                  manifests.CAMPUS_LABEL: meta["name"]})


async def reconcile(body: dict[str, Any], logger: Any, timer: bool = False) -> None:
    """Write the Campus's objects; any refusal becomes Reconciled/Ready=False and one Event.

    Failures are not raised to kopf: kopf posts an Event for every failed
    retry, and a Campus the API server refuses would fill the namespace with
    them. The 30 s timer is the retry instead, and it backs off
    (core.failures.backoff_delay) while the same Campus keeps failing; a spec
    change (create/update/resume) always tries at once.
    """
    meta = body["metadata"]
    uid = str(meta.get("uid", ""))
    failure = _FAILURES.get(uid)
    if timer and failure is not None and time.monotonic() < failure.retry_at:
        return
    async with await api_client() as api:
        try:
            await _write_campus(api, body)
        except Exception as exc:
            failed = write_failure(exc)
            if failed is None:
                raise
            await _failed(api, body, *failed)
            return
        _FAILURES.pop(uid, None)
        await _set_reconciled(api, body, None, "all objects applied")


def write_failure(exc: BaseException) -> tuple[str, str] | None:
    """The condition reason and message of a failed write of a unit's objects (a Campus's
    or a Satellite's), or None for an error that is not a refusal (a bug: raised)."""
    if isinstance(exc, ForeignObjectError):
        return OwnershipRefusal.FOREIGN_OBJECT, str(exc)
    if isinstance(exc, UnbuildableSpec):
        return FailureReason.INVALID_SPEC, str(exc)
    if isinstance(exc, KubeApiError):
        return reason_for_status(exc.status), f"{exc.api_reason}: {exc.message}"
    if isinstance(exc, ApiException):
        return reason_for_status(exc.status), api_message(exc)
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return (FailureReason.UNAVAILABLE,
                f"the API server did not answer: {type(exc).__name__}: {exc}")
    return None


def api_message(exc: ApiException) -> str:
    """The API server's own sentence (its Status body), else the HTTP reason."""
    try:
        status = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        status = None
    if isinstance(status, dict) and status.get("message"):
        return f"{status.get('reason') or exc.reason}: {status['message']}"
    return f"{exc.status} {exc.reason}"


def unit_objects(unit: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(generated Secrets, other objects) of a Campus or of a Satellite's campus-shaped view
    (core.satellite.campus_view): one builder for both kinds."""
    spec = unit["spec"]
    try:
        profile = profile_for(spec["engine"], str(spec["version"]))
        generated = [manifests.secret(unit, kind, user, secrets.token_urlsafe(24))
                     for kind, user in (("superuser", profile.superuser),
                                        ("replication", "ringkeeper_repl"),
                                        ("app", "app"), ("agent", ""))]
        objs = manifests.desired(unit, profile, POD_CIDR)
    except (KeyError, ValueError, TypeError) as exc:
        raise UnbuildableSpec(f"cannot build the {manifests.unit_kind(unit).lower()}'s objects: "
                        f"{exc}") from exc
    return generated, objs


async def _write_campus(api: client.ApiClient, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    generated, objs = unit_objects(body)
    await write_objects(api, body, campus_owner(body), generated, objs)
    status = body.get("status") or {}
    if not status.get("currentPrimary") and not status.get("targetPrimary"):
        first = f"{meta['name']}-0"
        await resources.patch_campus_status(api, meta["namespace"], meta["name"], {
            "targetPrimary": first, "phase": "Initializing"}, None)
        kopf.info(cast(Any, body), reason="Bootstrapping",
                  message=f"{first} will be the first primary")


async def write_objects(api: client.ApiClient, body: dict[str, Any], owner: Owner,
                        generated: list[dict[str, Any]], objs: list[dict[str, Any]]) -> None:
    """Check every object before writing any: one Foreign object stops them all. Secrets
    are created once and never rewritten; the rest is server-side applied. Events go to
    `body` (the Campus or Satellite)."""
    decided = [(obj, *await resources.ownership(api, obj, owner)) for obj in generated + objs]
    foreign = [(obj, d) for obj, d, _ in decided if not d.writable]
    if foreign:
        obj, d = foreign[0]
        refusal = ForeignObjectError(obj["kind"], obj["metadata"]["name"], d)
        others = [f"{o['kind']} {o['metadata']['name']}" for o, _ in foreign[1:]]
        if others:
            refusal.args = (f"{refusal} Also in the way: {', '.join(others)}.",)
        raise refusal
    for obj, d, existing in decided[:len(generated)]:
        if existing is None:
            if await resources.create_if_missing(api, obj):
                # Never logs the value: only that a credential now exists.
                kopf.info(cast(Any, body), reason="SecretGenerated",
                          message=f"generated {obj['metadata']['name']}")
        elif d.verdict is Verdict.ADOPT:
            # Our labels, no controller: take ownership of the metadata, keep the value.
            await resources.apply(api, {k: obj[k] for k in ("apiVersion", "kind", "metadata")})
    for obj in objs:
        await resources.apply(api, obj)


def _told(body: dict[str, Any]) -> str | None:
    """The failure the Campus's status already reports (what the last Event said)."""
    c = condition((body.get("status") or {}).get("conditions") or [], RECONCILED)
    if c is None or c.get("status") != "False":
        return None
    return signature(str(c.get("reason")), str(c.get("message")))


async def _failed(api: client.ApiClient, body: dict[str, Any], reason: str,
                  message: str) -> None:
    meta = body["metadata"]
    uid = str(meta.get("uid", ""))
    message = message[:1000]
    sig = signature(reason, message)
    previous = _FAILURES.get(uid)
    count = (previous.count if previous else 0) + 1
    # At most two minutes: once someone removes what was in the way, the Campus should
    # not wait long for the next pass (an annotation is no spec change to wake it).
    delay = backoff_delay(count, ceiling=RETRY_CEILING)
    _FAILURES[uid] = _Failure(sig, count, time.monotonic() + delay)
    if should_emit(previous.signature if previous else _told(body), sig):
        kopf.warn(cast(Any, body), reason=reason, message=message)
    log.warning("campus %s/%s not reconciled (%s, attempt %d, next in %.0fs): %s",
                meta["namespace"], meta["name"], reason, count, delay, message)
    await _set_reconciled(api, body, reason, message)


async def _set_reconciled(api: client.ApiClient, body: dict[str, Any], reason: str | None,
                          message: str) -> None:
    """Reconciled (and, on failure, Ready) in status, on a fresh read; no write if unchanged.

    The HA loop writes the same conditions list; the resourceVersion
    precondition makes the loser of a race re-read instead of dropping the
    other's conditions.
    """
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for _ in range(3):
        try:
            campus = await resources.read_campus(api, ns, name)
            conds = list((campus.get("status") or {}).get("conditions") or [])
            now = datetime.now(UTC)
            gen = campus["metadata"].get("generation")
            before = condition(conds, RECONCILED)
            ok = reason is None
            if ok and before is not None and before.get("status") == "True":
                return
            new = set_condition(conds, type=RECONCILED, status="True" if ok else "False",
                                reason="Applied" if ok else str(reason), message=message,
                                now=now, generation=gen)
            if not ok:
                new = set_condition(new, type="Ready", status="False", reason=str(reason),
                                    message=message, now=now, generation=gen)
            if ok or new != conds:
                await resources.patch_campus_status(
                    api, ns, name, {"conditions": new},
                    campus["metadata"].get("resourceVersion"))
            return
        except ApiException as exc:
            if exc.status == 409:
                continue  # the Campus moved: read it again
            log.warning("campus %s/%s: cannot record the condition: %s", ns, name, exc)
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("campus %s/%s: cannot record the condition: %s", ns, name, exc)
            return

"""Admission-after-admission: the operator re-checks every object it is asked to act on.

The API server already enforces the schema and CEL rules, but clusters that
were installed with older CRDs, or objects written with validation turned off,
must not reach the reconcilers with a spec they cannot handle. Each object gets
an Accepted condition saying whether the operator will act on it and why not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.v1alpha1 import GROUP, RESOURCES, VERSION
from ..api.validation import problems_of
from ..core.conditions import condition, set_condition
from ..core.cron import schedule_condition, spec_schedule
from ..observability.metrics import RECONCILES, RESOURCES_ACCEPTED

# Kinds this operator version validates but does not act on yet. Saying so in Ready keeps
# such an object from sitting there with only Accepted=True, as if something ran for it.
# Every kind is acted on now (Satellites by controller/satellite.py); kept for the next.
NOT_ACTED_ON: dict[str, str] = {}


def conds_message(conds: list[dict[str, Any]]) -> str:
    return str((condition(conds, "Ready") or {}).get("message", ""))


def _accept(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    model = next(r for r in RESOURCES if r.info.kind == kind)
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    conditions = list(body.get("status", {}).get("conditions", []) or [])
    now = datetime.now(UTC)
    try:
        model.model_validate(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": dict(meta),
             "spec": dict(body.get("spec", {}))}
        )
    except ValidationError as exc:
        problems = "; ".join(str(p) for p in problems_of(exc))
        patch.status["conditions"] = set_condition(
            conditions, type="Accepted", status="False", reason="InvalidSpec",
            message=problems, now=now, generation=generation,
        )
        kopf.warn(body, reason="InvalidSpec", message=problems)
        logger.warning("refusing %s/%s: %s", kind, meta.get("name"), problems)
        RECONCILES.labels(kind, "invalid").inc()
        RESOURCES_ACCEPTED.labels(kind, meta.get("namespace", ""), meta.get("name", "")).set(0)
        return
    patch.status["conditions"] = set_condition(
        conditions, type="Accepted", status="True", reason="SpecValid",
        message="the operator accepted this spec", now=now, generation=generation,
    )
    # Admission's pattern cannot see every unusable schedule (31 February): say so on first
    # sight instead of when it should have fired.
    found = spec_schedule(kind, body.get("spec", {}))
    if found is not None:
        conds = schedule_condition(patch.status["conditions"], found[0], found[1], now,
                                   generation)
        if conds is not None:
            patch.status["conditions"] = conds
            kopf.warn(body, reason="InvalidSchedule", message=conds_message(conds))
        elif (condition(conditions, "Ready") or {}).get("reason") == "InvalidSchedule":
            patch.status["conditions"] = set_condition(
                patch.status["conditions"], type="Ready", status="Unknown",
                reason="ScheduleValid", message="the schedule parses", now=now,
                generation=generation)
    pending = NOT_ACTED_ON.get(kind)
    ready = condition(patch.status["conditions"], "Ready") or {}
    if pending and ready.get("reason") != "InvalidSchedule":
        patch.status["conditions"] = set_condition(
            patch.status["conditions"], type="Ready", status="False",
            reason="NotImplemented", message=pending, now=now, generation=generation)
    patch.status["observedGeneration"] = generation
    RECONCILES.labels(kind, "accepted").inc()
    RESOURCES_ACCEPTED.labels(kind, meta.get("namespace", ""), meta.get("name", "")).set(1)


def register() -> None:
    """Register the handlers for every kind (called once at operator start)."""
    for resource in RESOURCES:
        kind = resource.info.kind
        plural = resource.info.plural

        def handler(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
                    _kind: str = kind, **kw: Any) -> None:
            _accept(_kind, body, patch, logger)

        for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
            decorator(GROUP, VERSION, plural, id=f"accept-{plural}", field="spec")(handler)

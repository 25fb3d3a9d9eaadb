"""Condition bookkeeping, the way Kubernetes expects it.

lastTransitionTime must move only when a condition's status flips; tools such as
`kubectl wait` and alerting rely on that, so every writer goes through here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..base.timefmt import rfc3339


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with one condition set; other types are left as they were."""
    previous = next((c for c in conditions if c.get("type") == type), None)
    fresh = rfc3339(now)
    if previous is None or previous.get("status") != status:
        stamp = fresh
    else:
        stamp = previous.get("lastTransitionTime") or fresh
    entry: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp,
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    out = [c for c in conditions if c.get("type") != type]
    out.append(entry)
    return sorted(out, key=lambda c: str(c.get("type")))


def condition(conditions: list[dict[str, Any]], type: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type), None)

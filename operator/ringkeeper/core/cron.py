"""What the operator does about a schedule it cannot use: a Ready=False condition.

The grammar and the firing times live in `ringkeeper.base.cron` (the API models need
them at admission); this module holds the decision built on them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..base.cron import problem
from .conditions import set_condition


def schedule_condition(conditions: list[dict[str, Any]], field: str, expr: object,
                       now: datetime, generation: int | None = None,
                       previous: list[dict[str, Any]] | None = None
                       ) -> list[dict[str, Any]] | None:
    """Conditions with Ready=False (reason InvalidSchedule, the parse error as message)
    when `expr` is set and cannot serve as a schedule, else None. Admission's pattern
    cannot see every mistake (a 31st of February), and objects written before it existed
    were never checked, so the operator checks on first sight, says so, and skips the
    schedule instead of failing every cycle."""
    if expr is None:
        return None
    reason = problem(expr)
    if reason is None:
        return None
    # Stamped against the object's own conditions (`previous`), not against a Ready that
    # this cycle's other deciders just set, so lastTransitionTime stays put while the
    # schedule stays bad.
    stamped = set_condition(previous if previous is not None else conditions, type="Ready",
                            status="False", reason="InvalidSchedule",
                            message=f"{field}: {reason}", now=now, generation=generation)
    ready = next(c for c in stamped if c["type"] == "Ready")
    return sorted([c for c in conditions if c.get("type") != "Ready"] + [ready],
                  key=lambda c: str(c.get("type")))


# Where each kind keeps its schedule, as a path under spec.
SCHEDULE_FIELDS: dict[str, tuple[str, ...]] = {
    "ReplicationRing": ("verification", "schedule"),
    "Drill": ("schedule",),
}


def spec_schedule(kind: str, spec: object) -> tuple[str, object] | None:
    """("spec.<path>", the schedule as written) of a kind that has one and sets it."""
    path = SCHEDULE_FIELDS.get(kind)
    node: object = spec
    for part in path or ():
        node = node.get(part) if isinstance(node, dict) else None
    if path is None or node is None:
        return None
    return "spec." + ".".join(path), node

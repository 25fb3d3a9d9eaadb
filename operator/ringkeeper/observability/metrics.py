"""Metric definitions. Processes import what they export; names never repeat elsewhere."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter(
    "ringkeeper_reconciles_total",
    "Reconciliations run by the operator, by kind and result.",
    ["kind", "result"],
)
RESOURCES_ACCEPTED = Gauge(
    "ringkeeper_resource_accepted",
    "1 when a Ringkeeper object's spec was accepted by the operator, 0 when it was refused.",
    ["kind", "namespace", "name"],
)
FAILOVERS = Counter(
    "ringkeeper_campus_failovers_total",
    "Failovers and switchovers started by the operator, by outcome.",
    ["namespace", "campus", "outcome"],
)
PRIMARY_UP = Gauge(
    "ringkeeper_campus_primary_up",
    "1 while the campus's primary is healthy as the operator sees it.",
    ["namespace", "campus"],
)

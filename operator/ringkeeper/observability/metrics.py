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

# Ring sync sidecar (one process per member; labels name the link).
LINK_LAG_BYTES = Gauge(
    "ringkeeper_link_lag_bytes",
    "WAL of the source not yet applied by the target of a ring link.",
    ["ring", "source", "target"],
)
LINK_LAG_SECONDS = Gauge(
    "ringkeeper_link_lag_seconds",
    "Age of the newest change a link has applied while it is behind (0 when caught up).",
    ["ring", "source", "target"],
)
LINK_ROWS = Gauge(
    "ringkeeper_link_rows_per_second",
    "Rows a ring link applied per second over the last ten seconds.",
    ["ring", "source", "target"],
)
LINK_UP = Gauge(
    "ringkeeper_link_streaming",
    "1 while a ring link streams (or catches up), 0 otherwise.",
    ["ring", "source", "target"],
)
LINK_APPLIED_TXNS = Gauge(
    "ringkeeper_link_applied_transactions",
    "Transactions a ring link applied since the sidecar started.",
    ["ring", "source", "target"],
)
CONFLICTS = Gauge(
    "ringkeeper_link_conflicts",
    "Conflicts a ring link resolved since the sidecar started.",
    ["ring", "source", "target"],
)
SEED_PERCENT = Gauge(
    "ringkeeper_seed_progress_percent",
    "Progress of a member's stock sync, in percent of rows.",
    ["ring", "member"],
)
HOLD_LAG_BYTES = Gauge(
    "ringkeeper_hold_slot_retained_bytes",
    "WAL a member keeps for ring members that have not received it yet.",
    ["ring", "member"],
)

# Ring, as the operator sees it (from every member's sidecar report).
RING_HEALTHY_LINKS = Gauge(
    "ringkeeper_ring_healthy_links",
    "Ring links that carry changes right now.",
    ["namespace", "ring"],
)
RING_MAX_LAG = Gauge(
    "ringkeeper_ring_max_lag_seconds",
    "Largest lag of any link of the ring.",
    ["namespace", "ring"],
)
RING_CONFLICTS = Gauge(
    "ringkeeper_ring_conflicts",
    "Conflicts the ring's sidecars resolved since they started.",
    ["namespace", "ring"],
)
VERIFY_DIFFERENCES = Gauge(
    "ringkeeper_verification_differences",
    "Rows that differed between members in the ring's last scheduled verification.",
    ["namespace", "ring"],
)
VERIFY_RESULT = Gauge(
    "ringkeeper_verification_passed",
    "1 if the ring's last scheduled verification passed, 0 if it found differences, "
    "-1 if it could not run.",
    ["namespace", "ring"],
)
RING_DIVERGED_KEYS = Gauge(
    "ringkeeper_ring_diverged_keys",
    "Keys that differed between the ring's members in its last finished verification "
    "(continuous or scheduled); alert on > 0: members hold different data.",
    ["namespace", "ring"],
)
RING_DIVERGED = Gauge(
    "ringkeeper_ring_diverged",
    "The ring's Diverged condition: 1 True, 0 False, -1 Unknown (not verified yet, "
    "verification off, or the last run could not decide).",
    ["namespace", "ring"],
)
VERIFY_RUNS = Counter(
    "ringkeeper_verification_runs_total",
    "Verification runs the operator finished, by trigger (continuous or schedule), mode "
    "and result (Passed, Failed, Error).",
    ["namespace", "ring", "trigger", "mode", "result"],
)

# Drills (controller/drill.py): what the last run of each Drill measured.
DRILL_RTO = Gauge(
    "ringkeeper_drill_rto_seconds",
    "Last run of a Drill: seconds from the fault to the first write through -rw (-1: none).",
    ["namespace", "drill", "scenario"],
)
DRILL_LOST = Gauge(
    "ringkeeper_drill_lost_transactions",
    "Last run of a Drill: acknowledged transactions the surviving members do not hold.",
    ["namespace", "drill", "scenario"],
)
DRILL_RUNS = Counter(
    "ringkeeper_drill_runs_total",
    "Finished Drill runs, by result (Passed, Failed).",
    ["namespace", "drill", "result"],
)

# Satellites, as their parent member's sync sidecar sees them (sync/satellite.py).
SAT_CONNECTED = Gauge(
    "ringkeeper_satellite_connected",
    "1 while the parent's sidecar reaches the satellite (answered within 5 s), else 0.",
    ["ring", "parent", "satellite"],
)
SAT_PARENT_BACKLOG_ROWS = Gauge(
    "ringkeeper_satellite_parent_backlog_rows",
    "Changes spooled at the parent for the satellite and not yet applied there.",
    ["ring", "parent", "satellite"],
)
SAT_PARENT_BACKLOG_BYTES = Gauge(
    "ringkeeper_satellite_parent_backlog_bytes",
    "Size of the parent's spool for the satellite.",
    ["ring", "parent", "satellite"],
)
SAT_SATELLITE_BACKLOG_BYTES = Gauge(
    "ringkeeper_satellite_satellite_backlog_bytes",
    "WAL of the satellite its parent has not confirmed (the satellite's outbound backlog, "
    "last measured; rows are not known before they are decoded).",
    ["ring", "parent", "satellite"],
)
SAT_CONTACT_AGE = Gauge(
    "ringkeeper_satellite_last_contact_age_seconds",
    "Seconds since the satellite last answered its parent's sidecar (-1: never since the "
    "sidecar started).",
    ["ring", "parent", "satellite"],
)
SAT_DRAINED_ROWS = Gauge(
    "ringkeeper_satellite_drained_rows",
    "Spooled changes the parent's sidecar applied at the satellite since it started.",
    ["ring", "parent", "satellite"],
)
SAT_CATCHUP_PERCENT = Gauge(
    "ringkeeper_satellite_catchup_percent",
    "Catch-up of the parent's spool into the satellite: rows drained since the spool was "
    "last empty, in percent of those plus the rows still spooled (100 with no backlog).",
    ["ring", "parent", "satellite"],
)

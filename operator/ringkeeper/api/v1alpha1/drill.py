"""Drill: a failure rehearsal with a realistic workload and pass/fail expectations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from .common import (
    AGE_COLUMN,
    ApiModel,
    CampusName,
    Condition,
    CronSchedule,
    DnsLabel,
    KindInfo,
    PrinterColumn,
    Rule,
    TimeZoneName,
    conditions_field,
    name_length_rule,
)
from .defaults import nested


class TargetKind(StrEnum):
    CAMPUS = "Campus"
    REPLICATION_RING = "ReplicationRing"
    SATELLITE = "Satellite"


class Scenario(StrEnum):
    PRIMARY_KILL = "primaryKill"
    CAMPUS_LOSS = "campusLoss"
    NETWORK_PARTITION = "networkPartition"
    SYNC_CRASH = "syncCrash"


RING_ONLY_SCENARIOS = (Scenario.CAMPUS_LOSS, Scenario.SYNC_CRASH)
# A Satellite is cut from its parent Campus; the other faults strike campuses, not it.
SATELLITE_SCENARIOS = (Scenario.NETWORK_PARTITION,)


class DrillTarget(ApiModel):
    kind: TargetKind
    name: DnsLabel
    campus: CampusName | None = Field(
        default=None, description="campusLoss and syncCrash: the ring member's Campus the "
        "fault strikes (the campus lost, or whose sync sidecar crashes); unset: the ring's "
        "first Campus member. A name that is not a Campus member of the ring is refused "
        "when the run would start (Ready=False, reason CampusNotInRing).")


class Expectations(ApiModel):
    max_rto_seconds: int = Field(
        default=600, ge=1, le=3600, description="The drill fails when recovery takes longer."
    )
    max_lost_transactions: int = Field(
        default=0, ge=0, description="Must be 0: no acknowledged commit may be lost."
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.maxLostTransactions) || self.maxLostTransactions == 0",
            message="maxLostTransactions must be 0: the recovery point objective is zero, and a "
            "drill that tolerates loss would hide it",
            field_path=".maxLostTransactions",
            check=lambda e: e.max_lost_transactions == 0,
            reason="FieldValueInvalid",
        ),
    )


class Workload(ApiModel):
    """The LIS-like write load that runs through the drill and counts every commit."""

    writers: int = Field(default=4, ge=1, le=64)
    rate_per_second: int = Field(default=200, ge=1, le=100000)
    duration_seconds: int = Field(default=120, ge=10, le=86400)


class DrillSpec(ApiModel):
    target: DrillTarget
    scenario: Scenario
    expectations: Expectations = nested(Expectations, "What counts as a pass.")
    workload: Workload = nested(Workload, "Load applied during the drill.")
    schedule: CronSchedule | None = Field(
        default=None, description="Cron schedule, read in timeZone (UTC when unset). "
        "Unset: the drill runs once."
    )
    time_zone: TimeZoneName | None = Field(
        default=None, description="IANA time zone the schedule's fields are read in (e.g. "
        "Asia/Shanghai); a skipped wall time does not fire, a repeated one fires once.")
    suspend: bool = Field(default=False, description="Skip scheduled runs while true.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(self.scenario in ['campusLoss', 'syncCrash']) || "
            "self.target.kind == 'ReplicationRing'",
            message="scenarios campusLoss and syncCrash need a ReplicationRing target: losing a "
            "campus or its sync sidecar is survived by the ring, not inside one campus",
            field_path=".target.kind",
            check=lambda s: s.scenario not in RING_ONLY_SCENARIOS
            or s.target.kind == TargetKind.REPLICATION_RING,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="!has(self.target.campus) || self.scenario in ['campusLoss', 'syncCrash']",
            message="target.campus picks the campus a campusLoss or syncCrash strikes in its "
            "ring; primaryKill strikes its target Campus and networkPartition the ring's "
            "first two campuses: remove target.campus",
            field_path=".target.campus",
            check=lambda s: s.target.campus is None or s.scenario in RING_ONLY_SCENARIOS,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.target.kind != 'Satellite' || self.scenario == 'networkPartition'",
            message="a Satellite target takes scenario networkPartition only (the satellite "
            "cut from its parent Campus); primaryKill, campusLoss and syncCrash strike "
            "campuses: target the Campus or the ReplicationRing",
            field_path=".target.kind",
            check=lambda s: s.target.kind != TargetKind.SATELLITE
            or s.scenario in SATELLITE_SCENARIOS,
            reason="FieldValueInvalid",
        ),
    )


class DrillPhase(StrEnum):
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


TIMELINE = 30
REPORT_CHARS = 16384


class DrillEvent(ApiModel):
    at: str = Field(description="RFC 3339 time, microseconds.")
    event: str
    message: str


class DrillRun(ApiModel):
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: DrillPhase | None = None
    rto_seconds: float | None = None
    lost_transactions: int | None = Field(
        default=None, description="Acknowledged transactions (commits) with a row missing, "
        "stale or resurrected at their campus's primary: one commit counts once.")
    lost_rows: int | None = Field(
        default=None, description="The rows of those transactions found missing, stale or "
        "resurrected (an order with five items lost whole is one transaction, six rows).")
    committed_transactions: int | None = None
    fault_campuses: list[DnsLabel] = Field(
        default_factory=list, max_length=2,
        description="The campuses the fault struck (primaryKill: the target; "
        "networkPartition: the two cut apart, or the Satellite and its parent Campus; "
        "campusLoss, syncCrash: the campus lost or "
        "whose sync sidecar crashed), so a summary attributes the run without guessing.")
    converged_seconds: float | None = Field(
        default=None, description="Ring drills (campusLoss, syncCrash): seconds from the "
        "fault's end (the fence lifted; the crash) until every link of the ring streamed "
        "again; a Satellite's partition: from the heal until the Satellite's status says "
        "connected, backlogRows 0 and Streaming (BothWays); absent when it did not within "
        "the limit or the scenario does not wait.")
    message: str | None = None
    reason: str | None = None
    timeline: list[DrillEvent] = Field(
        default_factory=list, max_length=TIMELINE,
        description="What happened in the run and when (start, fault, recovery, end).")
    report: str | None = Field(
        default=None, max_length=REPORT_CHARS,
        description="The run's report in Markdown (docs/drills.md); the operator also logs "
        "it as JSON.")


HISTORY = 10


class DrillStatus(ApiModel):
    observed_generation: int | None = None
    phase: DrillPhase | None = None
    runs: int = 0
    passed: int = 0
    last_run: DrillRun | None = None
    history: list[DrillRun] = Field(
        default_factory=list, max_length=HISTORY,
        description=f"The last {HISTORY} finished runs, newest first.")
    conditions: list[Condition] = conditions_field()


DRILL = KindInfo(
    kind="Drill",
    plural="drills",
    singular="drill",
    short_names=("dr",),
    description="Drill rehearses a failure (primary kill, campus loss, network partition, sync "
    "crash) under a realistic load and checks recovery time and that nothing was lost.",
    printer_columns=(
        PrinterColumn("Target", "string", ".spec.target.name"),
        PrinterColumn("Scenario", "string", ".spec.scenario"),
        PrinterColumn("Last", "string", ".status.lastRun.result"),
        PrinterColumn("RTO", "number", ".status.lastRun.rtoSeconds"),
        AGE_COLUMN,
    ),
    root_rules=(name_length_rule("Drill", 52, "its Jobs are named after it"),),
)

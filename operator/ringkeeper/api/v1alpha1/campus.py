"""Campus: one site's database cluster (one primary, synchronous replicas).

The admission rules of `spec.parameters`, generated from the engines' allow-lists, are
`campus_parameters.py`'s job; this module is the model and its hand-written rules.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field

from ...engines.parameters import MAX_PARAMETERS, MAX_VALUE_LENGTH
from ...engines.refused_parameters import MANAGED_PARAMETERS
from .campus_parameters import PARAMETER_RULES, POSTGRESQL_VERSIONS
from .common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    DisplayName,
    EngineName,
    KindInfo,
    PrinterColumn,
    Resources,
    Rule,
    Storage,
    conditions_field,
    name_length_rule,
)
from .defaults import nested

KINGBASE_VERSION_PATTERN = r"^V[0-9]+(R[0-9]+)?$"


class SyncMethod(StrEnum):
    ANY = "any"
    FIRST = "first"


class DataDurability(StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"


class SynchronousReplication(ApiModel):
    """How many standbys must confirm a commit before it is acknowledged."""

    method: SyncMethod = Field(
        default=SyncMethod.ANY,
        description="any: a quorum of `number` standbys (ANY n); first: the first `number` "
        "standbys in priority order (FIRST n).",
    )
    number: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Standbys that must confirm each commit. 0 means asynchronous.",
    )
    data_durability: DataDurability = Field(
        default=DataDurability.REQUIRED,
        description="required: never promote a replica that could miss an acknowledged commit, "
        "and keep writes waiting while too few standbys are up. preferred: keep accepting "
        "writes with fewer standbys, and on failover accept up to "
        "failover.maxPromotionLagBytes of loss.",
    )


class FailoverSettings(ApiModel):
    """When a primary counts as failed, and how fast a cut-off primary fences itself."""

    detection_delay_seconds: int = Field(
        default=5,
        ge=1,
        le=600,
        description="How long the primary must look failed before a replica is promoted.",
    )
    health_check_period_seconds: int = Field(
        default=1, ge=1, le=60, description="How often the operator polls every instance agent."
    )
    self_fence_after_seconds: int = Field(
        default=3,
        ge=1,
        le=600,
        description="A primary that reaches neither the API server nor any peer for this long "
        "stops accepting writes. Must be below detectionDelaySeconds.",
    )
    max_promotion_lag_bytes: int = Field(
        default=1048576,
        ge=0,
        description="With dataDurability preferred only: the largest WAL gap a promoted "
        "replica may have. Ignored when durability is required (the gap must be zero).",
    )


class TLSSettings(ApiModel):
    enabled: bool = Field(
        default=True,
        description="Serve and require TLS for client, replication and agent connections.",
    )


class MonitoringSettings(ApiModel):
    enabled: bool = Field(default=True, description="Expose Prometheus metrics on every pod.")
    pod_monitor: bool = Field(
        default=False, description="Create a PodMonitor (needs the Prometheus Operator CRDs)."
    )


class CampusSpec(ApiModel):
    display_name: DisplayName | None = Field(
        default=None,
        max_length=128,
        description="Human name shown in status and dashboards, e.g. 朝晖院区.",
    )
    engine: EngineName = Field(description="Database engine: postgresql or kingbase. Immutable.")
    version: str = Field(
        max_length=16,
        description="Engine major version: 15, 16, 17 or 18 for postgresql; V8R6, V9R1 ... "
        "for kingbase.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Container image of the database; the engine profile's default if unset.",
    )
    instances: int = Field(
        default=3,
        ge=1,
        le=9,
        description="Instances in the campus: one primary, the rest replicas.",
    )
    storage: Storage = nested(Storage, "Data volume of each instance.")
    resources: Resources | None = Field(
        default=None, description="Compute resources of the database container."
    )
    synchronous: SynchronousReplication = nested(
        SynchronousReplication, "Synchronous replication inside the campus."
    )
    failover: FailoverSettings = nested(FailoverSettings, "Automatic failover settings.")
    parameters: dict[str, Annotated[str, Field(max_length=MAX_VALUE_LENGTH)]] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        description="Engine tuning parameters (postgresql.conf / kingbase.conf), name to "
        "value. Only the engine's allow-list of tuning settings (memory, WAL and checkpoints, "
        "planner, logging, timeouts, autovacuum, ...) is accepted, each checked against its "
        "type and range; names are case-insensitive. Commands, libraries, file paths and the "
        "settings Ringkeeper manages are refused. See docs/parameters.md.",
        json_schema_extra={"maxProperties": MAX_PARAMETERS},
    )
    tls: TLSSettings = nested(TLSSettings, "TLS for all connections.")
    monitoring: MonitoringSettings = nested(MonitoringSettings, "Prometheus metrics.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.synchronous.number < self.instances",
            message="synchronous.number must be below instances: a campus of N instances can "
            "wait for at most N-1 synchronous standbys",
            field_path=".synchronous.number",
            check=lambda s: s.synchronous.number < s.instances,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.synchronous.dataDurability != 'required' || self.synchronous.number >= 1",
            message="synchronous.dataDurability required needs synchronous.number of at least 1; "
            "use dataDurability: preferred for a campus without synchronous standbys",
            field_path=".synchronous.dataDurability",
            check=lambda s: s.synchronous.data_durability != DataDurability.REQUIRED
            or s.synchronous.number >= 1,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.failover.selfFenceAfterSeconds < self.failover.detectionDelaySeconds",
            message="failover.selfFenceAfterSeconds must be below failover.detectionDelaySeconds, "
            "so a cut-off primary stops writing before a replica is promoted",
            field_path=".failover.selfFenceAfterSeconds",
            check=lambda s: s.failover.self_fence_after_seconds
            < s.failover.detection_delay_seconds,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.failover.healthCheckPeriodSeconds <= self.failover.detectionDelaySeconds",
            message="failover.healthCheckPeriodSeconds must not exceed "
            "failover.detectionDelaySeconds, or a failure is noticed too late",
            field_path=".failover.healthCheckPeriodSeconds",
            check=lambda s: s.failover.health_check_period_seconds
            <= s.failover.detection_delay_seconds,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.engine != 'postgresql' || self.version in "
            + "[" + ", ".join(f"'{v}'" for v in POSTGRESQL_VERSIONS) + "]",
            message="version must be one of 15, 16, 17, 18 for engine postgresql",
            field_path=".version",
            check=lambda s: s.engine != EngineName.POSTGRESQL or s.version in POSTGRESQL_VERSIONS,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel=f"self.engine != 'kingbase' || self.version.matches('{KINGBASE_VERSION_PATTERN}')",
            message="version must look like V8R6 or V9R1 for engine kingbase",
            field_path=".version",
            check=lambda s: s.engine != EngineName.KINGBASE
            or re.fullmatch(KINGBASE_VERSION_PATTERN, s.version) is not None,
            reason="FieldValueInvalid",
        ),
        *PARAMETER_RULES,
        Rule(
            cel="self.engine == oldSelf.engine",
            message="engine is immutable: create a new Campus with the other engine and let "
            "the ring seed it",
            field_path=".engine",
            transition=True,
            reason="FieldValueForbidden",
        ),
    )


class CampusPhase(StrEnum):
    INITIALIZING = "Initializing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILING_OVER = "FailingOver"
    SWITCHING_OVER = "SwitchingOver"
    FAILED = "Failed"


class InstanceRole(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    FENCED = "fenced"
    UNKNOWN = "unknown"


class InstanceStatus(ApiModel):
    name: str
    role: str = Field(default="unknown", description="primary, replica, fenced or unknown.")
    ready: bool = False
    pod_ip: str | None = Field(default=None, alias="podIP")
    timeline: int | None = None
    current_lsn: str | None = None
    received_lsn: str | None = None
    replayed_lsn: str | None = None
    lag_bytes: int | None = None
    sync_state: str | None = Field(
        default=None, description="sync, quorum, potential or async, as the primary reports it."
    )


class FailoverRecord(ApiModel):
    from_instance: str | None = Field(default=None, alias="from")
    to_instance: str | None = Field(default=None, alias="to")
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    rto_seconds: float | None = None


class SyncSnapshotStatus(ApiModel):
    """Which standbys confirmed commits, recorded while the primary was healthy."""

    method: str | None = None
    number: int | None = None
    standbys: list[str] = Field(default_factory=list)
    confirming: list[str] = Field(default_factory=list)
    primary_lsn: str | None = Field(default=None, description="Bytes, as a decimal string.")


class CampusStatus(ApiModel):
    observed_generation: int | None = None
    phase: CampusPhase | None = None
    current_primary: str | None = None
    target_primary: str | None = None
    ready_instances: int | None = None
    instances: list[InstanceStatus] = Field(default_factory=list)
    last_failover: FailoverRecord | None = None
    failing_since: datetime | None = Field(
        default=None, description="When the primary first looked failed (cleared on recovery)."
    )
    sync_snapshot: SyncSnapshotStatus | None = None
    fenced_instances: list[str] = Field(
        default_factory=list,
        description="Instances kept stopped (ringkeeper.io/fenced-instances annotation).",
    )
    conditions: list[Condition] = conditions_field()


CAMPUS = KindInfo(
    kind="Campus",
    plural="campuses",
    singular="campus",
    short_names=("cmp", "campus"),
    description="Campus is one site's database cluster: a primary and synchronous replicas of "
    "PostgreSQL or KingbaseES, failed over automatically without losing committed transactions.",
    printer_columns=(
        PrinterColumn("Display", "string", ".spec.displayName", priority=1),
        PrinterColumn("Engine", "string", ".spec.engine"),
        PrinterColumn("Version", "string", ".spec.version"),
        PrinterColumn("Instances", "integer", ".spec.instances"),
        PrinterColumn("Ready", "integer", ".status.readyInstances"),
        PrinterColumn("Primary", "string", ".status.currentPrimary"),
        PrinterColumn("Phase", "string", ".status.phase"),
        AGE_COLUMN,
    ),
    root_rules=(
        name_length_rule(
            "Campus", 40, "instance, Service and Secret names are built from it"
        ),
    ),
)


__all__: list[str] = [
    "CAMPUS",
    "MANAGED_PARAMETERS",
    "POSTGRESQL_VERSIONS",
    "CampusPhase",
    "CampusSpec",
    "CampusStatus",
    "DataDurability",
    "FailoverRecord",
    "FailoverSettings",
    "InstanceRole",
    "InstanceStatus",
    "MonitoringSettings",
    "SyncMethod",
    "SynchronousReplication",
    "TLSSettings",
]

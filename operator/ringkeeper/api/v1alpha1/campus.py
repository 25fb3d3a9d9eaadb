"""Campus: one site's database cluster (one primary, synchronous replicas)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field

from ...engines import EngineProfile, profile_for
from ...engines.parameters import (
    CONTROL_MESSAGE,
    CONTROL_PATTERN,
    DUPLICATE_MESSAGE,
    MAX_PARAMETERS,
    MAX_VALUE_LENGTH,
    NAME_MESSAGE,
    NAME_PATTERN,
    RAW_NAME_PATTERN,
    Param,
    ParamType,
    ascii_lower,
    unknown_message,
)
from ...engines.refused_parameters import (
    MANAGED_PARAMETERS,
    REFUSED_PARAMETERS,
    refusal_message,
)
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
    SpecError,
    Storage,
    conditions_field,
    name_length_rule,
)
from .defaults import nested

POSTGRESQL_VERSIONS: tuple[str, ...] = ("15", "16", "17", "18")
KINGBASE_VERSION_PATTERN = r"^V[0-9]+(R[0-9]+)?$"



# -- spec.parameters ---------------------------------------------------------------------
# The allow-lists live in the engine profiles (ringkeeper.engines); these rules turn
# them into CEL for admission and into the Python twins `ringkeeper validate` runs.
# Names are case-insensitive (PostgreSQL folds them), so rules compare lowerAscii().
_PARAMS = "self.parameters"
_CATALOGS = {
    EngineName.POSTGRESQL: (profile_for("postgresql", POSTGRESQL_VERSIONS[-1]).parameters,
                            POSTGRESQL_VERSIONS),
    EngineName.KINGBASE: (profile_for("kingbase", "V8R6").parameters, ()),
}


@dataclass(frozen=True)
class _NamingRule(Rule):
    """A rule whose message names the offending parameter: CEL builds it with a
    messageExpression, and the Python check raises the same sentence itself."""

    message_expression: str = ""

    def to_cel(self) -> dict[str, Any]:
        out = super().to_cel()
        out["messageExpression"] = self.message_expression
        return out


def _cel_list(names: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in sorted(names)) + "]"


def _lowered(spec: CampusSpec) -> list[tuple[str, str]]:
    """(lower-cased name, value) of every well-formed name, in a stable order."""
    return [(ascii_lower(k), v) for k, v in sorted(spec.parameters.items())
            if re.fullmatch(RAW_NAME_PATTERN, k)]


def _profile(spec: CampusSpec) -> EngineProfile | None:
    try:
        return profile_for(str(spec.engine), spec.version)
    except ValueError:
        return None  # the version rules above already refuse it


def _check_refused(spec: CampusSpec) -> bool:
    for name, _ in _lowered(spec):
        if name in REFUSED_PARAMETERS:
            raise SpecError(".parameters", refusal_message(name))
    return True


def _check_known(engine: EngineName) -> Callable[[CampusSpec], bool]:
    def check(spec: CampusSpec) -> bool:
        profile = _profile(spec)
        if spec.engine != engine or profile is None:
            return True
        allowed = profile.parameters.allowed(profile.major)
        for name, _ in _lowered(spec):
            if name not in REFUSED_PARAMETERS and name not in allowed:
                raise SpecError(".parameters", unknown_message(name, spec.engine, spec.version))
        return True
    return check


def _known_cel(engine: EngineName) -> str:
    """Every well-formed, not refused name is allowed for this engine (and version)."""
    catalog, versions = _CATALOGS[engine]
    refused = "{" + ", ".join(f"'{n}': true" for n in sorted(REFUSED_PARAMETERS)) + "}"
    always = [p.name for p in catalog.params if p.since == 0]
    terms = [f"n in {refused}", f"n in {_cel_list(always)}"]
    for since in sorted({p.since for p in catalog.params if p.since}):
        newer = [v for v in versions if int(v) >= since]
        names = [p.name for p in catalog.params if p.since == since]
        terms.append(f"(self.version in {_cel_list(newer)} && n in {_cel_list(names)})")
    return " || ".join(terms)


def _known_rule(engine: EngineName) -> Rule:
    ok = _known_cel(engine)
    lowered = f"{_PARAMS}.map(k, k.lowerAscii())"
    return _NamingRule(
        cel=f"!has({_PARAMS}) || self.engine != '{engine}' || {lowered}.all(n, "
        f"!n.matches('^{NAME_PATTERN}$') || {ok})",
        message=f"parameters may only set the {engine} settings Ringkeeper allows "
        "(see docs/parameters.md)",
        message_expression=f"{lowered}.filter(n, n.matches('^{NAME_PATTERN}$') && !({ok}))"
        ".map(n, 'parameters may not set ' + n + ': it is not one of the settings Ringkeeper "
        "allows for ' + self.engine + ' ' + self.version + ' (see docs/parameters.md)')[0]",
        field_path=".parameters",
        check=_check_known(engine),
        reason="FieldValueForbidden",
    )


def _refused_rule() -> Rule:
    reasons = "{" + ", ".join(f"'{n}': '{r.value}'"
                              for n, r in sorted(REFUSED_PARAMETERS.items())) + "}"
    lowered = f"{_PARAMS}.map(k, k.lowerAscii())"
    return _NamingRule(
        cel=f"!has({_PARAMS}) || !{lowered}.exists(n, n in {reasons})",
        message="parameters may not set commands, libraries, file paths or the settings "
        "Ringkeeper manages",
        message_expression=f"{lowered}.filter(n, n in {reasons})"
        f".map(n, 'parameters may not set ' + n + ': ' + {reasons}[n])[0]",
        field_path=".parameters",
        check=_check_refused,
        reason="FieldValueForbidden",
    )


def _value_rule(param: Param) -> Rule:
    def check(spec: CampusSpec) -> bool:
        return all(param.accepts(v) for n, v in _lowered(spec) if n == param.name)

    return Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, k.lowerAscii() != '{param.name}' || "
        f"[{_PARAMS}[k]].all(v, {param.cel('v')}))",
        message=param.message(),
        field_path=".parameters",
        check=check,
        reason="FieldValueInvalid",
    )


def _bool_rule(params: list[Param]) -> Rule:
    """All on/off settings in one rule (they share their check); it names the first."""
    names = {p.name for p in params}
    sample = params[0]
    ok = sample.cel(f"{_PARAMS}[k]")
    tail = sample.message().removeprefix(f"parameter {sample.name} ")

    def check(spec: CampusSpec) -> bool:
        for n, v in _lowered(spec):
            if n in names and not sample.accepts(v):
                raise SpecError(".parameters", f"parameter {n} {tail}")
        return True

    return _NamingRule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, !(k.lowerAscii() in {_cel_list(names)}) "
        f"|| {ok})",
        message=f"on/off parameters {tail}",
        message_expression=f"{_PARAMS}.filter(k, k.lowerAscii() in {_cel_list(names)} && "
        f"!({ok})).map(k, 'parameter ' + k.lowerAscii() + ' {tail}')[0]",
        field_path=".parameters",
        check=check,
        reason="FieldValueInvalid",
    )


def _value_params() -> list[Param]:
    """Every allowed parameter once; the engines share each Param they have in common."""
    seen: dict[str, Param] = {}
    for catalog, _ in _CATALOGS.values():
        for p in catalog.params:
            if seen.setdefault(p.name, p) != p:
                raise ValueError(f"{p.name} differs between engines: guard its rule by engine")
    return list(seen.values())


PARAMETER_RULES: tuple[Rule, ...] = (
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, k.matches('^{RAW_NAME_PATTERN}$'))",
        message=NAME_MESSAGE,
        field_path=".parameters",
        check=lambda s: all(re.fullmatch(RAW_NAME_PATTERN, k) for k in s.parameters),
        reason="FieldValueInvalid",
    ),
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, !{_PARAMS}[k].matches('{CONTROL_PATTERN}'))",
        message=CONTROL_MESSAGE,
        field_path=".parameters",
        check=lambda s: not any(re.search(CONTROL_PATTERN, v) for v in s.parameters.values()),
        reason="FieldValueInvalid",
    ),
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, {_PARAMS}.all(j, j == k || "
        "j.lowerAscii() != k.lowerAscii()))",
        message=DUPLICATE_MESSAGE,
        field_path=".parameters",
        check=lambda s: len({ascii_lower(k) for k in s.parameters}) == len(s.parameters),
        reason="FieldValueInvalid",
    ),
    _refused_rule(),
    *(_known_rule(engine) for engine in _CATALOGS),
    _bool_rule([p for p in _value_params() if p.type is ParamType.BOOL]),
    *(_value_rule(p) for p in _value_params() if p.type is not ParamType.BOOL),
)


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

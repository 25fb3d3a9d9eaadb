"""ReplicationRing: the campuses that all accept writes and copy each other's changes."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field

from .common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    CronSchedule,
    DnsLabel,
    EngineName,
    KindInfo,
    LocalObjectReference,
    PrinterColumn,
    Quantity,
    Rule,
    SecretKeyReference,
    conditions_field,
    name_length_rule,
)
from .defaults import nested

TABLE_PATTERN = r"^[^.\s]+\.[^.\s]+$"
TablePattern = Annotated[str, Field(pattern=TABLE_PATTERN, max_length=200)]


class Topology(StrEnum):
    RING = "ring"
    MESH = "mesh"


class ConflictPolicy(StrEnum):
    LAST_WRITER_WINS = "lastWriterWins"
    CAMPUS_PRIORITY = "campusPriority"


class VerificationMode(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


# External hosts. A host is a host: an RFC 1123 DNS name or an IP literal, nothing a
# connection string could read as more (URL syntax, user:password@, :port, spaces,
# ?query, key=value). CEL runs the anchored RE2 pattern at admission; Python uses
# is_host (fullmatch, never `$`, which in Python also matches before a trailing newline).
# The last DNS label (the top-level domain) starts with a letter, as every real one does,
# so "10.1.2" or "0x7f.1" are not names that resolvers would read as an address.
_DNS_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_LAST = "[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = f"({_DNS_LABEL}[.])*{_DNS_LAST}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = f"({_OCTET}[.]){{3}}{_OCTET}"
_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = f"({_H16}:{_H16}|{_IPV4})"
_IPV6 = "(" + "|".join((  # RFC 3986 IPv6address, no zone (no %)
    f"({_H16}:){{6}}{_LS32}",
    f"::({_H16}:){{5}}{_LS32}",
    f"({_H16})?::({_H16}:){{4}}{_LS32}",
    f"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
    f"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
    f"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    f"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    f"(({_H16}:){{0,5}}{_H16})?::{_H16}",
    f"(({_H16}:){{0,6}}{_H16})?::",
)) + ")"
HOST_PATTERN = f"^({_DNS_NAME}|{_IPV4}|{_IPV6})$"
HOST_MESSAGE = (
    "external.host must be a DNS name (RFC 1123) or an IP address, nothing else: no "
    "scheme, no user@, no :port (use external.port), no spaces, no ?query or key=value"
)
_HOST_RE = re.compile(HOST_PATTERN[1:-1])


def is_host(value: str) -> bool:
    """Whether `value` is exactly one DNS name or IP literal (the admission rule's twin).

    Both parts must agree: the grammar (the same pattern CEL runs) and, for addresses,
    Python's parser; fullmatch, because `$` would let a trailing newline through."""
    if len(value) > 253 or _HOST_RE.fullmatch(value) is None:
        return False
    if ":" in value:  # an IPv6 literal: Python's parser must agree with the grammar
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
    return True


# Role and database names travel in the startup packet as NUL-terminated strings and
# into connection strings: no control characters (NUL would end the field early).
NO_CONTROL_PATTERN = "^[^\\x00-\\x1f\\x7f]+$"


def _printable(value: str) -> bool:
    return bool(value) and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


class CaSecretReference(ApiModel):
    name: DnsLabel = Field(description="Secret name in the same namespace.")
    key: str = Field(default="ca.crt", min_length=1, description="Key inside the Secret.")


class ExternalTls(ApiModel):
    """TLS towards an external member: always sslmode=verify-full against this CA."""

    ca_secret: CaSecretReference = Field(
        description="Secret (labelled ringkeeper.io/ring: <ring name>) holding the PEM CA "
        "certificate(s) the member's server certificate must chain to; its host name must "
        "match external.host.",
    )


class ExternalEndpoint(ApiModel):
    """A member outside this Kubernetes cluster, reached over the network.

    Every external connection is TLS with sslmode=verify-full and SCRAM-SHA-256: the
    password never leaves in clear, and only to the host the CA vouches for. Both
    Secrets it names must carry the label ringkeeper.io/ring: <ring name>."""

    host: str = Field(min_length=1, max_length=253,
                      description="DNS name (RFC 1123) or IP address; nothing else.")
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(min_length=1, max_length=63)
    engine: EngineName = Field(description="postgresql or kingbase.")
    version: str = Field(max_length=16, description="Engine major version, e.g. 15 or V9R1.")
    user: str = Field(default="ringkeeper_sync", min_length=1, max_length=63)
    password_secret: SecretKeyReference = Field(
        description="Secret holding the password of `user`; it must carry the label "
        "ringkeeper.io/ring: <ring name>. The operator's own Secrets are never accepted."
    )
    tls: ExternalTls = Field(description="TLS settings (required: verify-full).")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"self.host.matches('{HOST_PATTERN}')",
            message=HOST_MESSAGE,
            field_path=".host",
            check=lambda e: is_host(e.host),
            reason="FieldValueInvalid",
        ),
        Rule(
            cel=f"self.user.matches('{NO_CONTROL_PATTERN}') && "
            f"self.database.matches('{NO_CONTROL_PATTERN}')",
            message="external.user and external.database must not contain control characters",
            check=lambda e: _printable(e.user) and _printable(e.database),
            reason="FieldValueInvalid",
        ),
    )


class RingMember(ApiModel):
    name: DnsLabel = Field(description="Member name, unique in the ring; names the origin.")
    campus_ref: LocalObjectReference | None = Field(
        default=None, description="A Campus in the same namespace."
    )
    external: ExternalEndpoint | None = Field(
        default=None, description="A database outside this cluster."
    )
    priority: int = Field(
        default=100,
        ge=0,
        le=1000,
        description="Tie-break in conflicts: the higher priority wins; equal priorities fall "
        "back to the member name.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.campusRef) != has(self.external)",
            message="each ring member names exactly one of campusRef or external",
            check=lambda m: (m.campus_ref is None) != (m.external is None),
            reason="FieldValueInvalid",
        ),
    )


class TableSelection(ApiModel):
    include: list[TablePattern] = Field(
        default_factory=lambda: ["*.*"],
        max_length=256,
        description="schema.table patterns to replicate; * matches any run of characters.",
        json_schema_extra={"default": ["*.*"]},
    )
    exclude: list[TablePattern] = Field(
        default_factory=list,
        max_length=256,
        description="schema.table patterns never replicated, even when included.",
    )


class ConflictSettings(ApiModel):
    policy: ConflictPolicy = Field(
        default=ConflictPolicy.LAST_WRITER_WINS,
        description="lastWriterWins: the newest original commit wins, campus priority breaks "
        "ties; campusPriority: the higher-priority campus always wins.",
    )
    log_retention_days: int = Field(
        default=90, ge=1, le=3650, description="Days the conflict log keeps its entries."
    )


class VerificationSettings(ApiModel):
    """When the operator verifies the ring's data.

    Continuous incremental verification is on by default, so that no divergence stays
    silent: it sets the Diverged condition, an Event and metrics. `schedule` adds runs
    (e.g. a nightly full one); runs never overlap."""

    continuous: bool = Field(
        default=True,
        description="Run an incremental verification every intervalMinutes (default on); "
        "false turns it off, and then only the schedule (if any) verifies the ring.",
    )
    interval_minutes: int = Field(
        default=5, ge=1, le=1440,
        description="Minutes between continuous incremental verifications.",
    )
    schedule: CronSchedule | None = Field(
        default=None, description="Cron schedule (five fields, UTC) of additional runs in "
        "`mode`; no scheduled runs if unset (continuous runs still happen).",
    )
    mode: VerificationMode = Field(
        default=VerificationMode.INCREMENTAL,
        description="full compares every row; incremental only chunks changed since the last run.",
    )
    chunk_rows: int = Field(
        default=100000, ge=100, le=10000000, description="Rows per checksum chunk."
    )


class HealingSettings(ApiModel):
    bypass_after_seconds: int = Field(
        default=60,
        ge=5,
        le=86400,
        description="A member down this long is bypassed: its upstream feeds the next member.",
    )
    max_slot_wal_keep_size: Quantity = Field(
        default="50Gi",
        description="WAL kept for a member that is down; past it the member needs a re-seed.",
    )


class ReplicationRingSpec(ApiModel):
    members: list[RingMember] = Field(
        max_length=16,
        description="Members in ring order: each feeds the next, the last feeds the first.",
    )
    topology: Topology = Field(
        default=Topology.RING,
        description="ring: each member sends to the next; mesh: every member to every other.",
    )
    tables: TableSelection = nested(TableSelection, "Which tables replicate.")
    conflicts: ConflictSettings = nested(ConflictSettings, "Conflict resolution.")
    verification: VerificationSettings = nested(VerificationSettings, "Data verification.")
    healing: HealingSettings = nested(HealingSettings, "Healing around a dead member.")
    lag_alert_seconds: int = Field(
        default=30, ge=1, le=86400, description="Lag above which a link is reported Degraded."
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="size(self.members) >= 2",
            message="a ring needs at least two distinct members",
            field_path=".members",
            check=lambda s: len(s.members) >= 2,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.members.all(m, self.members.exists_one(o, o.name == m.name))",
            message="a ring needs at least two distinct members: member names must be unique",
            field_path=".members",
            check=lambda s: len({m.name for m in s.members}) == len(s.members),
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="self.members.all(m, !has(m.campusRef) || self.members.exists_one(o, "
            "has(o.campusRef) && o.campusRef.name == m.campusRef.name))",
            message="a ring needs at least two distinct members: each Campus may appear only once",
            field_path=".members",
            check=lambda s: len([m for m in s.members if m.campus_ref])
            == len({m.campus_ref.name for m in s.members if m.campus_ref}),
            reason="FieldValueInvalid",
        ),
    )


class LinkState(StrEnum):
    """What a ring link reports (docs/ring.md, "Liveness")."""

    PENDING = "Pending"
    SEEDING = "Seeding"
    STREAMING = "Streaming"
    CATCHING_UP = "CatchingUp"
    BYPASSED = "Bypassed"
    # The source said nothing (no change, no keepalive) for half the liveness window.
    STALLED = "Stalled"
    # The source cannot be reached, or was silent for the whole liveness window.
    DOWN = "Down"
    # This member's own database (the link's target) cannot be reached: not the source.
    TARGET_DOWN = "TargetDown"
    NEEDS_RESEED = "NeedsReseed"
    # The link failed for another reason (a refusal, a bug): its source is up.
    ERROR = "Error"


class LinkStatus(ApiModel):
    from_member: str = Field(alias="from")
    to_member: str = Field(alias="to")
    state: LinkState = LinkState.PENDING
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    rows_per_second: float | None = None
    last_applied_at: datetime | None = None
    conflicts: int = 0
    message: str | None = None


class VerificationResult(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    ERROR = "Error"


class VerificationStatus(ApiModel):
    started_at: datetime | None = None
    completed_at: datetime | None = None
    mode: VerificationMode | None = None
    tables: int | None = None
    rows_compared: int | None = None
    differences: int | None = None
    result: VerificationResult | None = None
    progress_percent: float | None = None
    report: str | None = Field(default=None, description="Where the full report was written.")


class SeedingStatus(ApiModel):
    member: str
    tables_done: int = 0
    tables_total: int = 0
    rows_copied: int = 0
    rows_total: int = 0
    percent: float = 0.0


class ReplicationRingStatus(ApiModel):
    observed_generation: int | None = None
    member_count: int | None = None
    healthy_links: str | None = Field(default=None, description="Healthy links / all links.")
    max_lag_seconds: float | None = None
    conflicts_total: int | None = None
    links: list[LinkStatus] = Field(default_factory=list)
    last_verification: VerificationStatus | None = None
    seeding: list[SeedingStatus] = Field(default_factory=list)
    conditions: list[Condition] = conditions_field()


RING = KindInfo(
    kind="ReplicationRing",
    plural="replicationrings",
    singular="replicationring",
    short_names=("ring", "rings"),
    description="ReplicationRing joins campuses that all accept writes: each change travels "
    "the ring with its true origin until every member has it, exactly once.",
    printer_columns=(
        PrinterColumn("Members", "integer", ".status.memberCount"),
        PrinterColumn("Healthy", "string", ".status.healthyLinks"),
        PrinterColumn("MaxLag", "number", ".status.maxLagSeconds"),
        PrinterColumn("Conflicts", "integer", ".status.conflictsTotal"),
        PrinterColumn("Verified", "string", ".status.lastVerification.result"),
        AGE_COLUMN,
    ),
    root_rules=(
        name_length_rule("ReplicationRing", 40, "slot and origin names are built from it"),
    ),
)

"""Satellite: one light database at a small branch that keeps working offline."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from .common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    DisplayName,
    EngineName,
    KindInfo,
    LocalObjectReference,
    PrinterColumn,
    Quantity,
    Resources,
    Rule,
    Storage,
    conditions_field,
    name_length_rule,
)
from .defaults import nested

QUALIFIED_TABLE_PATTERN = r"^[^.\s*]+\.[^.\s*]+$"


class CoreTable(ApiModel):
    name: str = Field(
        pattern=QUALIFIED_TABLE_PATTERN,
        max_length=200,
        description="schema.table of a core table the satellite keeps.",
    )
    row_filter: str | None = Field(
        default=None,
        max_length=4096,
        description="SQL condition on the table's columns; only matching rows are kept, e.g. "
        "campus_code = 'FY'.",
    )


class BacklogLimits(ApiModel):
    """How much offline work a satellite may queue before it refuses more writes."""

    max_rows: int = Field(default=10_000_000, ge=1000, description="Queued changed rows.")
    max_bytes: Quantity = Field(default="10Gi", description="Queued change volume.")
    max_age_hours: int = Field(
        default=72, ge=1, le=8760, description="Oldest queued change before an alert fires."
    )


class SatelliteSpec(ApiModel):
    display_name: DisplayName | None = Field(default=None, max_length=128)
    parent_ref: LocalObjectReference = Field(description="The Campus this satellite syncs with.")
    engine: EngineName = Field(default=EngineName.POSTGRESQL)
    version: str = Field(max_length=16, description="Engine major version.")
    image: str | None = Field(default=None, max_length=512)
    tables: list[CoreTable] = Field(max_length=128, description="Core tables kept locally.")
    backlog: BacklogLimits = nested(BacklogLimits, "Offline backlog limits.")
    storage: Storage = nested(Storage, "Data volume.")
    resources: Resources | None = None

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="size(self.tables) >= 1",
            message="a satellite keeps at least one core table: list them in tables",
            field_path=".tables",
            check=lambda s: len(s.tables) >= 1,
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.tables.all(t, self.tables.exists_one(o, o.name == t.name))",
            message="each core table may be listed only once",
            field_path=".tables",
            check=lambda s: len({t.name for t in s.tables}) == len(s.tables),
            reason="FieldValueInvalid",
        ),
    )


class SatellitePhase(StrEnum):
    INITIALIZING = "Initializing"
    ONLINE = "Online"
    OFFLINE = "Offline"
    SYNCING = "Syncing"
    BACKLOG_FULL = "BacklogFull"


class SatelliteStatus(ApiModel):
    observed_generation: int | None = None
    phase: SatellitePhase | None = None
    connected: bool | None = None
    backlog_rows: int | None = None
    backlog_bytes: int | None = None
    last_sync_at: datetime | None = None
    conditions: list[Condition] = conditions_field()


SATELLITE = KindInfo(
    kind="Satellite",
    plural="satellites",
    singular="satellite",
    short_names=("sat",),
    description="Satellite is a light database at a small branch holding the core tables; it "
    "keeps accepting writes while offline and syncs with its parent campus when it returns.",
    printer_columns=(
        PrinterColumn("Parent", "string", ".spec.parentRef.name"),
        PrinterColumn("Connected", "boolean", ".status.connected"),
        PrinterColumn("Backlog", "integer", ".status.backlogRows"),
        PrinterColumn("Phase", "string", ".status.phase"),
        AGE_COLUMN,
    ),
    root_rules=(name_length_rule("Satellite", 40, "pod and Service names are built from it"),),
)

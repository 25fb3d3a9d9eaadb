"""Satellite: one light database at a small branch that keeps working offline."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

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
    _field_rule,
    conditions_field,
    name_length_rule,
)
from .defaults import nested

QUALIFIED_TABLE_PATTERN = r"^[^.\s*]+\.[^.\s*]+$"


# A plain lower-case SQL identifier: it means the same quoted or not, so the quoted name
# the renderer writes (core.satellite.filter_sql) is the column a user sees in psql.
SQL_IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
FILTER_VALUE_MAX = 256
FILTER_VALUES_MAX = 32
FILTER_TERMS_MAX = 16
NUL_MESSAGE = "must not contain a NUL character: PostgreSQL text cannot hold one"
# A value travels as a quoted SQL literal; NUL is the one character no literal can carry.
FilterValue = Annotated[
    str, Field(max_length=FILTER_VALUE_MAX),
    *_field_rule("!self.contains('\\u0000')", NUL_MESSAGE, lambda s: "\x00" not in s),
]


# SQL semantics: a NULL column matches none of Equals, NotEquals, In, NotIn; IsNull
# selects those rows.
class FilterOp(StrEnum):
    """How a term compares its column with its values."""

    EQUALS = "Equals"
    NOT_EQUALS = "NotEquals"
    IN = "In"
    NOT_IN = "NotIn"
    IS_NULL = "IsNull"
    IS_NOT_NULL = "IsNotNull"


ONE_VALUE_OPS = (FilterOp.EQUALS, FilterOp.NOT_EQUALS)
LIST_OPS = (FilterOp.IN, FilterOp.NOT_IN)
NO_VALUE_OPS = (FilterOp.IS_NULL, FilterOp.IS_NOT_NULL)


def _cel_ops(ops: tuple[FilterOp, ...]) -> str:
    return "[" + ", ".join(f"'{o.value}'" for o in ops) + "]"


_VALUES = "(has(self.values) ? size(self.values) : 0)"


# Values are text literals compared with the column: PostgreSQL casts them to the
# column's type, so '42' compares with an integer column.
class FilterTerm(ApiModel):
    """One comparison of a column with literal values."""

    column: str = Field(pattern=SQL_IDENTIFIER_PATTERN, max_length=63,
                        description="Column name: a plain lower-case SQL identifier.")
    op: FilterOp = Field(description="Equals, NotEquals, In, NotIn, IsNull or IsNotNull.")
    values: list[FilterValue] = Field(
        default_factory=list, max_length=FILTER_VALUES_MAX,
        description="One value for Equals and NotEquals, at least one for In and NotIn, "
        "none for IsNull and IsNotNull.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"!(self.op in {_cel_ops(ONE_VALUE_OPS)}) || {_VALUES} == 1",
            message="Equals and NotEquals take exactly one value",
            field_path=".values",
            check=lambda t: t.op not in ONE_VALUE_OPS or len(t.values) == 1,
            reason="FieldValueInvalid",
        ),
        Rule(
            cel=f"!(self.op in {_cel_ops(LIST_OPS)}) || {_VALUES} >= 1",
            message="In and NotIn take at least one value",
            field_path=".values",
            check=lambda t: t.op not in LIST_OPS or len(t.values) >= 1,
            reason="FieldValueRequired",
        ),
        Rule(
            cel=f"!(self.op in {_cel_ops(NO_VALUE_OPS)}) || {_VALUES} == 0",
            message="IsNull and IsNotNull take no values",
            field_path=".values",
            check=lambda t: t.op not in NO_VALUE_OPS or len(t.values) == 0,
            reason="FieldValueForbidden",
        ),
    )


# Structured, never raw SQL: core.satellite.filter_sql renders it with quoted identifiers
# and literals, so nothing a user writes reaches a statement as SQL text.
class RowFilter(ApiModel):
    """Which rows of a table a satellite keeps: every term must hold."""

    all_of: list[FilterTerm] = Field(
        alias="all", min_length=1, max_length=FILTER_TERMS_MAX,
        description="Terms that must all hold, e.g. {column: home_campus, op: In, "
        "values: [FY, XD]}.")


class CoreTable(ApiModel):
    name: str = Field(
        pattern=QUALIFIED_TABLE_PATTERN,
        max_length=200,
        description="schema.table of a core table the satellite keeps.",
    )
    filter: RowFilter | None = Field(
        default=None,
        description="Only rows matching every term are kept; all rows when unset.",
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
    COPYING = "Copying"
    ONLINE = "Online"
    OFFLINE = "Offline"
    SYNCING = "Syncing"
    BACKLOG_FULL = "BacklogFull"


class SatelliteStatus(ApiModel):
    observed_generation: int | None = None
    phase: SatellitePhase | None = None
    current_primary: str | None = Field(
        default=None, max_length=63,
        description="The satellite's instance once it first answered as primary; until then "
        "its agent may initialise an empty data folder, afterwards never silently.")
    connected: bool | None = None
    backlog_rows: int | None = None
    backlog_bytes: int | None = None
    parent_backlog_rows: int | None = Field(
        default=None, description="Changed rows spooled at the parent for the satellite.")
    parent_backlog_bytes: int | None = Field(
        default=None, description="Bytes of the parent's spool for the satellite.")
    satellite_backlog_bytes: int | None = Field(
        default=None, description="WAL the satellite holds for its parent (its slot's lag, "
        "as last measured: the parent cannot ask while cut off).")
    catch_up_percent: float | None = Field(
        default=None, description="Share of the current catch-up into the satellite done: "
        "rows drained since the spool was last empty over those plus the rows spooled.")
    catch_up_eta_seconds: float | None = Field(
        default=None, description="The spooled rows at the drain rate of the last 10 s; "
        "absent while nothing drains (no guess).")
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
        # The phase stays Initializing until sync exists: Ready's reason says where it is.
        PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].reason'),
        AGE_COLUMN,
    ),
    root_rules=(name_length_rule("Satellite", 40, "pod and Service names are built from it"),),
)

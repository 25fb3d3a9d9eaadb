"""The laboratory (LIS) schema the workload writes, created idempotently.

Schema `lis`, shaped like a hospital laboratory: patients come for visits, a visit gets
orders, an order has items (one per test in the catalogue), a specimen is collected and
scanned by its barcode, instruments upload results (one per test item), a reviewer
releases them and a report is issued. Every table has a single bigint primary key from
`keys.compose` (site | run | counter), so campuses never collide, plus:

* `site_no`: the site that created the row (also readable from the key);
* `rev`: the id of the last write, from the same key source, so the ledger can tell the
  exact version a member holds (`ledger.py` compares it) without hashing whole rows;
* timestamps, so the ring's newest-commit-wins rule has something realistic to weigh.

`test_items` is the shared catalogue (keyed by test code); every site inserts the same
rows with ON CONFLICT DO NOTHING, so it exists before any result that points at it.
Every statement is constant text: nothing from a user reaches the DDL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCHEMA = "lis"  # the CLI's default; drills write into a schema of their own
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def schema_name(name: str) -> str:
    """`name` if it can be a workload schema: a plain lower-case identifier (it is put in
    SQL as an identifier, and a schema the hospital uses must not be written by mistake:
    callers pick it, nothing from a spec does)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"workload schema {name!r} is not a plain identifier "
                         "([a-z_][a-z0-9_]*, at most 63 characters)")
    return name


def in_schema(sql: str, schema: str) -> str:
    """`sql` written for the default schema (`lis.` qualifies every table) for `schema`."""
    return sql if schema == SCHEMA else re.sub(r"\blis\.", f"{schema_name(schema)}.", sql)


@dataclass(frozen=True)
class LisTable:
    name: str
    key: str  # the bigint primary key column

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{self.name}"

    def in_schema(self, schema: str) -> str:
        return f"{schema_name(schema)}.{self.name}"


# The tables the ledger follows, in creation (parent-first) order.
TABLES: dict[str, LisTable] = {t.name: t for t in (
    LisTable("patients", "patient_id"),
    LisTable("visits", "visit_id"),
    LisTable("orders", "order_id"),
    LisTable("order_items", "order_item_id"),
    LisTable("specimens", "specimen_id"),
    LisTable("results", "result_id"),
    LisTable("reviews", "review_id"),
    LisTable("reports", "report_id"),
)}

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS lis.sites (
        site_no smallint PRIMARY KEY CHECK (site_no > 0),
        name text NOT NULL UNIQUE,
        runs integer NOT NULL DEFAULT 0,
        registered_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.test_items (
        test_code text PRIMARY KEY,
        name text NOT NULL,
        panel text NOT NULL,
        specimen_type text NOT NULL,
        unit text NOT NULL,
        ref_low numeric,
        ref_high numeric)""",
    """CREATE TABLE IF NOT EXISTS lis.patients (
        patient_id bigint PRIMARY KEY,
        site_no smallint NOT NULL,
        mrn text NOT NULL UNIQUE,
        family_name text NOT NULL,
        given_name text NOT NULL,
        birth_date date NOT NULL,
        sex text NOT NULL,
        rev bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.visits (
        visit_id bigint PRIMARY KEY,
        patient_id bigint NOT NULL REFERENCES lis.patients,
        site_no smallint NOT NULL,
        kind text NOT NULL,
        ward text NOT NULL,
        rev bigint NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.orders (
        order_id bigint PRIMARY KEY,
        visit_id bigint NOT NULL REFERENCES lis.visits,
        site_no smallint NOT NULL,
        priority text NOT NULL,
        status text NOT NULL,
        rev bigint NOT NULL,
        ordered_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.order_items (
        order_item_id bigint PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES lis.orders,
        test_code text NOT NULL REFERENCES lis.test_items,
        site_no smallint NOT NULL,
        status text NOT NULL,
        rev bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lis.specimens (
        specimen_id bigint PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES lis.orders,
        site_no smallint NOT NULL,
        barcode text NOT NULL UNIQUE,
        specimen_type text NOT NULL,
        rev bigint NOT NULL,
        collected_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.results (
        result_id bigint PRIMARY KEY,
        specimen_id bigint NOT NULL REFERENCES lis.specimens,
        order_item_id bigint NOT NULL REFERENCES lis.order_items,
        test_code text NOT NULL REFERENCES lis.test_items,
        site_no smallint NOT NULL,
        value numeric NOT NULL,
        flag text NOT NULL,
        status text NOT NULL,
        instrument text NOT NULL,
        updated_by smallint NOT NULL,
        rev bigint NOT NULL,
        resulted_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS results_specimen ON lis.results (specimen_id)",
    """CREATE TABLE IF NOT EXISTS lis.reviews (
        review_id bigint PRIMARY KEY,
        specimen_id bigint NOT NULL REFERENCES lis.specimens,
        site_no smallint NOT NULL,
        reviewer text NOT NULL,
        decision text NOT NULL,
        rev bigint NOT NULL,
        reviewed_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS lis.reports (
        report_id bigint PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES lis.orders,
        site_no smallint NOT NULL,
        body text NOT NULL,
        rev bigint NOT NULL,
        released_at timestamptz NOT NULL DEFAULT now())""",
)

# (code, name, panel, specimen type, unit, low, high). Panels are ordered together; their
# sizes make an order average about 15 results, a hospital's 300,000 per 20,000 specimens.
CATALOGUE: tuple[tuple[str, str, str, str, str, float, float], ...] = (
    *(("CBC-" + c, n, "CBC", "whole blood", u, lo, hi) for c, n, u, lo, hi in (
        ("WBC", "leukocytes", "10^9/L", 4.0, 10.0), ("RBC", "erythrocytes", "10^12/L", 4.0, 5.5),
        ("HGB", "haemoglobin", "g/L", 120, 160), ("HCT", "haematocrit", "%", 36, 48),
        ("MCV", "mean cell volume", "fL", 80, 100), ("MCH", "mean cell haemoglobin", "pg", 27, 34),
        ("MCHC", "MCH concentration", "g/L", 320, 360), ("PLT", "platelets", "10^9/L", 100, 300),
        ("NEUT", "neutrophils", "%", 50, 70), ("LYMPH", "lymphocytes", "%", 20, 40),
        ("MONO", "monocytes", "%", 3, 8), ("EOS", "eosinophils", "%", 0.5, 5),
        ("BASO", "basophils", "%", 0, 1), ("RDW", "red cell distribution", "%", 11, 15),
        ("MPV", "mean platelet volume", "fL", 7, 11), ("RET", "reticulocytes", "%", 0.5, 1.5),
        ("NRBC", "nucleated red cells", "/100WBC", 0, 0.5), ("PCT", "plateletcrit", "%", 0.1, 0.3),
    )),
    *(("CHEM-" + c, n, "CHEM", "serum", u, lo, hi) for c, n, u, lo, hi in (
        ("NA", "sodium", "mmol/L", 135, 145), ("K", "potassium", "mmol/L", 3.5, 5.3),
        ("CL", "chloride", "mmol/L", 96, 108), ("CO2", "bicarbonate", "mmol/L", 22, 29),
        ("GLU", "glucose", "mmol/L", 3.9, 6.1), ("BUN", "urea", "mmol/L", 2.9, 8.2),
        ("CREA", "creatinine", "umol/L", 53, 115), ("CA", "calcium", "mmol/L", 2.1, 2.6),
        ("ALT", "alanine aminotransferase", "U/L", 7, 40),
        ("AST", "aspartate aminotransferase", "U/L", 13, 35),
        ("ALP", "alkaline phosphatase", "U/L", 45, 125),
        ("TBIL", "total bilirubin", "umol/L", 3, 21),
        ("ALB", "albumin", "g/L", 40, 55), ("TP", "total protein", "g/L", 65, 85),
    )),
    *(("COAG-" + c, n, "COAG", "citrated plasma", u, lo, hi) for c, n, u, lo, hi in (
        ("PT", "prothrombin time", "s", 11, 14), ("INR", "INR", "", 0.8, 1.2),
        ("APTT", "activated PTT", "s", 25, 37), ("FIB", "fibrinogen", "g/L", 2, 4),
    )),
    *(("UA-" + c, n, "UA", "urine", u, lo, hi) for c, n, u, lo, hi in (
        ("PH", "urine pH", "", 4.5, 8), ("SG", "specific gravity", "", 1.005, 1.03),
        ("PRO", "urine protein", "g/L", 0, 0.15), ("GLU", "urine glucose", "mmol/L", 0, 0.8),
    )),
)


def panels() -> dict[str, list[tuple[str, str, float, float]]]:
    """Panel -> [(code, specimen type, low, high)], for the generator's orders."""
    out: dict[str, list[tuple[str, str, float, float]]] = {}
    for code, _name, panel, stype, _unit, lo, hi in CATALOGUE:
        out.setdefault(panel, []).append((code, stype, lo, hi))
    return out


async def create(conn: Any, schema: str = SCHEMA) -> None:
    """Create the schema and the catalogue; safe to run again and at every site at once
    (a concurrent CREATE may lose a catalogue race: it is retried once, then it exists)."""
    for attempt in (1, 2):
        try:
            async with conn.transaction():
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_name(schema)}")
                for statement in DDL:
                    await conn.execute(in_schema(statement, schema))
                await conn.executemany(in_schema(
                    "INSERT INTO lis.test_items VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    "ON CONFLICT (test_code) DO NOTHING", schema), CATALOGUE)
            return
        except Exception as exc:  # a concurrent creator at the same server
            if attempt == 2 or type(exc).__name__ not in (
                    "UniqueViolationError", "DuplicateObjectError", "DuplicateTableError"):
                raise


class SiteClash(RuntimeError):
    """The site number is registered under another name: keys would collide."""


async def register_site(conn: Any, name: str, number: int, schema: str = SCHEMA) -> int:
    """Record (number, name) in `lis.sites` at the site's own server and take the next run
    number; refuse a number already held by another name (or a name under another number).
    The site's own row is only ever written at its own server, so the counter never races
    with another campus."""
    async with conn.transaction():
        await conn.execute(in_schema(
            "INSERT INTO lis.sites (site_no, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            schema), number, name)
        rows = await conn.fetch(in_schema(
            "SELECT site_no, name FROM lis.sites WHERE site_no = $1 OR name = $2", schema),
            number, name)
        clash = [(r["site_no"], r["name"]) for r in rows if (r["site_no"], r["name"]) != (
            number, name)]
        if clash:
            raise SiteClash(f"site {name} as number {number} clashes with registered "
                            + ", ".join(f"{n} as {s}" for s, n in clash))
        run = await conn.fetchval(in_schema(
            "UPDATE lis.sites SET runs = runs + 1 WHERE site_no = $1 RETURNING runs", schema),
            number)
    return int(run)

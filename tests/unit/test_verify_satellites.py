"""Satellites in `ringkeeper verify` (issue 17), without a database: the filter qualified
by the checksum queries' alias, the queries restricted to it (and unchanged without
one), the exit code of the satellites section, its text and JSON report, and a satellite
without an address reported as not verified, never as equal.

The comparison on real servers is tests/integration/test_verify_satellite.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.api.v1alpha1.satellite import RowFilter
from ringkeeper.contracts.ringconfig import RingConfig
from ringkeeper.core.satellite import filter_sql
from ringkeeper.core.verify import Chunk, KeyDifference, MemberConn, RowVersion
from ringkeeper.core.verify_report import (
    Report,
    SatelliteState,
    SatelliteTable,
    SatelliteVerification,
    TableReport,
    render_text,
    satellites_exit_code,
)
from ringkeeper.verify import checksum as cs
from ringkeeper.verify.satellites import verify_satellite, verify_satellites

HOSTILE = "x'); DELETE FROM lis.samples; --"


def rf(*terms: dict[str, Any]) -> RowFilter:
    return RowFilter.model_validate({"all": list(terms)})


def test_alias_qualifies_every_column_and_values_stay_quoted() -> None:
    f = rf({"column": "campus", "op": "In", "values": ["a", HOSTILE]},
           {"column": "status", "op": "IsNotNull"})
    assert filter_sql(f, "t") == ("""("t"."campus" IN ('a', 'x''); DELETE FROM lis.samples;"""
                                  """ --')) AND ("t"."status" IS NOT NULL)""")
    assert filter_sql(f) == ("""("campus" IN ('a', 'x''); DELETE FROM lis.samples; --'))"""
                             """ AND ("status" IS NOT NULL)""")
    assert filter_sql(None, "t") == "TRUE"
    # an alias is a name like any other: quoted
    assert filter_sql(rf({"column": "c", "op": "IsNull"}), 'a"b') == '("a""b"."c" IS NULL)'


def shape(where: str = "") -> cs.TableShape:
    cols = (cs.ChecksumColumn(name="id", sql_type="bigint", base="int8",
                              base_sql_type="bigint", base_kind="b", not_null=True),
            cs.ChecksumColumn(name="campus", sql_type="text", base="text",
                              base_sql_type="text", base_kind="b"))
    return cs.TableShape(table="lis.samples", columns=cols, key=("id",), where=where)


WHERE = filter_sql(rf({"column": "campus", "op": "In", "values": ["a", "s"]}), "t")


@pytest.mark.parametrize("build", [
    lambda s: cs.chunk_digest_sql(s, Chunk(("1",), ("9",)))[0],
    lambda s: cs.chunk_digest_sql(s, Chunk(None, None))[0],
    lambda s: cs.leaf_rows_sql(s, Chunk(("1",), None))[0],
    lambda s: cs.quantiles_sql(s, Chunk(None, ("5",)), 3)[0],
    lambda s: cs.lookup_sql(s, versions=True, values=True),
])
def test_every_comparing_query_sees_only_the_filtered_rows(build: Any) -> None:
    plain, filtered = build(shape()), build(shape(WHERE))
    assert '"campus" IN' not in plain
    assert filtered.count(f"({WHERE})") == 1
    # the filter is ANDed to what was there (or replaces an empty `true`), nothing else
    # changes
    assert (filtered.replace(f" AND ({WHERE})", "") == plain
            or filtered == plain.replace("WHERE true", f"WHERE ({WHERE})"))


def test_unfiltered_queries_are_unchanged() -> None:
    s = shape()
    assert cs.range_predicate(s, Chunk(None, None), []) == "true"
    assert cs.chunk_digest_sql(s, Chunk(None, None))[0].endswith("FROM \"lis\".\"samples\" t "
                                                                  "WHERE true")


def diff(key: str) -> KeyDifference:
    return KeyDifference(table="lis.samples", key=[key], reference="a", differs_on=["s"],
                         versions={"a": RowVersion(row_hash="1", values={"status": "ok"}),
                                   "s": RowVersion(row_hash="2",
                                                   values={"status": "tampered"})})


def table(*, diffs: list[KeyDifference] | None = None,
          unsettled: list[KeyDifference] | None = None, error: str | None = None,
          outside: int = 0) -> SatelliteTable:
    compare = None if error else TableReport(
        table="lis.samples", key_columns=["id"], mode="full", rows={"a": 10, "s": 10},
        chunks=1, differences=diffs or [], unsettled=unsettled or [])
    return SatelliteTable(table="lis.samples", filter="""("campus" IN ('a', 's'))""",
                          compare=compare, error=error, outside_filter=None if error
                          else outside)


def sat(state: SatelliteState = SatelliteState.COMPARED, *tables: SatelliteTable,
        message: str = "") -> SatelliteVerification:
    return SatelliteVerification(satellite="s", parent="a", state=state, message=message,
                           tables=list(tables))


EXIT_CODES: list[tuple[str, list[SatelliteVerification], int]] = [
    ("no satellites", [], 0),
    ("equal", [sat(SatelliteState.COMPARED, table())], 0),
    ("equal, rows outside the filter at s", [sat(SatelliteState.COMPARED, table(outside=3))],
     0),
    ("a key differs", [sat(SatelliteState.COMPARED, table(diffs=[diff("7")]))], 1),
    ("a key still changing", [sat(SatelliteState.COMPARED, table(unsettled=[diff("7")]))],
     1),
    ("unreachable", [sat(SatelliteState.UNREACHABLE, message="refused")], 2),
    ("no address", [sat(SatelliteState.NO_ADDRESS)], 2),
    ("table missing at the parent",
     [sat(SatelliteState.COMPARED, table(error="table lis.samples does not exist on "
                                              "member a"))], 2),
    ("one differs, another unreachable",
     [sat(SatelliteState.COMPARED, table(diffs=[diff("7")])),
      sat(SatelliteState.UNREACHABLE, message="refused")], 1),
]


@pytest.mark.parametrize(("case", "sats", "code"), EXIT_CODES, ids=[c[0] for c in EXIT_CODES])
def test_exit_code(case: str, sats: list[SatelliteVerification], code: int) -> None:
    assert satellites_exit_code(sats) == code
    assert all(s.passed for s in sats) == (code == 0)


def report(*sats: SatelliteVerification) -> Report:
    return Report(mode="full", members=["a", "b"], reference="a",
                  started_at=datetime(2026, 12, 1, tzinfo=UTC),
                  tables=[TableReport(table="lis.samples", key_columns=["id"], mode="full",
                                      rows={"a": 20, "b": 20})],
                  satellites=list(sats))


def test_members_verdict_ignores_satellites_and_json_keeps_them() -> None:
    r = report(sat(SatelliteState.COMPARED, table(diffs=[diff("7")])))
    assert r.passed and r.differences == []  # repair and the ring's status: members only
    assert not r.satellites_passed and [d.key for d in r.satellite_differences] == [["7"]]
    back = Report.model_validate_json(r.model_dump_json())
    assert back == r and back.satellites[0].state is SatelliteState.COMPARED


def test_text_has_a_parent_vs_satellite_section_naming_the_key() -> None:
    text = render_text(report(
        sat(SatelliteState.COMPARED, table(diffs=[diff("7")], outside=2)),
        SatelliteVerification(satellite="t", parent="b", state=SatelliteState.UNREACHABLE,
                        message="cannot connect to member t: refused")))
    lines = text.splitlines()
    head = lines.index("satellites (parent vs satellite; never repaired by --repair):")
    assert lines[head + 1] == "  a vs s: 1 differing key(s)"
    assert lines[head + 2].startswith(
        """    lis.samples where ("campus" IN ('a', 's')): rows a=10, s=10;""")
    assert "2 row(s) at s outside the filter (not compared)" in lines[head + 2]
    row = next(x for x in lines[head:] if x.strip().startswith("lis.samples  7"))
    assert "differs" in row and " s " in row and "status=tampered" in row
    assert "  b vs t: NOT VERIFIED (Unreachable: cannot connect to member t: refused)" in lines
    assert "PASSED" not in lines[head + 1]


def test_no_satellites_no_section() -> None:
    assert "satellites" not in render_text(report())


def config(dsn: str | None) -> RingConfig:
    spec = {"members": [{"name": n, "external": {
        "host": "127.0.0.1", "database": "postgres", "engine": "postgresql",
        "version": "17", "passwordSecret": {"name": "x", "key": "y"},
        "tls": {"caSecret": {"name": "x"}}}} for n in ("a", "b")],
        "tables": {"include": ["lis.*"]}}
    return RingConfig.from_dict({
        "ring": "lis", "spec": spec,
        "members": {"a": {"dsn": "postgresql://127.0.0.1:1/x"}, "b": {"dsn": None}},
        "satellites": {"s": {"parent": "a", "dsn": dsn, "tables": [
            {"name": "lis.samples", "filter": {"all": [
                {"column": "campus", "op": "In", "values": ["a", "s"]}]}}]},
            "t": {"parent": "b", "dsn": dsn, "tables": [{"name": "lis.samples"}]}}})


def test_without_an_address_or_a_parent_primary_it_is_not_verified() -> None:
    cfg = config(None)
    s, t = asyncio.run(verify_satellites(cfg))
    assert s.state is SatelliteState.NO_ADDRESS and not s.passed and s.tables == []
    assert t.state is SatelliteState.UNREACHABLE and "parent b has no primary" in t.message
    assert satellites_exit_code([s, t]) == 2


def test_table_selection_leaves_out_satellites_without_those_tables() -> None:
    cfg = config(None)
    assert asyncio.run(verify_satellites(cfg, ["lis.results"])) == []
    [s, t] = asyncio.run(verify_satellites(cfg, ["lis.samples"]))
    assert (s.satellite, t.satellite) == ("s", "t")


def test_a_parent_that_does_not_answer_is_unreachable_not_equal() -> None:
    cfg = config("postgresql://u:secret@127.0.0.1:1/x")
    parent = MemberConn.for_ring("lis", "a", "postgresql://u:pw@127.0.0.1:1/x")
    rep = asyncio.run(verify_satellite(cfg, cfg.satellites[0], parent))
    assert rep.state is SatelliteState.UNREACHABLE and rep.message.startswith("parent: ")
    assert not rep.passed

"""The bulk apply path's SQL building, the link's routing and the walsender client's
SCRAM maths: pure parts, no server (the integration tests run them for real)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from ringkeeper.core import names
from ringkeeper.sync import bulk
from ringkeeper.sync.apply import TableMap
from ringkeeper.sync.linkopen import only_source_changes, route
from ringkeeper.sync.pgoutput import UNCHANGED, Begin, Delete, Insert, Origin, Truncate, Update
from ringkeeper.sync.walstream import ConnParams, scram_client_proof

T = TableMap(relation="lis.samples", quoted='"lis"."samples"', columns=["id", "status", "", "note"],
             types={"id": "bigint", "status": "text", "note": "text"}, key=["id"], key_pos=[0])


@pytest.mark.parametrize(("values", "literal"), [
    (["a", "b"], "'{\"a\",\"b\"}'"),
    ([], "'{}'"),
    ([""], "'{\"\"}'"),
    (["NULL"], "'{\"NULL\"}'"),
    ([None, "x"], "'{NULL,\"x\"}'"),
    (["it's"], "'{\"it''s\"}'"),
    (["a\\b", 'q"x'], "'{\"a\\\\b\",\"q\\\"x\"}'"),
    (["{,}", " sp "], "'{\"{,}\",\" sp \"}'"),
    ([None, "a\\", "'"], "'{NULL,\"a\\\\\",\"''\"}'"),
])
def test_array_literal_quotes_every_value(values: list[str | None], literal: str) -> None:
    assert bulk.array_literal(values) == literal


def test_positions_skip_columns_the_target_lacks() -> None:
    assert T.positions == (0, 1, 3)


def test_groups_split_by_operation_and_column_set() -> None:
    ins = [Insert(1, ("1", "a", "x", "n")), Insert(1, ("2", "b", "x", None))]
    upd = Update(1, None, None, ("1", "c", "x", UNCHANGED))
    dele = Delete(1, ("3", None, None, None), "K")
    gs = bulk.groups([(T, m) for m in [*ins, upd, dele]])
    assert [(g.op, g.positions, len(g.tuples)) for g in gs] == [
        ("I", (0, 1, 3), 2), ("U", (0, 1), 1), ("D", (0,), 1)]


def test_key_change_and_truncate_go_row_by_row() -> None:
    with pytest.raises(bulk.NotBulk, match="changes its key"):
        bulk.groups([(T, Update(1, ("1", None, None, None), "K", ("9", "a", "x", "n")))])
    with pytest.raises(bulk.NotBulk):
        bulk.groups([(T, Truncate((1,), False, False))])  # type: ignore[list-item]


def test_non_text_values_go_row_by_row() -> None:
    for rows in (1, bulk.SCALAR_ROWS + 1):  # scalar and array parameters alike
        gs = bulk.groups([(T, Insert(1, (str(i), b"\x00", "x", "n"))) for i in range(rows)])
        bulk.plan(gs)
        with pytest.raises(bulk.NotBulk, match="not text"):
            bulk.execute_sql("s", gs, bulk.BulkOrigin(1, datetime.now(UTC)))


def test_small_groups_pass_typed_values_and_large_ones_arrays() -> None:
    small = bulk.groups([(T, Insert(1, (str(i), "a", "x", "n"))) for i in range(2)])
    large = bulk.groups([(T, Insert(1, (str(i), "a", "x", "n")))
                         for i in range(bulk.SCALAR_ROWS + 1)])
    assert bulk.plan(small) == ((id(T), "I", (0, 1, 3), 2),)
    assert bulk.plan(large) == ((id(T), "I", (0, 1, 3), -1),)  # one shape for any count
    p = bulk.prepare_sql("rk_bulk_1", small, "pg_xact_commit_timestamp_origin")
    assert p.startswith('PREPARE rk_bulk_1 (oid, timestamptz, bigint, text, text, bigint, '
                        'text, text) AS WITH g0 AS (INSERT INTO "lis"."samples" '
                        '("id", "status", "note") VALUES ($3, $4, $5), ($6, $7, $8))')
    assert "jsonb_build_array($3::text), jsonb_build_array($6::text)" in p
    p = bulk.prepare_sql("rk_bulk_2", large, "pg_xact_commit_timestamp_origin")
    assert "(oid, timestamptz, text[], text[], text[])" in p and "unnest($3, $4, $5)" in p


def test_the_value_budget_bounds_scalar_parameters() -> None:
    wide = [(T, Insert(1, (str(i), "a", "x", "n"))) for i in range(bulk.SCALAR_ROWS)]
    gs = bulk.groups(wide + [(T, Update(1, None, None, (str(i), "b", "x", "m")))
                             for i in range(bulk.SCALAR_ROWS)])
    budget = bulk.SCALAR_PARAMS
    try:
        bulk.SCALAR_PARAMS = 3 * bulk.SCALAR_ROWS  # room for the inserts only
        bulk.plan(gs)
    finally:
        bulk.SCALAR_PARAMS = budget
    assert [g.scalar for g in gs] == [True, False]


def test_one_statement_checks_every_premise() -> None:
    gs = bulk.groups([(T, Insert(1, ("1", "a", "x", "n"))),
                      (T, Update(1, None, None, ("2", "b", "x", "m"))),
                      (T, Update(1, None, None, ("3", "c", "x", "o"))),
                      (T, Delete(1, ("4", None, None, None), "K"))])
    bulk.plan(gs)
    p = bulk.prepare_sql("rk_bulk_2", gs, "pg_xact_commit_timestamp_origin")
    assert "ON CONFLICT" not in p  # an existing key must fail, not be skipped
    assert p.count("x.roident = $1 AND x.timestamp < $2") == 2  # the update and the delete
    assert "FROM (VALUES ($6, $7, $8), ($9, $10, $11)) AS u(c0, c1, c2)" in p
    assert 'DELETE FROM "lis"."samples" AS t WHERE t."id" = $12 AND' in p
    assert "2 - (SELECT count(*) FROM g1) + 1 - (SELECT count(*) FROM g2)" in p
    assert "ringkeeper.fast_path_check(s.m)" in p and "OFFSET 0" in p
    e = bulk.execute_sql("rk_bulk_2", gs, bulk.BulkOrigin(7, datetime(2026, 1, 2, tzinfo=UTC)))
    assert e == ("EXECUTE rk_bulk_2(7, '2026-01-02T00:00:00+00:00', '1', 'a', 'n', "
                 "'2', 'b', 'm', '3', 'c', 'o', '4')")


def test_scalar_values_are_quoted_literals() -> None:
    gs = bulk.groups([(T, Insert(1, ("1", "it's", "x", None)))])
    bulk.plan(gs)
    e = bulk.execute_sql("s", gs, bulk.BulkOrigin(1, datetime(2026, 1, 2, tzinfo=UTC)))
    assert e.endswith("'1', 'it''s', NULL)")


def test_dirty_keys_one_row_per_table() -> None:
    assert bulk.dirty_sql({"lis.results": [["1", "2"], ["HB", "it's"]]}) == [
        "EXECUTE rk_dirty('lis.results', ARRAY['{\"1\",\"2\"}'::text[], "
        "'{\"HB\",\"it''s\"}'::text[]])"]
    g = bulk.groups([(T, Delete(1, ("4", None, None, None), "K")),
                     (T, Delete(1, ("5", None, None, None), "K"))])[0]
    assert bulk.group_keys(g) == [["4", "5"]]


BEGIN = Begin(final_lsn=500, commit_ts=datetime(2026, 1, 1, tzinfo=UTC), xid=9)


@pytest.mark.parametrize(("origin", "carries", "want"), [
    (None, None, ("a", 500)),                                   # written at the source
    (Origin(77, names.origin_name("r", "c")), None, ("c", 77)),  # forwarded: true origin
    (Origin(77, names.origin_name("r", names.SEED)), None, None),  # stock-sync copy
    (Origin(77, "pg_16384"), None, ("a", 500)),                  # a foreign origin
    (Origin(77, names.origin_name("r", "c")), frozenset({"a"}), None),  # not carried
])
def test_route(origin: Origin | None, carries: frozenset[str] | None,
               want: tuple[str, int] | None) -> None:
    assert route("r", "a", BEGIN, origin, carries) == want


def test_scram_matches_rfc7677() -> None:
    server_first = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    proof, server_sig = scram_client_proof(
        "pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", server_first,
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    assert base64.b64encode(server_sig).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_conn_params_from_ring_dsn() -> None:
    p = ConnParams.from_dsn("postgresql://rk%40x:p%2Fw@10.0.0.1:5433/lis?sslmode=require")
    assert (p.user, p.password, p.host, p.port, p.database, p.sslmode) == (
        "rk@x", "p/w", "10.0.0.1", 5433, "lis", "require")
    with pytest.raises(ValueError, match="postgresql://"):
        ConnParams.from_dsn("host=x dbname=y")


def test_route_drops_the_targets_own_changes() -> None:
    back = Origin(77, names.origin_name("r", "b"))
    assert route("r", "a", BEGIN, back, None, local="b") is None
    assert route("r", "a", BEGIN, back, None, local="c") == ("b", 77)


@pytest.mark.parametrize(("source", "carries", "want"), [
    ("a", frozenset({"a"}), True),        # mesh link, or a two-member ring
    ("a", frozenset({"a", "c"}), False),  # a ring link forwarding c's changes
    ("a", None, False),                   # everything but ours
])
def test_only_source_changes(source: str, carries: frozenset[str] | None, want: bool) -> None:
    assert only_source_changes(source, carries) is want


@pytest.mark.parametrize(("engine", "version", "want"), [
    ("postgresql", "15", False), ("postgresql", "16", True), ("postgresql", "17", True),
    ("postgresql", "18", True), ("kingbase", "V9R1", False)])
def test_origin_filter_needs_postgresql_16(engine: str, version: str, want: bool) -> None:
    from ringkeeper.engines import profile_for
    assert profile_for(engine, version).origin_filter is want

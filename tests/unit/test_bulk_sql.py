"""The bulk apply path's SQL building, the link's routing and the walsender client's
SCRAM maths: pure parts, no server (the integration tests run them for real)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from ringkeeper.sync import bulk, names
from ringkeeper.sync.apply import TableMap
from ringkeeper.sync.link import only_source_changes, route
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
    g = bulk.groups([(T, Insert(1, ("1", b"\x00", "x", "n")))])[0]
    with pytest.raises(bulk.NotBulk, match="not text"):
        bulk.execute_sql("s", g, bulk.Origin(1, datetime.now(UTC)))


def test_statements_check_their_premise() -> None:
    ins, upd = bulk.groups([(T, Insert(1, ("1", "a", "x", "n"))),
                            (T, Update(1, None, None, ("2", "b", "x", "m")))])
    p = bulk.prepare_sql("rk_bulk_1", ins, "pg_xact_commit_timestamp_origin")
    assert p.startswith("PREPARE rk_bulk_1 (text[], text[], text[]) AS")
    assert "ringkeeper.tombstones" in p and "ringkeeper.dirty_key_sets" in p
    assert "ON CONFLICT" not in p  # an existing key must fail, not be skipped
    p = bulk.prepare_sql("rk_bulk_2", upd, "pg_xact_commit_timestamp_origin")
    assert "x.roident = $4 AND x.timestamp <= $5" in p and "$6 - (SELECT count(*)" in p
    e = bulk.execute_sql("rk_bulk_2", upd, bulk.Origin(7, datetime(2026, 1, 2, tzinfo=UTC)))
    assert e == ("EXECUTE rk_bulk_2('{\"2\"}', '{\"b\"}', '{\"m\"}', 7, "
                 "'2026-01-02T00:00:00+00:00', 1)")


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

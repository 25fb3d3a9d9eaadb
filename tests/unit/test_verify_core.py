"""The pure verification engine: chunks, digests, classification, settling, repair plans,
progress and the report."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.core.conflicts import Policy
from ringkeeper.core.verify import (
    HASH_MODULUS,
    Chunk,
    Digest,
    KeyDifference,
    MemberConn,
    RowVersion,
    chunk_count,
    chunks_between,
    classify,
    combine,
    digests_differ,
    needs_bisection,
    plan_integer_chunks,
    plan_sampled_chunks,
    recheck_delays,
    settle_verdict,
    split_points,
    xor_combine,
)
from ringkeeper.core.verify_repair import plan_fixes, policy_winner
from ringkeeper.core.verify_report import Progress, Report, TableReport, render_text

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def k(*parts: object) -> tuple[str, ...]:
    return tuple(str(p) for p in parts)


# ---- chunk planning ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "chunk_rows", "expected"),
    [(0, 10, 1), (10, 10, 1), (11, 10, 2), (1_000_000, 100_000, 10), (-1, 5, 1)],
)
def test_chunk_count(rows: int, chunk_rows: int, expected: int) -> None:
    assert chunk_count(rows, chunk_rows) == expected


def test_chunk_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        chunk_count(10, 0)


@pytest.mark.parametrize(
    ("lo", "hi", "rows", "chunk_rows", "bounds"),
    [
        (1, 100, 100, 25, ["26", "51", "76"]),
        (1, 100, 100, 1000, []),  # one open chunk
        (5, 5, 1, 1, []),  # a single key
        (-10, 9, 20, 10, ["0"]),
        (1, 10, 1000, 1, [str(i) for i in range(2, 11)]),  # never more chunks than keys
    ],
)
def test_integer_chunks_are_contiguous_and_open_ended(lo: int, hi: int, rows: int,
                                                      chunk_rows: int,
                                                      bounds: list[str]) -> None:
    chunks = plan_integer_chunks(lo, hi, rows, chunk_rows)
    assert chunks[0].lo is None and chunks[-1].hi is None  # rows outside [lo, hi] too
    assert [c.lo[0] for c in chunks[1:] if c.lo] == bounds
    for a, b in itertools.pairwise(chunks):
        assert a.hi == b.lo  # no gap, no overlap


def test_sampled_chunks_use_quantiles_and_drop_duplicates() -> None:
    samples = [k("a", i // 3) for i in range(30)]  # every key sampled three times
    chunks = plan_sampled_chunks(samples, rows=1000, chunk_rows=100)
    bounds = [c.lo for c in chunks[1:]]
    assert len(bounds) == len(set(bounds)) == 9
    assert chunks[0] == Chunk(None, k("a", 1)) and chunks[-1].hi is None
    assert plan_sampled_chunks([], rows=1000, chunk_rows=100) == [Chunk(None, None)]


def test_chunks_between_skips_bounds_equal_to_the_edges() -> None:
    chunks = chunks_between([k(1), k(1), k(5), k(9)], lo=k(1), hi=k(9))
    assert chunks == [Chunk(k(1), k(5)), Chunk(k(5), k(9))]


@pytest.mark.parametrize(("n", "parts", "expected"),
                         [(100, 4, ["25", "50", "75"]), (1, 4, []), (10, 1, []),
                          (3, 16, ["1", "2"])])
def test_split_points(n: int, parts: int, expected: list[str]) -> None:
    keys = [k(i) for i in range(n)]
    assert [p[0] for p in split_points(keys, parts)] == expected


# ---- digests ----------------------------------------------------------------------------


def test_sum_is_order_independent_and_modular() -> None:
    hashes = [2**63 - 1, -(2**63), 12345, -1]
    assert combine(hashes) == combine(reversed(hashes))
    assert 0 <= combine(hashes).total < HASH_MODULUS
    assert combine(hashes[:2]) + combine(hashes[2:]) == combine(hashes)


def test_sum_does_not_cancel_pairs_like_xor() -> None:
    """Two rows with the same hash (e.g. a row duplicated by a bad repair, or two rows
    damaged alike) vanish under XOR; the sum still sees them."""
    good = [11, 22]
    bad = [11, 22, 99, 99]
    assert xor_combine(good) == xor_combine(bad)  # XOR is fooled
    assert combine(good).total != combine(bad).total
    assert digests_differ({"a": combine(good), "b": combine(bad)})


@pytest.mark.parametrize(
    ("digests", "leaf_rows", "differ", "bisect"),
    [
        ({"a": Digest(10, 5), "b": Digest(10, 5)}, 4, False, False),
        ({"a": Digest(10, 5), "b": Digest(10, 5 + HASH_MODULUS)}, 4, False, False),
        ({"a": Digest(10, 5), "b": Digest(10, 6)}, 4, True, True),
        ({"a": Digest(3, 5), "b": Digest(4, 5)}, 4, True, False),  # small: fetch rows
        ({"a": Digest(3, 5), "b": Digest(3, 5), "c": Digest(9, 1)}, 4, True, True),
    ],
)
def test_which_chunks_differ_and_recurse(digests: dict[str, Digest], leaf_rows: int,
                                         differ: bool, bisect: bool) -> None:
    assert digests_differ(digests) is differ
    assert needs_bisection(digests, leaf_rows) is bisect


# ---- classification ---------------------------------------------------------------------

MEMBERS = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("hashes", "reference", "missing", "extra", "differs"),
    [
        ({"a": 1, "b": 1, "c": 1}, None, None, None, None),  # all agree
        ({"a": None, "b": None, "c": None}, None, None, None, None),  # gone everywhere
        ({"a": 1, "b": None, "c": 1}, None, ["b"], [], []),
        ({"a": None, "b": 2, "c": None}, None, [], ["b"], []),
        ({"a": 1, "b": 2, "c": 3}, None, [], [], ["b", "c"]),
        ({"a": 1, "b": None, "c": 3}, None, ["b"], [], ["c"]),
        ({"a": 1, "b": None, "c": 3}, "c", ["b"], [], ["a"]),
        ({"a": 1, "b": 1}, None, ["c"], [], []),  # a member without the key at all
    ],
)
def test_classify(hashes: dict[str, int | None], reference: str | None,
                  missing: list[str] | None, extra: list[str] | None,
                  differs: list[str] | None) -> None:
    d = classify("public.t", k(7), hashes, MEMBERS, reference)
    if missing is None:
        assert d is None
        return
    assert d is not None and d.key == ["7"]
    assert (d.missing_on, d.extra_on, d.differs_on) == (missing, extra, differs)
    kinds = [kind for kind, members in (("missing_on", missing), ("extra_on", extra),
                                        ("differs", differs)) if members]
    assert d.kinds == kinds


# ---- settling under traffic ------------------------------------------------------------


@pytest.mark.parametrize(
    ("agree", "stable_for", "newest_age", "verdict"),
    [
        (True, 0.0, 0.0, "converged"),
        (False, 0.5, 100.0, "wait"),  # changed recently: lag draining
        (False, 5.0, 0.5, "wait"),  # newest version still young
        (False, 5.0, 10.0, "persistent"),
        (False, 5.0, None, "persistent"),  # a deletion: no commit time, stability decides
        (False, 0.0, None, "wait"),
    ],
)
def test_settle_verdict(agree: bool, stable_for: float, newest_age: float | None,
                        verdict: str) -> None:
    assert settle_verdict(agree, stable_for, newest_age, settle_seconds=2.0) == verdict


def test_zero_settle_reports_at_once() -> None:
    assert settle_verdict(False, 0.0, 0.0, settle_seconds=0) == "persistent"


def test_recheck_backoff_doubles_up_to_a_cap_within_the_timeout() -> None:
    assert recheck_delays(0.25, 1.0, 5.0) == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert sum(recheck_delays(0.1, 2.0, 30.0)) <= 30.0
    assert recheck_delays(1.0, 1.0, 0.5) == []


# ---- repair plans ------------------------------------------------------------------------

RING = [MemberConn.for_ring("r", "a", "dsn-a", priority=100),
        MemberConn.for_ring("r", "b", "dsn-b", priority=200),
        MemberConn.for_ring("r", "c", "dsn-c", priority=100)]


def v(h: str | None, at: datetime | None = T0, origin: str = "",
      **values: str | None) -> RowVersion:
    if h is None:
        return RowVersion()
    return RowVersion(row_hash=h, committed_at=at, origin=origin,
                      values={"id": "1", **values} if values else {"id": "1", "x": h})


def diff(**versions: RowVersion) -> KeyDifference:
    return KeyDifference(table="public.t", key=["1"], reference="a", versions=versions)


def test_origin_names_follow_the_ring() -> None:
    assert RING[0].origin_name == "rk_r_a"
    assert MemberConn("x", "dsn").origin_name == ""  # not in a ring: attributed nothing


@pytest.mark.parametrize(
    ("versions", "winner"),
    [
        ({"a": v("1", T0), "b": v("2", T0 + timedelta(seconds=1))}, "b"),  # newest wins
        ({"a": v("1", T0 + timedelta(seconds=1)), "b": v("2", T0)}, "a"),
        ({"a": v("1", T0), "b": v("2", T0), "c": v("3", T0)}, "b"),  # tie: priority
        ({"a": v("1", T0), "c": v("3", T0)}, "c"),  # tie, same priority: name
        ({"a": v(None), "c": v("3", T0)}, "c"),  # presence beats absence
        ({"a": v(None), "b": v(None)}, None),
        # written at b, held by a: the origin's priority counts, not the holder's
        ({"a": v("1", T0, origin="rk_r_b"), "c": v("3", T0)}, "a"),
        ({"a": v("1", None), "c": v("3", T0)}, "c"),  # unknown time is oldest
    ],
)
def test_policy_winner(versions: dict[str, RowVersion], winner: str | None) -> None:
    assert policy_winner(versions, RING) == winner


def test_campus_priority_policy_ignores_time() -> None:
    versions = {"a": v("1", T0 + timedelta(hours=1)), "b": v("2", T0)}
    assert policy_winner(versions, RING, Policy.CAMPUS_PRIORITY) == "b"


def test_fixes_from_a_source_upsert_and_delete() -> None:
    d = diff(a=v("1", T0, origin="rk_r_c", x="good"), b=v("2", x="bad"), c=v(None))
    fixes = plan_fixes(d, RING, source="a")
    assert [(f.member, f.action, f.origin, f.committed_at) for f in fixes] == [
        ("b", "upsert", "rk_r_c", T0), ("c", "upsert", "rk_r_c", T0)]
    assert fixes[0].values == {"id": "1", "x": "good"}
    d2 = diff(a=v(None), b=v("2"), c=v(None))
    [f] = plan_fixes(d2, RING, source="a")
    assert (f.member, f.action, f.origin, f.values) == ("b", "delete", "rk_r_a", None)


def test_local_write_at_the_winner_travels_under_its_own_origin() -> None:
    d = diff(a=v("1", T0), b=v("2", T0 + timedelta(minutes=1)),
             c=v("2", T0 + timedelta(minutes=1), origin="rk_r_b"))
    [f] = plan_fixes(d, RING)
    assert (f.member, f.source, f.origin, f.committed_at) == (
        "a", "b", "rk_r_b", T0 + timedelta(minutes=1))
    assert "policy lastWriterWins" in f.reason


def test_members_already_equal_to_the_winner_are_left_alone() -> None:
    d = diff(a=v("1"), b=v("1"), c=v("9", T0 - timedelta(days=1)))
    assert [f.member for f in plan_fixes(d, RING)] == ["c"]


def test_unknown_source_is_an_error() -> None:
    with pytest.raises(ValueError, match="source member 'z'"):
        plan_fixes(diff(a=v("1")), RING, source="z")


# ---- progress ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "fraction", "rate", "eta"),
    [
        (Progress("t", "hash", 5, 10, 500, 1000, 2.0), 0.5, 250.0, 2.0),
        (Progress("t", "hash", 0, 10, 0, 1000, 0.0), 0.0, 0.0, None),
        (Progress("t", "hash", 3, 4, 0, 0, 3.0), 0.75, 0.0, 1.0),  # chunks only
        (Progress("t", "hash", 1, 1, 1200, 1000, 1.0), 1.0, 1200.0, 0.0),  # estimate low
    ],
)
def test_progress_arithmetic(p: Progress, fraction: float, rate: float,
                             eta: float | None) -> None:
    assert p.fraction == pytest.approx(fraction)
    assert p.rows_per_s == pytest.approx(rate)
    assert p.eta_s == (None if eta is None else pytest.approx(eta))
    assert p.table in p.line()


# ---- report -----------------------------------------------------------------------------


def _report() -> Report:
    d = classify("public.t", k(42), {"a": 1, "b": None}, ["a", "b"])
    assert d is not None
    d.versions = {"a": v("1", x="x" * 100), "b": v(None)}
    table = TableReport(table="public.t", key_columns=["id"], mode="full",
                        rows={"a": 10, "b": 9}, chunks=2, chunks_differing=1,
                        keys_touched=5, differences=[d])
    return Report(mode="full", members=["a", "b"], reference="a", started_at=T0,
                  tables=[table, TableReport(table="public.u", key_columns=["id"],
                                             mode="full")],
                  skipped={"public.log": "no primary key"})


def test_report_round_trips_through_json() -> None:
    r = _report()
    back = Report.model_validate_json(r.model_dump_json())
    assert back == r and not back.passed
    assert json.loads(r.model_dump_json())["tables"][0]["differences"][0]["missing_on"] == ["b"]


def test_report_text_names_each_differing_key() -> None:
    text = render_text(_report())
    lines = text.splitlines()
    assert "1 differing key(s)" in lines[0]
    assert any("public.log: NOT VERIFIED (no primary key)" in line for line in lines)
    row = next(line for line in lines if line.startswith("public.t  42"))
    assert "missing_on" in row and "(absent)" in row and "…" in row
    assert lines[-2].split()[:4] == ["TABLE", "KEY", "KIND", "MEMBER"]


def test_passing_report_says_so() -> None:
    r = Report(mode="incremental", members=["a", "b"], reference="a", started_at=T0,
               tables=[TableReport(table="public.t", key_columns=["id"], mode="incremental")])
    assert r.passed and "PASSED" in r.render_text()

"""Workload keys, ledger bookkeeping, plans and command-line parsing (no database).

Keys: the site | run | counter layout is a bijection inside its fields, so no two sites
(and no two runs of one site) can produce the same key; hypothesis searches for a
counter-example. Ledger: single-writer keys expect exactly the last acknowledged write,
keys several sites wrote accept any site's last write, deletes expect no row, and the
JSON-lines file replays to the same expectations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.workload import HOSPITAL_DAY_SPECIMENS, ChangeKind, Entry, Ledger, plan
from ringkeeper.workload.cli import Usage, parse_dsn
from ringkeeper.workload.keys import (
    MAX_COUNTER,
    MAX_RUN,
    MAX_SITE,
    KeySource,
    KeySpaceError,
    barcode,
    barcode_ok,
    compose,
    decompose,
    site_range,
    valid_site_name,
)
from ringkeeper.workload.ledger import LedgerError

sites = st.integers(1, MAX_SITE)
runs = st.integers(1, MAX_RUN)
counters = st.integers(1, MAX_COUNTER)


@given(sites, runs, counters)
def test_a_key_round_trips_and_fits_a_bigint(site: int, run: int, counter: int) -> None:
    key = compose(site, run, counter)
    assert 0 < key < 2**63
    assert decompose(key) == (site, run, counter)
    lo, hi = site_range(site)
    assert lo <= key <= hi


@given(st.tuples(sites, runs, counters), st.tuples(sites, runs, counters))
def test_different_sites_or_runs_never_share_a_key(
        a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (compose(*a) == compose(*b)) == (a == b)


@given(st.integers(1, MAX_SITE - 1))
def test_site_ranges_do_not_overlap(site: int) -> None:
    assert site_range(site)[1] < site_range(site + 1)[0]


@pytest.mark.parametrize("bad", [(0, 1, 1), (MAX_SITE + 1, 1, 1), (1, 0, 1),
                                 (1, MAX_RUN + 1, 1), (1, 1, 0), (1, 1, MAX_COUNTER + 1)])
def test_out_of_field_parts_are_refused(bad: tuple[int, int, int]) -> None:
    with pytest.raises(KeySpaceError):
        compose(*bad)


def test_two_sources_interleaved_never_collide() -> None:
    a, b, a2 = KeySource(1, 1), KeySource(2, 1), KeySource(1, 2)
    keys = [k for _ in range(1000) for k in (a.next(), b.next(), a2.next())]
    assert len(set(keys)) == len(keys) == 3000


@given(st.integers(1, 2**63 - 1))
def test_barcodes_carry_a_luhn_digit_that_catches_a_single_wrong_digit(key: int) -> None:
    code = barcode(key)
    assert barcode_ok(code) and int(code[:-1]) == key
    wrong = code[:5] + str((int(code[5]) + 1) % 10) + code[6:]
    assert not barcode_ok(wrong)


@pytest.mark.parametrize("name", ["North", "a_b", "-a", "a-", "", "a" * 64, "a;drop"])
def test_site_names_must_be_dns_labels(name: str) -> None:
    with pytest.raises(ValueError):
        valid_site_name(name)


def _ledger(path: Path | None = None) -> Ledger:
    led = Ledger(path)
    led.add_site("north", 1)
    led.add_site("south", 2)
    return led


def test_single_writer_keys_expect_the_last_write_and_deletes_no_row(tmp_path: Path) -> None:
    n, s = KeySource(1, 1), KeySource(2, 1)
    led = _ledger(tmp_path / "l.jsonl")
    order, item = n.next(), n.next()
    led.record([Entry("north", "orders", order, order, ChangeKind.INSERT, 1.0),
                Entry("north", "order_items", item, item, ChangeKind.INSERT, 1.0)])
    newer = n.next()
    led.record([Entry("north", "orders", order, newer, ChangeKind.UPDATE, 2.0)])
    led.record([Entry("north", "order_items", item, n.next(), ChangeKind.DELETE, 3.0)])
    result = s.next()
    led.record([Entry("south", "results", result, result, ChangeKind.INSERT, 4.0)])
    led.close()
    got = {(e.table, e.key): (e.allowed, e.contested) for e in led.expectations()}
    assert got == {("orders", order): ({newer}, False), ("order_items", item): ({None}, False),
                   ("results", result): ({result}, False)}
    assert led.last_rev("orders", order) == newer
    assert led.summary()["north"] == {"commits": 3, "in_doubt": 0, "insert": 2, "update": 1,
                                      "delete": 1}
    assert set(Ledger.load(tmp_path / "l.jsonl").expectations()) == set(led.expectations())
    assert Ledger.load(tmp_path / "l.jsonl").summary() == led.summary()


def test_a_commit_in_doubt_allows_its_versions_until_the_next_acknowledged_write(
        tmp_path: Path) -> None:
    """A COMMIT that broke off may or may not have happened: the key may hold the
    acknowledged version or the doubtful one (an update's rev, None for a delete), the
    doubt counts as no commit, and the site's next acknowledged write ends it. A key only
    a doubtful commit wrote is not checked (a row found that was never acknowledged is
    fine); the file replays the same."""
    n, s = KeySource(1, 1), KeySource(2, 1)
    led = _ledger(tmp_path / "l.jsonl")
    order, item, fresh = n.next(), n.next(), n.next()
    led.record([Entry("north", "orders", order, order, ChangeKind.INSERT, 1.0),
                Entry("north", "order_items", item, item, ChangeKind.INSERT, 1.0)])
    upd, gone = n.next(), n.next()
    led.record_in_doubt([Entry("north", "orders", order, upd, ChangeKind.UPDATE, 2.0),
                         Entry("north", "order_items", item, gone, ChangeKind.DELETE, 2.0),
                         Entry("north", "specimens", fresh, fresh, ChangeKind.INSERT, 2.0)])
    got = {(e.table, e.key): e.allowed for e in led.expectations()}
    assert got == {("orders", order): {order, upd}, ("order_items", item): {item, None}}
    assert led.commits["north"] == 1 and led.summary()["north"]["in_doubt"] == 1
    assert led.doubtful("orders", order) == {upd}
    # another site's acknowledged write does not end north's doubt; north's own does
    fix = s.next()
    led.record([Entry("south", "orders", order, fix, ChangeKind.UPDATE, 3.0)])
    (e,) = [e for e in led.expectations() if e.table == "orders"]
    assert e.contested and e.allowed == {order, upd, fix}
    final = n.next()
    led.record([Entry("north", "orders", order, final, ChangeKind.UPDATE, 4.0)])
    (e,) = [e for e in led.expectations() if e.table == "orders"]
    assert e.allowed == {final, fix} and led.doubtful("orders", order) == frozenset()
    led.close()
    again = Ledger.load(tmp_path / "l.jsonl")
    assert set(again.expectations()) == set(led.expectations())
    assert again.summary() == led.summary()
    with pytest.raises(LedgerError):  # a doubt still names its site's own revs
        led.record_in_doubt([Entry("north", "orders", order, s.next(), ChangeKind.UPDATE, 5.0)])


def test_only_an_error_answer_to_commit_is_a_verdict() -> None:
    """ERROR: rolled back, session alive. FATAL (the session ended while COMMIT waited for
    its standbys: committed locally), a broken or timed-out connection: in doubt."""
    import asyncpg

    from ringkeeper.workload.flow import commit_in_doubt

    def pg(cls: type[asyncpg.PostgresError], code: str, severity: str) -> BaseException:
        exc: BaseException = cls.new({"S": severity, "V": severity, "C": code, "M": "x"})
        return exc

    assert not commit_in_doubt(pg(asyncpg.SerializationError, "40001", "ERROR"))
    assert not commit_in_doubt(pg(asyncpg.UniqueViolationError, "23505", "ERROR"))
    assert commit_in_doubt(pg(asyncpg.AdminShutdownError, "57P01", "FATAL"))
    assert commit_in_doubt(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    assert commit_in_doubt(ConnectionResetError())
    assert commit_in_doubt(TimeoutError())


def test_a_key_written_by_two_sites_accepts_either_sites_last_write() -> None:
    n, s = KeySource(1, 1), KeySource(2, 1)
    led = _ledger()
    rid = n.next()
    led.record([Entry("north", "results", rid, rid, ChangeKind.INSERT, 1.0)])
    fix_n1, fix_s, fix_n2 = n.next(), s.next(), n.next()
    led.record([Entry("north", "results", rid, fix_n1, ChangeKind.UPDATE, 2.0)])
    led.record([Entry("south", "results", rid, fix_s, ChangeKind.UPDATE, 2.1)])
    led.record([Entry("north", "results", rid, fix_n2, ChangeKind.UPDATE, 2.2)])
    (e,) = led.expectations()
    # north's own earlier versions are superseded by its later one; south's may win
    assert e.contested and e.writers == {"north", "south"} and e.allowed == {fix_n2, fix_s}
    with pytest.raises(LedgerError):
        led.last_rev("results", rid)


def test_the_ledger_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    led = _ledger()
    s = KeySource(2, 1)
    with pytest.raises(LedgerError):  # a rev north could not have issued
        led.record([Entry("north", "results", 5, s.next(), ChangeKind.INSERT, 1.0)])
    with pytest.raises(LedgerError):
        led.record([Entry("east", "results", 5, 5, ChangeKind.INSERT, 1.0)])
    with pytest.raises(LedgerError):
        led.record([Entry("south", "nope", 5, s.next(), ChangeKind.INSERT, 1.0)])
    with pytest.raises(LedgerError):
        led.add_site("east", 1)  # number 1 is north's
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"format": "ringkeeper-lis-ledger/1"}) + "\n{not json\n")
    with pytest.raises(LedgerError, match=r"bad\.jsonl:2"):
        Ledger.load(bad)


def test_plan_defaults_to_a_hospital_day_in_ten_minutes() -> None:
    p = plan()
    assert (p.specimens, p.duration) == (HOSPITAL_DAY_SPECIMENS, 600.0)
    assert p.rate == pytest.approx(HOSPITAL_DAY_SPECIMENS / 600)
    assert plan(rate=10, duration=30).specimens == 300
    assert plan(specimens=100, rate=20).duration == 5
    assert plan(specimens=0, duration=20, rate=0).rate == 0
    with pytest.raises(ValueError):
        plan(rate=-1)


def test_dsn_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_dsn("north=postgresql://u:p@h/db") == ("north", "postgresql://u:p@h/db")
    monkeypatch.setenv("RK_TEST_DSN", "postgres://x@h/d")
    assert parse_dsn("south=env:RK_TEST_DSN") == ("south", "postgres://x@h/d")
    for bad in ("north", "North=postgresql://h/d", "a=env:RK_NOT_SET_ANYWHERE",
                "a=host=h dbname=d", "a;b=postgresql://h/d"):
        with pytest.raises(Usage):
            parse_dsn(bad)


def test_a_ledger_file_is_new_unless_continued(tmp_path: Path) -> None:
    """Another database's run 1 has the same keys as this one's: an old file is never
    appended to by accident (that once made a passing run look like lost commits)."""
    path = tmp_path / "l.jsonl"
    led = _ledger(path)
    k = KeySource(1, 1).next()
    led.record([Entry("north", "patients", k, k, ChangeKind.INSERT, 1.0)])
    led.close()
    with pytest.raises(FileExistsError):
        Ledger(path)
    more = Ledger(path, append=True)
    k2 = KeySource(1, 2).next()
    more.record([Entry("north", "patients", k2, k2, ChangeKind.INSERT, 2.0)])
    more.close()
    assert {e.key for e in Ledger.load(path).expectations()} == {k, k2}

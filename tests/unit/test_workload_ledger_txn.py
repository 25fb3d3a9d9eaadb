"""The ledger names the commit of each row's last acknowledged version, so a check counts
lost transactions, not rows (issue 18): the rows of one commit share one serial, a
superseded version forgets its commit, a replayed file gives the same serials, and a
contested key's expectation carries every site's last acknowledged rev (a delete's too)."""

from __future__ import annotations

from pathlib import Path

from ringkeeper.workload.keys import KeySource
from ringkeeper.workload.ledger import ChangeKind, Entry, Ledger


def _ledger(path: Path | None = None) -> tuple[Ledger, dict[str, int]]:
    ledger = Ledger(path)
    ledger.add_site("north", 1)
    ledger.add_site("south", 2)
    n, s = KeySource(1, 1), KeySource(2, 1)
    order, items = n.next(), n.take(5)
    k: dict[str, int] = {"order": order, **{f"item{i}": x for i, x in enumerate(items)}}
    # one commit: an order with five items (six rows)
    ledger.record([Entry("north", "orders", order, order, ChangeKind.INSERT, 1.0),
                   *(Entry("north", "order_items", x, x, ChangeKind.INSERT, 1.0)
                     for x in items)])
    # a second commit updates the order (its insert's version is superseded)
    k["order_rev2"] = n.next()
    ledger.record([Entry("north", "orders", order, k["order_rev2"], ChangeKind.UPDATE, 2.0)])
    # a third deletes one item
    k["del"] = n.next()
    ledger.record([Entry("north", "order_items", items[4], k["del"], ChangeKind.DELETE, 3.0)])
    # south corrects item 0 too: a contested key with two sites' last writes
    k["south"] = s.next()
    ledger.record([Entry("south", "order_items", items[0], k["south"], ChangeKind.UPDATE,
                         4.0)])
    # a commit in doubt gets no serial
    ledger.record_in_doubt([Entry("north", "order_items", items[1], n.next(),
                                  ChangeKind.UPDATE, 5.0)])
    return ledger, k


def test_rows_of_one_commit_share_its_serial_and_superseded_revs_are_forgotten() -> None:
    ledger, k = _ledger()
    first = {ledger.transaction_of(k[f"item{i}"]) for i in range(4)}
    assert first == {1}, first
    assert ledger.transaction_of(k["order"]) is None  # superseded by commit 2
    assert ledger.transaction_of(k["order_rev2"]) == 2
    assert ledger.transaction_of(k["item4"]) is None and ledger.transaction_of(k["del"]) == 3
    assert ledger.transaction_of(k["south"]) == 4


def test_expectations_carry_the_acknowledged_revs() -> None:
    ledger, k = _ledger()
    by_key = {(e.table, e.key): e for e in ledger.expectations()}
    assert by_key[("orders", k["order"])].acked == {k["order_rev2"]}
    deleted = by_key[("order_items", k["item4"])]
    assert deleted.allowed == {None} and deleted.acked == {k["del"]}
    contested = by_key[("order_items", k["item0"])]
    assert contested.contested and contested.acked == {k["item0"], k["south"]}
    doubtful = by_key[("order_items", k["item1"])]
    assert doubtful.acked == {k["item1"]} and len(doubtful.allowed) == 2


def test_replayed_file_names_the_same_commits(tmp_path: Path) -> None:
    live, k = _ledger(tmp_path / "l.jsonl")
    live.close()
    again = Ledger.load(tmp_path / "l.jsonl")
    for rev in k.values():
        assert again.transaction_of(rev) == live.transaction_of(rev), rev
    assert set(again.expectations()) == set(live.expectations())

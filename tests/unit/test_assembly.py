"""sync.assembly: pgoutput messages in, whole transactions or parts out, against a
model computed independently from the transactions fed, whatever the batch cuts."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkeeper.core import names
from ringkeeper.sync.apply import Txn
from ringkeeper.sync.assembly import Assembler, Event, Part, Skip
from ringkeeper.sync.pgoutput import Insert, Relation

EPOCH_MICROS = 946_684_800_000_000  # PostgreSQL's epoch, 2000-01-01
TS_MICROS = 800_000_000_000_000
TS = datetime.fromtimestamp((EPOCH_MICROS + TS_MICROS) / 1e6, UTC)


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack(">qqI", final_lsn, TS_MICROS, xid)


def commit(end_lsn: int) -> bytes:
    return b"C" + struct.pack(">bqqq", 0, end_lsn - 8, end_lsn, TS_MICROS)


def origin(name: str, lsn: int) -> bytes:
    return b"O" + struct.pack(">q", lsn) + _s(name)


def relation(oid: int) -> bytes:
    return (b"R" + struct.pack(">I", oid) + _s("public") + _s(f"t{oid}") + b"d"
            + struct.pack(">h", 1) + b"\x01" + _s("id") + struct.pack(">Ii", 23, -1))


def insert(relid: int, value: int) -> bytes:
    raw = str(value).encode()
    return b"I" + struct.pack(">I", relid) + b"N" + struct.pack(">hcI", 1, b"t", len(raw)) + raw


TRUNCATE = b"T" + struct.pack(">IbI", 1, 0, 7)  # not replicated: dropped
TYPE = b"Y" + struct.pack(">I", 16385) + _s("public") + _s("mood")
MESSAGE = b"M" + struct.pack(">bq", 1, 99) + _s("x") + struct.pack(">I", 1) + b"!"

RING = "r"
SOURCE = "a"
LOCAL = "c"


@dataclass(frozen=True)
class Spec:
    """One transaction as the test writes it."""

    origin: str | None  # member name, names.SEED, "foreign", or None (no Origin message)
    rows: int
    relation_first: bool
    noise: bool  # a Truncate / Type / logical message inside it


def transaction(i: int, spec: Spec) -> list[bytes]:
    final = 1000 * (i + 1)
    out = [begin(final, i)]
    if spec.origin is not None:
        name = "foreign" if spec.origin == "foreign" else names.origin_name(RING, spec.origin)
        out.append(origin(name, 10 * (i + 1)))
    if spec.relation_first:
        out.append(relation(100 + i))
    if spec.noise:
        out += [TRUNCATE, TYPE, MESSAGE]
    out += [insert(100 + i, i * 10_000 + r) for r in range(spec.rows)]
    out.append(commit(final + 8))
    return out


def expected(specs: list[Spec], part_rows: int) -> list[object]:
    """The model: normalized events (kind, origin, origin LSN, end, row values)."""
    out: list[object] = []
    for i, spec in enumerate(specs):
        final, end = 1000 * (i + 1), 1000 * (i + 1) + 8
        if spec.relation_first:
            out.append(("R", 100 + i))
        if spec.origin in (None, "foreign"):
            routed: tuple[str, int] | None = (SOURCE, final)
        elif spec.origin in (names.SEED, LOCAL):
            routed = None
        else:
            routed = (spec.origin, 10 * (i + 1))
        values = [str(i * 10_000 + r) for r in range(spec.rows)]
        if routed is None or not values:
            out.append(("S", end))
        elif len(values) < part_rows:
            out.append(("T", *routed, end, values))
        else:
            full = len(values) // part_rows
            for p in range(full):
                out.append(("P", *routed, p == 0, None,
                            values[p * part_rows:(p + 1) * part_rows]))
            out.append(("P", *routed, False, end, values[full * part_rows:]))
    return out


def normalize(ev: Event) -> object:
    if isinstance(ev, Relation):
        return ("R", ev.oid)
    if isinstance(ev, Skip):
        return ("S", ev.end_lsn)
    vals = [m.new[0] for m in ev.changes if isinstance(m, Insert)]
    if isinstance(ev, Txn):
        assert ev.commit_ts == TS
        return ("T", ev.origin, ev.origin_lsn, ev.end_lsn, vals)
    assert isinstance(ev, Part)
    return ("P", ev.origin, ev.origin_lsn, ev.first, ev.end_lsn, vals)


def run(stream: list[bytes], cuts: list[int], part_rows: int,
        bundle_rows: int) -> tuple[list[list[Event]], list[bool]]:
    """Feed `stream` in batches cut at `cuts`, as the link's reader does; returns the
    queue items and, after each batch, whether a transaction was open."""
    asm = Assembler(RING, SOURCE, LOCAL, None, part_rows=part_rows, bundle_rows=bundle_rows)
    queue: list[list[Event]] = []
    open_after: list[bool] = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        for data in stream[lo:hi]:
            full = asm.feed(data)
            if full is not None:
                queue.append(full)
        rest = asm.take()
        if rest:
            queue.append(rest)
        open_after.append(asm.in_transaction)
    return queue, open_after


SPECS = st.lists(st.builds(
    Spec, st.sampled_from([None, "b", "d", LOCAL, names.SEED, "foreign"]),
    st.integers(0, 9), st.booleans(), st.booleans()), max_size=8)


@settings(max_examples=300, deadline=None)
@given(SPECS, st.lists(st.integers(0, 120)), st.integers(1, 4), st.integers(1, 8))
def test_assembly_matches_the_model(specs: list[Spec], cuts: list[int], part_rows: int,
                                    bundle_rows: int) -> None:
    stream = [m for i, spec in enumerate(specs) for m in transaction(i, spec)]
    cuts = [c for c in cuts if c <= len(stream)]
    queue, open_after = run(stream, cuts, part_rows, bundle_rows)
    got = [normalize(ev) for item in queue for ev in item]
    assert got == expected(specs, part_rows)
    assert all(item for item in queue)
    assert not open_after[-1]  # every transaction committed: a keepalive may count
    # Memory bound: a queue item holds at most a bundle plus one transaction or part.
    for item in queue:
        rows = sum(len(ev.changes) for ev in item if isinstance(ev, (Txn, Part)))
        assert rows < bundle_rows + max(part_rows, 9) + 1


def test_a_keepalive_inside_a_transaction_does_not_count() -> None:
    """A batch that ends inside a transaction (a keepalive read mid-transaction) leaves
    it open, so the link does not confirm the keepalive's position."""
    stream = transaction(0, Spec("b", 2, False, False))
    queue, open_after = run(stream, [2], part_rows=10, bundle_rows=10)
    assert open_after == [True, False]
    assert [normalize(ev) for item in queue for ev in item] == [
        ("T", "b", 10, 1008, ["0", "1"])]


def test_empty_and_foreign_transactions_are_skipped_or_sourced() -> None:
    stream = transaction(0, Spec(None, 0, False, True)) + transaction(1, Spec(LOCAL, 3, True,
                                                                              False))
    queue, _ = run(stream, [], part_rows=10, bundle_rows=10)
    assert [normalize(ev) for item in queue for ev in item] == [
        ("S", 1008), ("R", 101), ("S", 2008)]


def test_a_big_transaction_travels_in_parts_and_cuts_bundles() -> None:
    stream = transaction(0, Spec("d", 7, False, False))
    queue, _ = run(stream, [], part_rows=3, bundle_rows=3)
    # Bundles are cut after a non-row message only: one item with every part.
    assert [[normalize(ev) for ev in item] for item in queue] == [[
        ("P", "d", 10, True, None, ["0", "1", "2"]),
        ("P", "d", 10, False, None, ["3", "4", "5"]),
        ("P", "d", 10, False, 1008, ["6"])]]
    two = transaction(0, Spec("d", 2, False, False)) + transaction(1, Spec("b", 2, False,
                                                                           False))
    queue, _ = run(two, [], part_rows=10, bundle_rows=2)
    assert [len(item) for item in queue] == [1, 1]  # a full bundle goes at its commit

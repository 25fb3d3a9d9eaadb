"""The ledger: every commit the server acknowledged, so a test or drill can prove none
was lost.

A writer records the rows of a transaction only after COMMIT returned; a commit that
raised is not acknowledged. When COMMIT itself broke off without a verdict (the server
died or dropped the session while the commit was in flight) the client cannot know
whether it happened, and the rows are recorded as in doubt (`record_in_doubt`): not a
commit of the ledger, but the key may hold that version as well as the acknowledged one
(until the site writes the key again with an acknowledged commit). Without this, an
update that was durable but unanswered when a primary was killed read as a lost commit.
Each row is (site, table, key, rev, kind, time), where `rev` is the unique id of that
write (the row's `rev` column holds it), so a member holding an older version is told
apart from one holding the last.

What a member must hold, per key:

* written by one site only: exactly the last acknowledged write (the row with that rev,
  or no row after a delete), or one of that site's later writes in doubt. One origin's
  writes are applied in order in a ring, so anything else is a lost or stale commit;
* written by several sites (the deliberate cross-campus corrections): the ring's conflict
  rule may let any site's last write win, so the member must hold the last write of one
  of those sites, and every member must hold the same one.

Memory stays small for a hospital day (about 730,000 keys): per key one int (the last
rev, negated for a delete; the writing site is the rev's site number, `keys.decompose`),
promoted to a {site number: rev} dict only for keys several sites wrote, and for each
such last rev the serial number of the commit that wrote it (`transaction_of`), so a check
counts lost transactions, not rows: an order with five items lost whole is one lost
commit, not six (a superseded rev's entry is dropped, so this stays one entry per key). The optional
JSON-lines file holds one line per acknowledged commit (its site, time and rows), and one
marked `"doubt": true` per commit in doubt, in the order they ended, and `Ledger.load`
replays it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from .keys import decompose, valid_site_name
from .schema import TABLES

FORMAT = "ringkeeper-lis-ledger/1"


class ChangeKind(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Entry:
    """One acknowledged row write."""

    site: str
    table: str
    key: int
    rev: int
    kind: ChangeKind
    t: float  # client time the commit was acknowledged (epoch seconds)


@dataclass(frozen=True)
class Expect:
    """What every member holding `table`/`key` must show: a rev in `allowed` (None means
    no row); `contested` keys must also be the same at every member."""

    table: str
    key: int
    writers: frozenset[str]
    allowed: frozenset[int | None]
    contested: bool
    # the revs of the acknowledged last writes (a delete's too), whose commits are lost
    # when the member shows none of `allowed` (`Ledger.transaction_of`)
    acked: frozenset[int] = frozenset()


class LedgerError(ValueError):
    """A ledger file or entry that cannot be trusted (unknown table or site, bad line)."""


class Ledger:
    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        """`path` must be new unless `append`: entries of another database's run could
        share keys with this one (run numbers start at 1 in every fresh database), so
        only a ledger of the same servers may be continued."""
        self.path = path
        self.site_numbers: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._last: dict[str, dict[int, int | dict[int, int]]] = {t: {} for t in TABLES}
        self.counts: Counter[tuple[str, ChangeKind]] = Counter()
        self.commits: Counter[str] = Counter()
        self.in_doubt: Counter[str] = Counter()  # commits whose COMMIT never answered
        # rev of a key's last acknowledged write -> serial number of its commit (1, 2, ...)
        self._txn: dict[int, int] = {}
        self._serial = 0
        # table -> key -> site number -> values (rev, -rev for a delete) of writes in
        # doubt since that site's last acknowledged write of the key
        self._doubt: dict[str, dict[int, dict[int, set[int]]]] = {t: {} for t in TABLES}
        self._file: IO[str] | None = None
        if path is not None:
            if append and path.exists():
                for name, number in Ledger.load(path).site_numbers.items():
                    self.add_site(name, number)  # known sites are not written again
            self._file = path.open("a" if append else "x", encoding="utf-8")
            if path.stat().st_size == 0:
                self._write({"format": FORMAT})

    def _write(self, obj: dict[str, object]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def add_site(self, name: str, number: int) -> None:
        """Sites must be known before their entries: the rev's site number names the
        writer, and a name may hold one number only."""
        valid_site_name(name)
        if self.site_numbers.get(name, number) != number or self._names.get(
                number, name) != name:
            raise LedgerError(f"site {name} as {number} clashes with the ledger's sites")
        if name not in self.site_numbers:
            self.site_numbers[name] = number
            self._names[number] = name
            self._write({"site": name, "number": number})

    def record(self, entries: Iterable[Entry]) -> None:
        """One acknowledged commit (all its rows); call only after COMMIT returned."""
        self._record(list(entries), doubt=False)

    def record_in_doubt(self, entries: Iterable[Entry]) -> None:
        """One commit whose COMMIT raised without a verdict: each row may or may not be
        there. Not counted as a commit; its versions become allowed for keys the ledger
        checks, until the same site's next acknowledged write of the key."""
        self._record(list(entries), doubt=True)

    def _record(self, batch: list[Entry], doubt: bool) -> None:
        if not batch:
            return
        if len({e.site for e in batch}) != 1:
            raise LedgerError("one commit comes from one site")
        if not doubt:
            self._serial += 1
        for e in batch:
            if doubt:
                self._apply_doubt(e)
            else:
                self._apply(e, self._serial)
        (self.in_doubt if doubt else self.commits)[batch[0].site] += 1
        line: dict[str, Any] = {"site": batch[0].site, "t": round(batch[0].t, 6)}
        if doubt:
            line["doubt"] = True
        line["rows"] = [[e.table, e.key, e.rev, str(e.kind)] for e in batch]
        self._write(line)

    def _valid(self, e: Entry) -> tuple[dict[int, int | dict[int, int]], int]:
        table = self._last.get(e.table)
        if table is None:
            raise LedgerError(f"unknown table {e.table!r}")
        number = self.site_numbers.get(e.site)
        if number is None:
            raise LedgerError(f"site {e.site!r} was not added to the ledger")
        if decompose(e.rev)[0] != number:
            raise LedgerError(f"rev {e.rev} was not issued by site {e.site} ({number})")
        return table, number

    def _apply_doubt(self, e: Entry) -> None:
        _, number = self._valid(e)
        value = -e.rev if e.kind is ChangeKind.DELETE else e.rev
        self._doubt[e.table].setdefault(e.key, {}).setdefault(number, set()).add(value)

    def _apply(self, e: Entry, serial: int) -> None:
        table, number = self._valid(e)
        doubt = self._doubt[e.table].get(e.key)
        if doubt is not None:  # an acknowledged write supersedes the site's doubtful ones
            doubt.pop(number, None)
            if not doubt:
                del self._doubt[e.table][e.key]
        value = -e.rev if e.kind is ChangeKind.DELETE else e.rev
        old = table.get(e.key)
        if old is None:
            table[e.key] = value
        elif isinstance(old, dict):
            if number in old:
                self._txn.pop(abs(old[number]), None)
            old[number] = value
        elif decompose(abs(old))[0] == number:
            self._txn.pop(abs(old), None)
            table[e.key] = value
        else:
            table[e.key] = {decompose(abs(old))[0]: old, number: value}
        self._txn[e.rev] = serial
        self.counts[(e.site, e.kind)] += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return sum(len(t) for t in self._last.values())

    def transaction_of(self, rev: int) -> int | None:
        """The serial number of the acknowledged commit that wrote `rev` (a key's last
        write; None for a superseded or unknown rev): rows of one commit share it."""
        return self._txn.get(abs(rev))

    def doubtful(self, table: str, key: int) -> frozenset[int | None]:
        """The versions of `table`/`key` written by commits in doubt (None: a delete)."""
        return frozenset(v if v > 0 else None
                         for vs in self._doubt[table].get(key, {}).values() for v in vs)

    def last_rev(self, table: str, key: int) -> int | None:
        """The rev a single-writer key must show (None: deleted or never written)."""
        v = self._last[table].get(key)
        if isinstance(v, dict):
            raise LedgerError(f"{table} {key} was written by several sites")
        return v if v is not None and v > 0 else None

    def expectations(self) -> Iterator[Expect]:
        for table, rows in self._last.items():
            doubts = self._doubt[table]
            for key, v in rows.items():
                maybe = self.doubtful(table, key) if key in doubts else frozenset()
                if isinstance(v, dict):
                    yield Expect(table, key, frozenset(self._names[s] for s in v),
                                 frozenset(r if r > 0 else None for r in v.values()) | maybe,
                                 True, frozenset(abs(r) for r in v.values()))
                else:
                    yield Expect(table, key, frozenset({self._names[decompose(abs(v))[0]]}),
                                 frozenset({v if v > 0 else None}) | maybe, False,
                                 frozenset({abs(v)}))

    def summary(self) -> dict[str, dict[str, int]]:
        """Per site: commits, commits in doubt and rows by kind (the CLI's JSON line)."""
        out: dict[str, dict[str, int]] = {}
        for site in self.site_numbers:
            row = {"commits": self.commits[site], "in_doubt": self.in_doubt[site]}
            row.update({str(k): self.counts[(site, k)] for k in ChangeKind})
            out[site] = row
        return out

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Replay a JSON-lines ledger written by `record` (in memory only)."""
        ledger = cls()
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if "format" in obj:
                        if obj["format"] != FORMAT:
                            raise LedgerError(f"format {obj['format']!r}, not {FORMAT}")
                    elif "number" in obj:
                        ledger.add_site(str(obj["site"]), int(obj["number"]))
                    else:
                        site, t = str(obj["site"]), float(obj["t"])
                        doubt = obj.get("doubt") is True
                        if not doubt:
                            ledger._serial += 1
                        for table, key, rev, kind in obj["rows"]:
                            e = Entry(site, str(table), int(key), int(rev), ChangeKind(kind), t)
                            if doubt:
                                ledger._apply_doubt(e)
                            else:
                                ledger._apply(e, ledger._serial)
                        (ledger.in_doubt if doubt else ledger.commits)[site] += 1
                except (ValueError, KeyError, TypeError) as exc:
                    raise LedgerError(f"{path}:{n}: {exc}") from exc
        return ledger

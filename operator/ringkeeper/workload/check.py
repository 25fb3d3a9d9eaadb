"""Check a ledger against the members that should hold its writes.

Reads each member's `rev` for every key the ledger knows (in chunks, by primary key, so a
hospital day of keys is a few hundred indexed queries per member) and compares it with
`Ledger.expectations`: a missing row, a stale version, a deleted row that came back, or
members that disagree on a contested key are each a problem with its own kind, counted
per member and kept as examples. The check is read-only.

In a ring every member should hold every site's writes (`holds=None`); for independent
servers, `holds` names the sites each member should hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..base.sqlquote import quote_ident
from .ledger import Expect, Ledger
from .schema import SCHEMA, TABLES, schema_name

CHUNK = 5000


class LedgerProblem(StrEnum):
    MISSING = "missing"  # an acknowledged row is not there
    STALE = "stale"  # the row is there with another version than any allowed
    UNEXPECTED = "unexpected"  # an acknowledged delete, but the row is there
    DISAGREE = "disagree"  # a contested key: members hold different winners


# What loses an acknowledged commit (a disagreement is a ring fault, not a lost commit).
LOST = (LedgerProblem.MISSING, LedgerProblem.STALE, LedgerProblem.UNEXPECTED)


@dataclass(frozen=True)
class Finding:
    member: str
    problem: LedgerProblem
    table: str
    key: int
    found: int | None
    allowed: tuple[int | None, ...]


@dataclass
class MemberCounts:
    checked: int = 0
    ok: int = 0
    problems: Counter[LedgerProblem] = field(default_factory=Counter)
    # serial numbers (Ledger.transaction_of) of the commits a LOST finding belongs to
    lost_txns: set[int] = field(default_factory=set)


@dataclass
class CheckReport:
    acknowledged: dict[str, dict[str, int]]
    members: dict[str, MemberCounts]
    examples: list[Finding]
    max_examples: int

    def count(self, problem: LedgerProblem) -> int:
        return sum(m.problems[problem] for m in self.members.values())

    @property
    def lost_rows(self) -> int:
        """Rows missing, stale or resurrected, at every member (one lost commit of an
        order with five items is six)."""
        return sum(self.count(p) for p in LOST)

    @property
    def lost_transactions(self) -> int:
        """Acknowledged commits with at least one row lost at some member, each counted
        once however many of its rows or members show it."""
        return len(set().union(*(m.lost_txns for m in self.members.values())))

    @property
    def passed(self) -> bool:
        return not any(m.problems for m in self.members.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "acknowledged": self.acknowledged,
            "lostTransactions": self.lost_transactions,
            "lostRows": self.lost_rows,
            "members": {name: {"checked": m.checked, "ok": m.ok,
                               **{str(p): m.problems[p] for p in LedgerProblem},
                               "lostTransactions": len(m.lost_txns)}
                        for name, m in self.members.items()},
            "examples": [{"member": f.member, "problem": str(f.problem), "table": f.table,
                          "key": f.key, "found": f.found, "allowed": list(f.allowed)}
                         for f in self.examples],
        }


async def _revs(conn: Any, table: str, keys: list[int], schema: str = SCHEMA
                ) -> dict[int, int]:
    t = TABLES[table]
    sql = (f"SELECT {quote_ident(t.key)}, rev FROM {quote_ident(schema_name(schema))}."
           f"{quote_ident(t.name)} "
           f"WHERE {quote_ident(t.key)} = ANY($1::bigint[])")
    found: dict[int, int] = {}
    for i in range(0, len(keys), CHUNK):
        for r in await conn.fetch(sql, keys[i:i + CHUNK]):
            found[int(r[0])] = int(r[1])
    return found


async def check(conns: Mapping[str, Any], ledger: Ledger,
                holds: Mapping[str, Collection[str]] | None = None,
                max_examples: int = 20, schema: str = SCHEMA) -> CheckReport:
    """Compare every member in `conns` (name -> asyncpg connection) with the ledger."""
    by_table: dict[str, list[Expect]] = {t: [] for t in TABLES}
    for e in ledger.expectations():
        by_table[e.table].append(e)
    members = {m: MemberCounts() for m in conns}
    examples: list[Finding] = []

    def note(member: str, problem: LedgerProblem, e: Expect, found: int | None) -> None:
        members[member].problems[problem] += 1
        if problem in LOST:
            # A contested key holding none of its sites' last writes lost at least one of
            # them: counted as one commit (the earliest), not one per site.
            txns = [t for r in e.acked if (t := ledger.transaction_of(r)) is not None]
            # A row whose commit the ledger cannot name counts as a commit of its own
            # (negative: never a serial), so nothing lost goes uncounted.
            members[member].lost_txns.add(min(txns) if txns else -e.key)
        if len(examples) < max_examples:
            examples.append(Finding(member, problem, e.table, e.key, found,
                                    tuple(sorted(e.allowed, key=lambda r: r or 0))))

    for table, expects in by_table.items():
        seen: dict[int, dict[str, int | None]] = {}
        for member, conn in conns.items():
            held = None if holds is None else frozenset(holds.get(member, ()))
            mine = [e for e in expects if held is None or e.writers & held]
            if not mine:
                continue
            found = await _revs(conn, table, [e.key for e in mine], schema)
            counts = members[member]
            for e in mine:
                got = found.get(e.key)
                counts.checked += 1
                if e.contested:
                    seen.setdefault(e.key, {})[member] = got
                if got in e.allowed:
                    counts.ok += 1
                elif got is None:
                    note(member, LedgerProblem.MISSING, e, got)
                elif e.allowed == {None}:
                    note(member, LedgerProblem.UNEXPECTED, e, got)
                else:
                    note(member, LedgerProblem.STALE, e, got)
        contested = {e.key: e for e in expects if e.contested}
        for key, at in seen.items():
            if len(set(at.values())) > 1:
                for member in sorted(at)[1:]:
                    if at[member] != at[sorted(at)[0]]:
                        note(member, LedgerProblem.DISAGREE, contested[key], at[member])
    return CheckReport(ledger.summary(), members, examples, max_examples)

"""Pure decisions of data verification between ring members: what to compare and how.

Verification compares one table across 2..N members without moving the table over the
network: each member hashes ranges of primary keys ("chunks") inside the database, the
runner compares the (row count, sum of row hashes) pairs, and only chunks that differ are
split again (bisection) until the differing rows are few enough to name key by key.

Everything here is arithmetic and bookkeeping, so it is unit-tested without a database:
chunk planning, combining row hashes, deciding which chunks need recursion, classifying a
key's state at each member, and deciding when a difference has settled (the sync sidecar
keeps the ring converging, so a young difference is usually replication lag, not damage).
What a difference is repaired with lives in `verify_repair.py`; how a run is reported
(progress, the report model and its text, the ring's status) in `verify_report.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from .names import origin_name

Key = tuple[str, ...]
"""A primary key as the canonical text of each key column, in key-column order."""

Mode = Literal["full", "incremental"]
DiffKind = Literal["missing_on", "extra_on", "differs"]
SettleVerdict = Literal["converged", "persistent", "wait"]

HASH_MODULUS = 1 << 64
"""Chunk digests are sums of signed 64-bit row hashes; comparing them modulo 2**64 keeps
the numbers bounded without weakening the comparison (a difference of exactly k * 2**64
would need an astronomically unlikely coincidence)."""


# --------------------------------------------------------------------------------------
# Members


@dataclass(frozen=True)
class MemberConn:
    """One ring member as verification sees it.

    `origin` is the replication-origin name under which the member's own writes travel
    the ring (`rk_<ring>_<member>`); repair uses it for versions written at this member.
    `priority` breaks ties the way the ring's conflict policy does (higher wins).
    """

    name: str
    dsn: str
    priority: int = 100
    origin: str = ""

    @classmethod
    def for_ring(cls, ring: str, name: str, dsn: str, priority: int = 100) -> MemberConn:
        """The member with the origin name the sync sidecar gives it."""
        return cls(name=name, dsn=dsn, priority=priority, origin=origin_name(ring, name))

    @property
    def origin_name(self) -> str:
        """The member's origin in its ring; empty when it was given none (outside a
        ring no change is attributed to it)."""
        return self.origin


# --------------------------------------------------------------------------------------
# Chunks


@dataclass(frozen=True)
class Chunk:
    """A primary-key range: `lo` inclusive, `hi` exclusive; None is unbounded.

    The first and last chunk of a plan are open-ended, so rows that exist only on another
    member (outside the first member's key range) are still inside some chunk.
    """

    lo: Key | None
    hi: Key | None

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else ",".join(self.lo)
        hi = "+inf" if self.hi is None else ",".join(self.hi)
        return f"[{lo} .. {hi})"


def chunks_between(boundaries: Sequence[Key], lo: Key | None = None,
                   hi: Key | None = None) -> list[Chunk]:
    """Cut [lo, hi) at the given ascending boundaries (duplicates and boundaries equal to
    `lo` are dropped, so no chunk is empty by construction)."""
    cuts: list[Key] = []
    for b in boundaries:
        if (cuts and b == cuts[-1]) or b in (lo, hi):
            continue
        cuts.append(b)
    edges: list[Key | None] = [lo, *cuts, hi]
    return [Chunk(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def chunk_count(rows: int, chunk_rows: int) -> int:
    """How many chunks a table of about `rows` rows gets (at least one)."""
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    return max(1, math.ceil(max(rows, 0) / chunk_rows))


def plan_integer_chunks(lo: int, hi: int, rows: int, chunk_rows: int) -> list[Chunk]:
    """Arithmetic ranges for a single integer key: no sampling needed.

    The key density is assumed uniform between the first member's min and max; a skewed
    table only makes some chunks bigger, never misses rows (both ends are open).
    """
    n = chunk_count(rows, chunk_rows)
    if n == 1 or hi <= lo:
        return [Chunk(None, None)]
    width = max(1, math.ceil((hi - lo + 1) / n))
    bounds = [(str(lo + i * width),) for i in range(1, n) if lo + i * width <= hi]
    return chunks_between(bounds)


def plan_sampled_chunks(samples: Sequence[Key], rows: int, chunk_rows: int) -> list[Chunk]:
    """Ranges from an ascending sample of keys (any key type, composite keys too): the
    boundaries are the sample's quantiles, so each chunk holds about `chunk_rows` rows."""
    n = chunk_count(rows, chunk_rows)
    if n == 1 or not samples:
        return [Chunk(None, None)]
    step = len(samples) / n
    bounds = [samples[min(len(samples) - 1, int(i * step))] for i in range(1, n)]
    return chunks_between(bounds)


def split_points(ordered_keys: Sequence[Key], parts: int) -> list[Key]:
    """Boundaries that cut an ascending key list into `parts` about equal pieces."""
    if parts < 2 or len(ordered_keys) < 2:
        return []
    step = len(ordered_keys) / parts
    out: list[Key] = []
    for i in range(1, parts):
        j = int(i * step)
        if j > 0 and (not out or ordered_keys[j] != out[-1]):
            out.append(ordered_keys[j])
    return out


# --------------------------------------------------------------------------------------
# Digests


@dataclass(frozen=True)
class Digest:
    """What a member says about one chunk: its row count and the sum of its row hashes.

    A sum (not XOR) is used because it is order-independent like XOR but does not cancel
    equal pairs: with XOR two rows hashing alike would vanish, and a chunk holding a
    duplicated bad row twice would compare equal to one holding neither.
    """

    rows: int
    total: int

    def __add__(self, other: Digest) -> Digest:
        return Digest(self.rows + other.rows, (self.total + other.total) % HASH_MODULUS)

    def normalised(self) -> Digest:
        return Digest(self.rows, self.total % HASH_MODULUS)


EMPTY = Digest(0, 0)


def combine(row_hashes: Iterable[int]) -> Digest:
    """The digest of a set of rows from their 64-bit hashes (as PostgreSQL's
    `count(*), sum(hash)` computes it, reduced modulo 2**64)."""
    rows = 0
    total = 0
    for h in row_hashes:
        rows += 1
        total += h
    return Digest(rows, total % HASH_MODULUS)


def xor_combine(row_hashes: Iterable[int]) -> int:
    """The XOR alternative, kept to show (in tests) why it is not used."""
    out = 0
    for h in row_hashes:
        out ^= h & (HASH_MODULUS - 1)
    return out


def digests_differ(digests: Mapping[str, Digest]) -> bool:
    """True when the members do not all agree on the chunk."""
    values = {d.normalised() for d in digests.values()}
    return len(values) > 1


def needs_bisection(digests: Mapping[str, Digest], leaf_rows: int) -> bool:
    """A differing chunk is split again while some member holds more than `leaf_rows`
    rows in it; below that, fetching (key, row hash) pairs is cheaper than more rounds."""
    return digests_differ(digests) and max(d.rows for d in digests.values()) > leaf_rows


# --------------------------------------------------------------------------------------
# Differences


class RowVersion(BaseModel):
    """One member's version of a row. `row_hash` None means the row is absent there.

    `committed_at` and `origin` come from `pg_xact_commit_timestamp_origin(xmin)`: the
    ORIGINAL commit time and the origin name ("" when written locally at that member)."""

    row_hash: str | None = None
    committed_at: datetime | None = None
    origin: str | None = None
    values: dict[str, str | None] | None = None

    @property
    def present(self) -> bool:
        return self.row_hash is not None


class KeyDifference(BaseModel):
    """A key whose row is not the same at every member, relative to the reference member
    (the first member, or the chosen source): missing there, extra there, or different."""

    table: str
    key: list[str]
    reference: str
    missing_on: list[str] = Field(default_factory=list)
    extra_on: list[str] = Field(default_factory=list)
    differs_on: list[str] = Field(default_factory=list)
    versions: dict[str, RowVersion] = Field(default_factory=dict)

    @property
    def kinds(self) -> list[DiffKind]:
        out: list[DiffKind] = []
        if self.missing_on:
            out.append("missing_on")
        if self.extra_on:
            out.append("extra_on")
        if self.differs_on:
            out.append("differs")
        return out

    def member_kinds(self) -> list[tuple[str, DiffKind]]:
        """(member, kind) pairs, one per member that disagrees with the reference."""
        pairs: list[tuple[str, DiffKind]] = [(m, "missing_on") for m in self.missing_on]
        pairs += [(m, "extra_on") for m in self.extra_on]
        pairs += [(m, "differs") for m in self.differs_on]
        return pairs


def classify(table: str, key: Key, hashes: Mapping[str, int | str | None],
             members: Sequence[str], reference: str | None = None) -> KeyDifference | None:
    """Name how each member differs from the reference for one key, or None if all agree.

    missing_on: the reference has the row, the member does not; extra_on: the member has
    a row the reference lacks; differs: both have it with different contents.
    """
    ref = reference or members[0]
    ref_hash = hashes.get(ref)
    diff = KeyDifference(table=table, key=list(key), reference=ref)
    for m in members:
        if m == ref:
            continue
        h = hashes.get(m)
        if h == ref_hash:
            continue
        if h is None:
            diff.missing_on.append(m)
        elif ref_hash is None:
            diff.extra_on.append(m)
        else:
            diff.differs_on.append(m)
    if not (diff.missing_on or diff.extra_on or diff.differs_on):
        return None
    return diff


def settle_verdict(agree: bool, stable_for: float, newest_age: float | None,
                   settle_seconds: float) -> SettleVerdict:
    """Decide a rechecked difference under live traffic.

    The sidecar keeps the ring converging, so a difference is reported only when it held
    unchanged for at least the settle window AND its newest version is older than that
    window (a younger version may still be on its way). `stable_for` is how long the
    member states have been exactly what they are now; `newest_age` is the age of the
    newest original commit among the versions (None when commit timestamps are unknown:
    then stability alone decides, e.g. for a deletion, which leaves no timestamp).
    """
    if agree:
        return "converged"
    if stable_for < settle_seconds:
        return "wait"
    if newest_age is not None and newest_age < settle_seconds:
        return "wait"
    return "persistent"


def recheck_delays(first: float, cap: float, timeout: float) -> list[float]:
    """Backoff between rechecks: doubling from `first`, capped at `cap`, until the sum
    would pass `timeout`."""
    out: list[float] = []
    total = 0.0
    d = max(first, 0.01)
    while total + d <= timeout:
        out.append(d)
        total += d
        d = min(cap, d * 2)
    return out

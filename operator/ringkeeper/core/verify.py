"""Pure decisions of data verification between ring members.

Verification compares one table across 2..N members without moving the table over the
network: each member hashes ranges of primary keys ("chunks") inside the database, the
runner compares the (row count, sum of row hashes) pairs, and only chunks that differ are
split again (bisection) until the differing rows are few enough to name key by key.

Everything here is arithmetic and bookkeeping, so it is unit-tested without a database:
chunk planning, combining row hashes, deciding which chunks need recursion, classifying a
key's state at each member, deciding when a difference has settled (the sync sidecar keeps
the ring converging, so a young difference is usually replication lag, not damage), the
repair plan, progress arithmetic and the report model with its text rendering.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from ..api.v1alpha1.ring import VerificationResult, VerificationStatus
from .conflicts import Policy, Version, winner
from .names import origin_name

Key = tuple[str, ...]
"""A primary key as the canonical text of each key column, in key-column order."""

Mode = Literal["full", "incremental"]
Kind = Literal["missing_on", "extra_on", "differs"]
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
    def kinds(self) -> list[Kind]:
        out: list[Kind] = []
        if self.missing_on:
            out.append("missing_on")
        if self.extra_on:
            out.append("extra_on")
        if self.differs_on:
            out.append("differs")
        return out

    def member_kinds(self) -> list[tuple[str, Kind]]:
        """(member, kind) pairs, one per member that disagrees with the reference."""
        pairs: list[tuple[str, Kind]] = [(m, "missing_on") for m in self.missing_on]
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


# --------------------------------------------------------------------------------------
# Repair planning

Action = Literal["upsert", "delete"]


class Fix(BaseModel):
    """One change at one member that makes its row equal to the winning version.

    `origin` and `committed_at` are those of the winning version, so the repaired row
    carries the same original origin and commit time as everywhere else."""

    table: str
    key: list[str]
    member: str
    action: Action
    source: str
    origin: str
    committed_at: datetime | None = None
    values: dict[str, str | None] | None = None
    reason: str = ""


_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def origin_member(origin: str | None, holder: str, members: Sequence[MemberConn]) -> str:
    """The member a version came from: the one whose origin name it carries, else the
    member holding it (an empty origin means written locally there)."""
    if origin:
        for m in members:
            if m.origin_name == origin:
                return m.name
    return holder


def policy_winner(versions: Mapping[str, RowVersion], members: Sequence[MemberConn],
                  policy: Policy | str = Policy.LAST_WRITER_WINS) -> str | None:
    """The member holding the version the ring's policy keeps, or None if no member has
    the row. lastWriterWins: newest original commit, then the origin's priority, then its
    name (the same order `conflicts.winner` applies live). An absent row never wins: a
    deletion leaves no commit time to compare, so repair by policy restores the newest
    row; choose a source member to propagate a deletion instead."""
    by_name = {m.name: m for m in members}
    best: tuple[str, Version] | None = None
    for holder in sorted(versions):
        v = versions[holder]
        if not v.present:
            continue
        who = origin_member(v.origin, holder, members)
        ref = by_name.get(who, by_name.get(holder))
        cand = Version(origin=who, committed_at=v.committed_at or _EPOCH,
                       priority=ref.priority if ref else 100)
        if best is None or winner(best[1], cand, policy) is cand:
            best = (holder, cand)
    return best[0] if best else None


def plan_fixes(diff: KeyDifference, members: Sequence[MemberConn], *,
               source: str | None = None,
               policy: Policy | str = Policy.LAST_WRITER_WINS) -> list[Fix]:
    """The fixes for one key: every member whose version differs from the winner's gets
    the winner's row (upsert), or loses its row when the winner (a source of truth) has
    none (delete). Versions must carry `values` for the winner when it has the row."""
    names = [m.name for m in members]
    by_name = {m.name: m for m in members}
    if source is not None:
        if source not in by_name:
            raise ValueError(f"source member {source!r} is not one of {names}")
        win: str | None = source
        reason = f"source of truth {source}"
    else:
        win = policy_winner(diff.versions, members, policy)
        reason = f"policy {Policy(policy).value}"
    if win is None:
        return []
    won = diff.versions.get(win, RowVersion())
    fixes: list[Fix] = []
    for m in names:
        if m == win:
            continue
        mine = diff.versions.get(m, RowVersion())
        if mine.row_hash == won.row_hash:
            continue
        if won.present:
            if won.values is None:
                raise ValueError(f"{diff.table} {diff.key}: no values fetched from {win}")
            origin = won.origin or by_name[win].origin_name
            fixes.append(Fix(table=diff.table, key=diff.key, member=m, action="upsert",
                             source=win, origin=origin, committed_at=won.committed_at,
                             values=won.values, reason=f"{reason}: take {win}'s row"))
        else:
            fixes.append(Fix(table=diff.table, key=diff.key, member=m, action="delete",
                             source=win, origin=by_name[win].origin_name,
                             reason=f"{reason}: {win} has no such row"))
    return fixes


# --------------------------------------------------------------------------------------
# Progress


@dataclass(frozen=True)
class Progress:
    """Where a verification is: per table and phase, with rates for a progress line."""

    table: str
    phase: str
    chunks_done: int
    chunks_total: int
    rows_done: int
    rows_total: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        if self.rows_total > 0:
            return min(1.0, self.rows_done / self.rows_total)
        if self.chunks_total > 0:
            return min(1.0, self.chunks_done / self.chunks_total)
        return 1.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, None before there is a rate."""
        f = self.fraction
        if f <= 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (1 - f) / f

    def line(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.1f}s"
        return (f"{self.table} {self.phase}: {self.chunks_done}/{self.chunks_total} chunks, "
                f"{self.rows_done}/{self.rows_total} rows ({self.fraction:.0%}), "
                f"{self.rows_per_s:,.0f} rows/s, eta {eta}")


# --------------------------------------------------------------------------------------
# Report


class TableReport(BaseModel):
    """One table's outcome. `rows` is what each member hashed (full mode) or looked up
    (incremental); `keys_touched` counts keys compared one by one (leaf fetches, dirty
    keys), which is what incremental cost follows."""

    table: str
    key_columns: list[str]
    mode: Mode
    rows: dict[str, int] = Field(default_factory=dict)
    chunks: int = 0
    chunks_differing: int = 0
    keys_touched: int = 0
    keys_rechecked: int = 0
    differences: list[KeyDifference] = Field(default_factory=list)
    unsettled: list[KeyDifference] = Field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.differences and not self.unsettled and not self.truncated


class Report(BaseModel):
    """A verification run: JSON for machines (`model_dump_json`, re-read with
    `Report.model_validate_json` before a repair), `render_text` for people."""

    mode: Mode
    members: list[str]
    reference: str
    started_at: datetime
    finished_at: datetime | None = None
    settle_seconds: float = 0.0
    canonical: str = "typed"
    tables: list[TableReport] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tables)

    @property
    def differences(self) -> list[KeyDifference]:
        return [d for t in self.tables for d in t.differences]

    def render_text(self) -> str:
        return render_text(self)


def summarise_values(v: RowVersion | None, width: int = 48) -> str:
    """A short human form of one version's row for the text table."""
    if v is None or not v.present:
        return "(absent)"
    if not v.values:
        return f"hash {v.row_hash}"
    text = ", ".join(f"{k}={'NULL' if x is None else x}" for k, x in v.values.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_text(report: Report) -> str:
    """A readable table: one line per (key, member that differs), with both versions."""
    lines = [
        f"verification ({report.mode}) of {', '.join(report.members)}; "
        f"reference {report.reference}: "
        + ("PASSED" if report.passed else
           f"{len(report.differences)} differing key(s)"),
    ]
    for name, why in report.skipped.items():
        lines.append(f"  {name}: NOT VERIFIED ({why})")
    for t in report.tables:
        rows = ", ".join(f"{m}={n}" for m, n in t.rows.items())
        lines.append(f"  {t.table}: rows {rows or '-'}; chunks {t.chunks} "
                     f"({t.chunks_differing} differing); keys touched {t.keys_touched}; "
                     f"{len(t.differences)} difference(s); {t.seconds:.2f}s")
        if t.truncated:
            lines.append("    stopped naming keys at the max_keys limit: more rows differ "
                         "(a member far behind or empty? compare row counts)")
        if t.unsettled:
            lines.append(f"    {len(t.unsettled)} key(s) still changing when rechecks "
                         "timed out (not verified): "
                         + ", ".join(",".join(d.key) for d in t.unsettled[:10]))
    rows_out: list[tuple[str, ...]] = []
    for d in report.differences:
        ref_v = d.versions.get(d.reference)
        for m, kind in d.member_kinds():
            rows_out.append((d.table, ",".join(d.key), kind, m, d.reference,
                             summarise_values(d.versions.get(m)), summarise_values(ref_v)))
    if rows_out:
        head = ("TABLE", "KEY", "KIND", "MEMBER", "REFERENCE", "MEMBER'S ROW",
                "REFERENCE'S ROW")
        widths = [max(len(r[i]) for r in [head, *rows_out]) for i in range(len(head))]
        for r in [head, *rows_out]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                         .rstrip())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# ReplicationRing status


def rows_compared(report: Report) -> int:
    """Rows compared: per table the most rows any member held (or looked up), summed."""
    return sum(max(t.rows.values(), default=0) for t in report.tables)


def verification_status(report: Report | None, *, mode: Mode | str, started_at: datetime,
                        completed_at: datetime | None, report_path: str | None,
                        progress_percent: float | None = None,
                        error: bool = False) -> dict[str, object]:
    """The ReplicationRing `status.lastVerification` object (camelCase, as in the CRD).

    With a report: Passed or Failed with its counts and progress 100. Without one: Running
    (with `progress_percent`) while `completed_at` is None, Error once it is set (or with
    `error`, e.g. when the members could not be reached)."""
    data: dict[str, object] = {"started_at": started_at, "completed_at": completed_at,
                               "mode": str(mode), "report": report_path}
    if report is not None and not error:
        data.update(tables=len(report.tables), rows_compared=rows_compared(report),
                    differences=len(report.differences) + sum(
                        len(t.unsettled) for t in report.tables),
                    result=(VerificationResult.PASSED if report.passed
                            else VerificationResult.FAILED),
                    progress_percent=100.0)
    elif completed_at is None and not error:
        data.update(result=VerificationResult.RUNNING,
                    progress_percent=round(progress_percent or 0.0, 1))
    else:
        data.update(result=VerificationResult.ERROR)
        if report is not None:
            data.update(tables=len(report.tables), rows_compared=rows_compared(report))
    status = VerificationStatus.model_validate(data)
    out: dict[str, object] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out

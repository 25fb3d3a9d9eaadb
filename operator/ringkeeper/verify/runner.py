"""Verification against live members: asyncpg orchestration of the pure engine.

Each member gets one connection with fixed session settings; members hash the same chunk
list in parallel (one task per member, so a fast member never waits for a slow one chunk by
chunk), chunk digests are compared, differing chunks are bisected down to rows, and the
differing keys are rechecked until they converge (replication lag) or settle (damage).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ..core.verify import (
    Chunk,
    Digest,
    Key,
    KeyDifference,
    MemberConn,
    Mode,
    RowVersion,
    chunks_between,
    classify,
    digests_differ,
    needs_bisection,
    plan_integer_chunks,
    plan_sampled_chunks,
    recheck_delays,
    settle_verdict,
)
from ..core.verify_report import Progress, Report, TableReport
from ..sync.walstream import ReplicationError, ensure_scram
from . import checksum as cs
from .checksum import Canonical, TableShape
from .dirty import forget_compared, remember

ProgressFn = Callable[[Progress], None]

LOOKUP_BATCH = 5000
FANOUT = 16


class VerifyError(Exception):
    """A verification that cannot run as asked (missing table, no primary key, ...)."""


@dataclass
class Member:
    """An open connection to one member."""

    conn: MemberConn
    pg: Any  # asyncpg.Connection (untyped library)
    commit_ts: bool = True

    @property
    def name(self) -> str:
        return self.conn.name


async def connect(m: MemberConn, *, timeout: float = 30.0) -> Member:
    """One connection with the canonical session settings (and no JIT: chunk queries are
    many and short, compiling them would cost more than it saves)."""
    settings = {**cs.SESSION_SETTINGS, "jit": "off", "application_name": "ringkeeper-verify",
                "statement_timeout": "0"}
    try:
        await ensure_scram(m.dsn, timeout=timeout)  # external members: SCRAM or nothing
        pg = await asyncpg.connect(m.dsn, server_settings=settings, timeout=timeout)
    except (TimeoutError, OSError, ValueError, asyncpg.PostgresError,
            ReplicationError) as exc:
        raise VerifyError(f"cannot connect to member {m.name}: {exc}") from exc
    on = await pg.fetchval("SELECT current_setting('track_commit_timestamp') = 'on'")
    return Member(m, pg, bool(on))


async def close_all(members: Iterable[Member]) -> None:
    await asyncio.gather(*(m.pg.close() for m in members), return_exceptions=True)


async def ensure_dirty_keys(member: Member) -> None:
    """The table the sidecar fills; created here too so verification never depends on
    which of the two ran first."""
    await member.pg.execute(cs.DIRTY_KEYS_DDL)


async def list_tables(member: Member) -> tuple[list[str], list[str]]:
    """(tables with a primary key, tables without one) outside the system schemas."""
    with_pk = [r[0] for r in await member.pg.fetch(cs.TABLES_SQL)]
    without = [r[0] for r in await member.pg.fetch(cs.NO_PK_TABLES_SQL)]
    return with_pk, without


async def table_shape(member: Member, table: str) -> TableShape:
    rel = cs.qualified(table)
    exists = await member.pg.fetchval("SELECT to_regclass($1) IS NOT NULL", rel)
    if not exists:
        raise VerifyError(f"table {table} does not exist on member {member.name}")
    rows = await member.pg.fetch(cs.INTROSPECT_SQL, rel)
    key = tuple(r[0] for r in await member.pg.fetch(cs.PRIMARY_KEY_SQL, rel))
    if not key:
        raise VerifyError(f"table {table} has no primary key on member {member.name}: "
                          "verification needs one to name rows and to split ranges")
    cols = tuple(cs.Column(name=r["name"], sql_type=r["sql_type"], base=r["base"],
                           base_sql_type=r["base_sql_type"], base_kind=r["base_kind"],
                           element=r["element"], generated=r["generated"],
                           identity=r["identity"], not_null=r["not_null"]) for r in rows)
    return TableShape(table=cs.relation_name(table), columns=cols, key=key)


def aligned_shapes(shapes: Sequence[TableShape], members: Sequence[Member]) -> list[TableShape]:
    """Every member compares the reference member's non-generated columns by name; a
    missing column or a different primary key is a schema difference, reported as such."""
    ref = shapes[0]
    order = tuple(c.name for c in ref.columns if not c.generated)
    out = []
    for shape, m in zip(shapes, members, strict=True):
        names = {c.name for c in shape.columns if not c.generated}
        missing = [n for n in order if n not in names]
        extra = sorted(names - set(order))
        if missing or extra:
            raise VerifyError(
                f"table {ref.table} has different columns on {m.name} than on "
                f"{members[0].name}: missing {missing or '-'}, extra {extra or '-'}")
        if shape.key != ref.key:
            raise VerifyError(f"table {ref.table} has primary key {list(shape.key)} on "
                              f"{m.name} but {list(ref.key)} on {members[0].name}")
        out.append(TableShape(shape.table, shape.columns, shape.key, order))
    return out


async def estimate_rows(member: Member, shape: TableShape) -> int:
    est = await member.pg.fetchval(
        "SELECT reltuples::int8 FROM pg_class WHERE oid = $1::regclass", shape.rel)
    if est is None or est < 0:
        est = await member.pg.fetchval(f"SELECT count(*) FROM {shape.rel}")
    return int(est)


async def plan_chunks(member: Member, shape: TableShape, chunk_rows: int) -> tuple[list[Chunk],
                                                                                   int]:
    """Chunks from the reference member's key distribution: arithmetic ranges for a
    single integer key, quantiles of a key sample otherwise. Returns (chunks, rows)."""
    rows = await estimate_rows(member, shape)
    if rows <= chunk_rows:
        return [Chunk(None, None)], rows
    if shape.integer_key:
        col = shape.key_columns[0].ident
        lo, hi = await member.pg.fetchrow(f"SELECT min({col})::int8, max({col})::int8 "
                                          f"FROM {shape.rel}")
        if lo is None:
            return [Chunk(None, None)], 0
        return plan_integer_chunks(int(lo), int(hi), rows, chunk_rows), rows
    wanted = 32 * math.ceil(rows / chunk_rows)
    percent = min(100.0, 100.0 * wanted / max(rows, 1))
    samples = [tuple(r) for r in await member.pg.fetch(cs.sample_sql(shape, percent))]
    return plan_sampled_chunks(samples, rows, chunk_rows), rows


@dataclass
class Context:
    members: list[Member]
    shapes: list[TableShape]
    canonical: Canonical
    table: str
    progress: ProgressFn | None
    started: float = field(default_factory=time.monotonic)
    keys_touched: int = 0
    max_keys: int = 100_000
    truncated: bool = False
    chunks_total: int = 0
    chunks_differing: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def report(self, phase: str, done: int, total: int, rows_done: int, rows_total: int) -> None:
        if self.progress is not None:
            self.progress(Progress(self.table, phase, done, total, rows_done, rows_total,
                                   time.monotonic() - self.started))


async def digest(member: Member, shape: TableShape, chunk: Chunk,
                 canonical: Canonical) -> Digest:
    sql, params = cs.chunk_digest_sql(shape, chunk, canonical)
    n, total = await member.pg.fetchrow(sql, *params)
    return Digest(int(n), int(total)).normalised()


async def digest_all(ctx: Context, chunks: Sequence[Chunk], *, phase: str = "hash",
                     rows_total: int = 0) -> list[dict[str, Digest]]:
    """Every member hashes every chunk, members in parallel, each at its own pace."""
    results: list[list[Digest]] = [[] for _ in ctx.members]

    def tick() -> None:
        done = min(len(r) for r in results)
        rows_done = sum(r.rows for r in results[0][:done])
        ctx.report(phase, done, len(chunks), rows_done, max(rows_total, rows_done))

    async def run(i: int) -> None:
        m, shape = ctx.members[i], ctx.shapes[i]
        for chunk in chunks:
            results[i].append(await digest(m, shape, chunk, ctx.canonical))
            tick()

    await asyncio.gather(*(run(i) for i in range(len(ctx.members))))
    return [{ctx.members[i].name: results[i][j] for i in range(len(ctx.members))}
            for j in range(len(chunks))]


async def leaf_hashes(ctx: Context, chunk: Chunk) -> dict[Key, dict[str, int]]:
    """(key -> member -> row hash) for every row of a small range at every member."""

    async def fetch(i: int) -> list[Any]:
        sql, params = cs.leaf_rows_sql(ctx.shapes[i], chunk, ctx.canonical)
        return list(await ctx.members[i].pg.fetch(sql, *params))

    per_member = await asyncio.gather(*(fetch(i) for i in range(len(ctx.members))))
    width = len(ctx.shapes[0].key)
    out: dict[Key, dict[str, int]] = {}
    for m, rows in zip(ctx.members, per_member, strict=True):
        for r in rows:
            out.setdefault(tuple(r[:width]), {})[m.name] = int(r[width])
    return out


def disagreeing(hashes: dict[Key, dict[str, int]], names: Sequence[str]) -> list[Key]:
    return [k for k, h in hashes.items()
            if len(h) != len(names) or len(set(h.values())) > 1]


async def bisect(ctx: Context, chunk: Chunk, digests: dict[str, Digest], leaf_rows: int,
                 found: set[Key]) -> None:
    """Split a differing chunk until its ranges are small, then name the differing keys
    (at most `ctx.max_keys`: past that the report says it stopped, memory stays bounded)."""
    if not digests_differ(digests):
        return
    if len(found) >= ctx.max_keys:
        ctx.truncated = True
        return
    if not needs_bisection(digests, leaf_rows):
        hashes = await leaf_hashes(ctx, chunk)
        ctx.keys_touched += len(hashes)
        found.update(disagreeing(hashes, ctx.names)[:ctx.max_keys - len(found)])
        return
    # Split points from the member holding the most rows in this range.
    biggest = max(range(len(ctx.members)), key=lambda i: digests[ctx.names[i]].rows)
    rows = digests[ctx.names[biggest]].rows
    sql, params = cs.quantiles_sql(ctx.shapes[biggest], chunk,
                                   max(1, math.ceil(rows / FANOUT)))
    bounds = [tuple(r) for r in await ctx.members[biggest].pg.fetch(sql, *params)]
    subs = chunks_between(bounds, chunk.lo, chunk.hi)
    if len(subs) < 2:  # cannot split further (should not happen): compare rows
        hashes = await leaf_hashes(ctx, chunk)
        ctx.keys_touched += len(hashes)
        found.update(disagreeing(hashes, ctx.names))
        return
    sub_digests = await digest_all(ctx, subs, phase="bisect")
    for sub, d in zip(subs, sub_digests, strict=True):
        await bisect(ctx, sub, d, leaf_rows, found)


async def lookup(ctx: Context, keys: Sequence[Key], *, versions: bool,
                 values: bool) -> dict[Key, dict[str, RowVersion]]:
    """Current versions of the given keys at every member (index lookups)."""
    out: dict[Key, dict[str, RowVersion]] = {}
    width = len(ctx.shapes[0].key)

    async def fetch(i: int, batch: Sequence[Key]) -> list[Any]:
        m = ctx.members[i]
        sql = cs.lookup_sql(ctx.shapes[i], ctx.canonical, versions=versions and m.commit_ts,
                            values=values)
        return list(await m.pg.fetch(sql, *cs.key_arrays(batch, width)))

    for start in range(0, len(keys), LOOKUP_BATCH):
        batch = keys[start:start + LOOKUP_BATCH]
        per_member = await asyncio.gather(*(fetch(i, batch) for i in range(len(ctx.members))))
        for m, rows in zip(ctx.members, per_member, strict=True):
            for r in rows:
                k = tuple(r[:width])
                v = RowVersion(row_hash=str(int(r[width])))
                col = width + 1
                if versions and m.commit_ts:
                    v.committed_at, v.origin = r[col], r[col + 1]
                    col += 2
                if values:
                    raw = r[col]
                    v.values = json.loads(raw) if isinstance(raw, str) else raw
                out.setdefault(k, {})[m.name] = v
    return out


def _state(versions: dict[str, RowVersion], names: Sequence[str]) -> tuple[str | None, ...]:
    return tuple(versions[n].row_hash if n in versions else None for n in names)


async def recheck(ctx: Context, keys: Iterable[Key], *, settle_seconds: float,
                  timeout: float, reference: str) -> tuple[list[KeyDifference],
                                                           list[KeyDifference]]:
    """Re-read differing keys until each converges (lag), settles (reported) or the
    timeout passes (returned as unsettled, never silently dropped)."""
    pending = sorted(set(keys))
    persistent: list[KeyDifference] = []
    if not pending:
        return [], []
    names = ctx.names
    stable_since: dict[Key, tuple[tuple[str | None, ...], float]] = {}
    delays = iter(recheck_delays(min(0.2, max(settle_seconds / 4, 0.05)), 2.0, timeout))
    last: dict[Key, dict[str, RowVersion]] = {}
    while True:
        obs = await lookup(ctx, pending, versions=True, values=True)
        now_m, now_wall = time.monotonic(), datetime.now(UTC)
        still: list[Key] = []
        for k in pending:
            vs = obs.get(k, {})
            st = _state(vs, names)
            prev = stable_since.get(k)
            if prev is None or prev[0] != st:
                stable_since[k] = (st, now_m)
            stamps = [v.committed_at for v in vs.values() if v.committed_at is not None]
            age = (now_wall - max(stamps)).total_seconds() if stamps else None
            verdict = settle_verdict(len(set(st)) == 1, now_m - stable_since[k][1], age,
                                     settle_seconds)
            if verdict == "wait":
                still.append(k)
                last[k] = vs
            elif verdict == "persistent":
                d = classify(ctx.table, k, {n: st[i] for i, n in enumerate(names)}, names,
                             reference)
                if d is not None:
                    d.versions = {n: vs.get(n, RowVersion()) for n in names}
                    persistent.append(d)
        pending = still
        if not pending:
            return persistent, []
        delay = next(delays, None)
        if delay is None:
            unsettled = []
            for k in pending:
                vs = last[k]
                st = _state(vs, names)
                d = classify(ctx.table, k, {n: st[i] for i, n in enumerate(names)}, names,
                             reference)
                if d is not None:
                    d.versions = {n: vs.get(n, RowVersion()) for n in names}
                    unsettled.append(d)
            return persistent, unsettled
        ctx.report("recheck", 0, len(pending), 0, 0)
        await asyncio.sleep(delay)


async def full_candidates(ctx: Context, chunk_rows: int, leaf_rows: int) -> set[Key]:
    chunks, est = await plan_chunks(ctx.members[0], ctx.shapes[0], chunk_rows)
    ctx.chunks_total = len(chunks)
    digests = await digest_all(ctx, chunks, rows_total=est)
    for m in ctx.names:
        ctx.rows[m] = sum(d[m].rows for d in digests)
    found: set[Key] = set()
    differing = [(c, d) for c, d in zip(chunks, digests, strict=True) if digests_differ(d)]
    ctx.chunks_differing = len(differing)
    for chunk, d in differing:
        await bisect(ctx, chunk, d, leaf_rows, found)
    return found


def parse_dirty_key(raw: Any) -> Key:
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, list):
        value = [value]
    return tuple(x if isinstance(x, str) else json.dumps(x) for x in value)


async def incremental_candidates(ctx: Context, since: datetime | None) -> set[Key]:
    """Keys named in any member's dirty_keys (changed after `since`) whose rows differ."""
    rel = cs.relation_name(ctx.table)
    sql = ("SELECT key FROM ringkeeper.dirty_keys WHERE relation = $1 "
           "AND ($2::timestamptz IS NULL OR changed_at > $2)")
    # The sync sidecar's bulk path records one row per table and script:
    # keys[i][j] is key column i of the j-th key.
    sets_sql = ("SELECT keys FROM ringkeeper.dirty_key_sets WHERE relation = $1 "
                "AND ($2::timestamptz IS NULL OR changed_at > $2)")
    per_member = await asyncio.gather(*(m.pg.fetch(sql, rel, since) for m in ctx.members))
    per_member_sets = await asyncio.gather(
        *(m.pg.fetch(sets_sql, rel, since) for m in ctx.members))
    dirty_set = {parse_dirty_key(r[0]) for rows in per_member for r in rows}
    for rows in per_member_sets:
        for r in rows:
            dirty_set.update(tuple(k) for k in zip(*r[0], strict=True))
    dirty = sorted(dirty_set)
    ctx.keys_touched = len(dirty)
    width = len(ctx.shapes[0].key)
    bad = [k for k in dirty if len(k) != width]
    if bad:
        raise VerifyError(f"dirty_keys for {rel} hold keys of {len(bad[0])} values, the "
                          f"primary key has {width}: e.g. {list(bad[0])}")
    found: set[Key] = set()
    total = len(dirty)
    batches = max(1, math.ceil(total / LOOKUP_BATCH))
    ctx.chunks_total = batches
    for b in range(batches):
        batch = dirty[b * LOOKUP_BATCH:(b + 1) * LOOKUP_BATCH]
        obs = await lookup(ctx, batch, versions=False, values=False)
        for m in ctx.names:
            ctx.rows[m] = ctx.rows.get(m, 0) + sum(1 for v in obs.values() if m in v)
        for k, vs in obs.items():
            if len(vs) != len(ctx.names) or len({v.row_hash for v in vs.values()}) > 1:
                found.add(k)
        ctx.report("incremental", b + 1, batches, min(total, (b + 1) * LOOKUP_BATCH), total)
    ctx.chunks_differing = len(found)
    return found


async def verify_table(members: list[Member], table: str, *, mode: Mode, chunk_rows: int,
                       leaf_rows: int, settle_seconds: float, recheck_timeout: float,
                       canonical: Canonical, reference: str, since: datetime | None,
                       progress: ProgressFn | None, max_keys: int = 100_000) -> TableReport:
    shapes = aligned_shapes(
        await asyncio.gather(*(table_shape(m, table) for m in members)), members)
    ctx = Context(members, shapes, canonical, shapes[0].table, progress, max_keys=max_keys)
    run_start: list[datetime] = []
    if mode == "incremental":
        run_start = [await m.pg.fetchval("SELECT clock_timestamp()") for m in members]
        found = await incremental_candidates(ctx, since)
    else:
        found = await full_candidates(ctx, chunk_rows, leaf_rows)
    diffs, unsettled = await recheck(ctx, found, settle_seconds=settle_seconds,
                                     timeout=recheck_timeout, reference=reference)
    rep = TableReport(table=ctx.table, key_columns=list(shapes[0].key), mode=mode,
                      rows=ctx.rows, chunks=ctx.chunks_total,
                      chunks_differing=ctx.chunks_differing, keys_touched=ctx.keys_touched,
                      keys_rechecked=len(found), differences=diffs, unsettled=unsettled,
                      truncated=ctx.truncated, seconds=time.monotonic() - ctx.started)
    if mode == "incremental" and (since is None or rep.passed):
        # Every entry was compared: keep only the keys that differ or still change.
        await forget_compared([m.pg for m in members], cs.relation_name(ctx.table),
                              run_start, [tuple(d.key) for d in diffs + unsettled])
    elif mode == "full":  # incremental passes look at these again until they agree
        await remember([m.pg for m in members], cs.relation_name(ctx.table),
                       [tuple(d.key) for d in diffs + unsettled])
    return rep


async def verify(members: Sequence[MemberConn], tables: Sequence[str] | None = None, *,
                 mode: Mode = "full", chunk_rows: int = 100_000, leaf_rows: int = 2_000,
                 settle_seconds: float = 5.0, recheck_timeout: float | None = None,
                 canonical: Canonical = "typed", reference: str | None = None,
                 since: datetime | None = None, max_keys: int = 100_000,
                 progress: ProgressFn | None = None) -> Report:
    """Verify tables across 2..N members and name every persistent difference.

    mode "full" hashes every row in key-range chunks; "incremental" compares only keys in
    the union of the members' ringkeeper.dirty_keys (changed after `since`, default: all
    entries) and then drops the entries older than the run's start but those of keys
    that differ or were still changing (verify.dirty).
    A difference is reported only once it stayed unchanged for `settle_seconds` and its
    newest version is older than that (live replication is not damage); keys still
    changing after `recheck_timeout` (default max(30 s, 6 x settle)) are listed as
    unsettled. At most `max_keys` differing keys are named per table in full mode
    (`TableReport.truncated` says more differ). `tables` default to every table with a
    primary key outside the system schemas and ringkeeper (tables without one are listed
    in `Report.skipped`).
    """
    if len(members) < 2:
        raise VerifyError("verification needs at least two members")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise VerifyError(f"member names must be unique: {names}")
    ref = reference or names[0]
    if ref not in names:
        raise VerifyError(f"reference member {ref!r} is not one of {names}")
    timeout = recheck_timeout if recheck_timeout is not None else max(30.0, 6 * settle_seconds)
    started = datetime.now(UTC)
    conns = list(await asyncio.gather(*(connect(m) for m in members)))
    try:
        if mode == "incremental":
            for c in conns:
                await ensure_dirty_keys(c)
        skipped: dict[str, str] = {}
        if tables is None:
            with_pk, without = await list_tables(conns[0])
            todo = with_pk
            skipped = {t: "no primary key" for t in without}
        else:
            todo = [cs.relation_name(t) for t in tables]
        report = Report(mode=mode, members=names, reference=ref, started_at=started,
                        settle_seconds=settle_seconds, canonical=canonical, skipped=skipped)
        for t in todo:
            report.tables.append(await verify_table(
                conns, t, mode=mode, chunk_rows=chunk_rows, leaf_rows=leaf_rows,
                settle_seconds=settle_seconds, recheck_timeout=timeout, canonical=canonical,
                reference=ref, since=since, progress=progress, max_keys=max_keys))
        report.finished_at = datetime.now(UTC)
        return report
    finally:
        await close_all(conns)

"""Verification against live members: the comparison of chunk digests and the run.

Members hash the same chunk list in parallel (one task per member, so a fast member never
waits for a slow one chunk by chunk), chunk digests are compared, and differing chunks are
bisected down to rows; incremental runs take their candidate keys from the members'
dirty-key tables instead. The candidates are then rechecked (`recheck.py`) until they
converge (replication lag) or settle (damage). Connections and table shapes are
`members.py`'s job.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..core.verify import (
    Chunk,
    Digest,
    Key,
    MemberConn,
    Mode,
    chunks_between,
    digests_differ,
    needs_bisection,
    plan_integer_chunks,
    plan_sampled_chunks,
)
from ..core.verify_report import Report, TableReport
from . import checksum as cs
from .checksum import Canonical, TableShape
from .dirty import forget_compared, remember
from .members import (
    Context,
    Member,
    ProgressFn,
    VerifyError,
    aligned_shapes,
    close_all,
    connect,
    ensure_dirty_keys,
    list_tables,
    table_shape,
)
from .recheck import LOOKUP_BATCH, lookup, recheck

FANOUT = 16


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

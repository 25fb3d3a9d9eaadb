"""Rechecking differing keys under live traffic: index lookups of each key's current
version at every member, repeated until the difference converges (replication lag),
settles (reported) or the timeout passes (reported as unsettled).

Kept apart from the chunk comparison (`runner.py`) because it is the second, separate
phase of a verification and because repair re-reads the versions it fixes through the
same `lookup`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..core.verify import Key, KeyDifference, RowVersion, classify, recheck_delays, settle_verdict
from . import checksum as cs
from .members import Context

LOOKUP_BATCH = 5000


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

"""Repair of the differences a verification named, keeping each row's true origin.

A repaired row must look to the ring exactly like the winning version everywhere else:
same values, same ORIGINAL commit timestamp, same origin. So each fix runs at the
differing member under the winning version's replication origin
(`pg_replication_origin_session_setup`) with `pg_replication_origin_xact_setup('0/0', ts)`:
the commit then records the original timestamp and origin, while LSN 0/0 leaves the
origin's replay progress untouched (the sidecar's position is not disturbed). User
triggers are kept quiet with session_replication_role = replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

from ..base.sqlquote import quote_literal
from ..core.conflicts import Policy
from ..core.verify import KeyDifference, MemberConn, classify
from ..core.verify_repair import Fix, plan_fixes
from ..core.verify_report import Report
from . import checksum as cs
from .members import Context, Member, VerifyError, aligned_shapes, close_all, connect
from .members import table_shape as _table_shape
from .recheck import lookup


class RepairResult(BaseModel):
    """What repair would do (dry run) or did: one Fix per (key, member)."""

    dry_run: bool
    source: str | None = None
    policy: str = Policy.LAST_WRITER_WINS.value
    fixes: list[Fix] = Field(default_factory=list)
    applied: int = 0
    already_equal: list[list[str]] = Field(default_factory=list)

    def render_text(self) -> str:
        how = f"source {self.source}" if self.source else f"policy {self.policy}"
        verb = "would apply" if self.dry_run else "applied"
        lines = [f"repair by {how}: {verb} {len(self.fixes) if self.dry_run else self.applied}"
                 f" fix(es); {len(self.already_equal)} key(s) already equal"]
        for f in self.fixes:
            ts = f.committed_at.isoformat() if f.committed_at else "now"
            lines.append(f"  {f.table} [{','.join(f.key)}] at {f.member}: {f.action} from "
                         f"{f.source} (origin {f.origin}, committed {ts})")
        return "\n".join(lines) + "\n"


# The statements a fix runs (only repair writes rows).
def upsert_sql(shape: cs.TableShape) -> str:
    """Insert or overwrite one row from a {column: text} JSON object ($1), casting each
    text to this member's own column type (the text forms are the type's input syntax,
    so json keeps its exact text and arrays their literals)."""
    cols = [c for c in shape.columns if not c.generated]
    names = ", ".join(c.ident for c in cols)
    picked = ", ".join(f"(v ->> {quote_literal(c.name)})::{c.sql_type}" for c in cols)
    keys = ", ".join(c.ident for c in shape.key_columns)
    rest = [c for c in cols if c.name not in shape.key]
    override = " OVERRIDING SYSTEM VALUE" if any(c.identity == "a" for c in cols) else ""
    action = ("DO UPDATE SET " + ", ".join(f"{c.ident} = EXCLUDED.{c.ident}" for c in rest)
              if rest else "DO NOTHING")
    return (f"INSERT INTO {shape.rel} ({names}){override} SELECT {picked} "
            f"FROM (SELECT $1::jsonb AS v) s ON CONFLICT ({keys}) {action}")


def delete_sql(shape: cs.TableShape) -> str:
    conds = " AND ".join(f"{c.ident} = ${i + 1}::text::{c.sql_type}"
                         for i, c in enumerate(shape.key_columns))
    return f"DELETE FROM {shape.rel} WHERE {conds}"


async def current_differences(members: list[Member], table: str, keys: Sequence[list[str]],
                              canonical: cs.Canonical, reference: str
                              ) -> tuple[list[KeyDifference], list[list[str]]]:
    """Re-read the named keys now (the report may be old): still-differing keys with their
    versions (values, commit time, origin), and the keys that meanwhile agree."""
    shapes = aligned_shapes(
        await asyncio.gather(*(_table_shape(m, table) for m in members)), members)
    ctx = Context(members, shapes, canonical, shapes[0].table, None)
    wanted = [tuple(k) for k in keys]
    obs = await lookup(ctx, wanted, versions=True, values=True)
    names = ctx.names
    diffs: list[KeyDifference] = []
    equal: list[list[str]] = []
    for k in wanted:
        vs = obs.get(k, {})
        hashes = {n: (vs[n].row_hash if n in vs else None) for n in names}
        d = classify(ctx.table, k, hashes, names, reference)
        if d is None:
            equal.append(list(k))
            continue
        d.versions = {n: vs[n] for n in vs}
        diffs.append(d)
    return diffs, equal


OriginBusy = (asyncpg.exceptions.ObjectInUseError,)


async def _use_origin(pg: Any, origin: str, busy_timeout: float) -> None:
    """Create the origin if missing and bind this session to it, retrying while another
    session (the sidecar applying changes) holds it."""
    with contextlib.suppress(asyncpg.exceptions.UniqueViolationError):  # created meanwhile
        await pg.execute("SELECT pg_replication_origin_create($1) WHERE NOT EXISTS "
                         "(SELECT 1 FROM pg_replication_origin WHERE roname = $1)", origin)
    deadline = time.monotonic() + busy_timeout
    delay = 0.05
    while True:
        try:
            await pg.execute("SELECT pg_replication_origin_session_setup($1)", origin)
            return
        except OriginBusy as exc:
            if time.monotonic() + delay > deadline:
                raise VerifyError(f"replication origin {origin} stayed busy for "
                                  f"{busy_timeout:.0f}s: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)


async def apply_fixes(member: Member, fixes: Sequence[Fix], shape: cs.TableShape,
                      busy_timeout: float) -> int:
    """Apply one member's fixes, one transaction per fix (each carries its own original
    commit timestamp), grouped by origin so each origin is bound once."""
    pg = member.pg
    await pg.execute("SET session_replication_role = replica")
    upsert, delete = upsert_sql(shape), delete_sql(shape)
    done = 0
    by_origin: dict[str, list[Fix]] = {}
    for f in fixes:
        by_origin.setdefault(f.origin, []).append(f)
    for origin, group in by_origin.items():
        await _use_origin(pg, origin, busy_timeout)
        try:
            for f in group:
                async with pg.transaction():
                    await pg.execute("SELECT pg_replication_origin_xact_setup('0/0', "
                                     "coalesce($1::timestamptz, clock_timestamp()))",
                                     f.committed_at)
                    if f.action == "upsert":
                        await pg.execute(upsert, json.dumps(f.values))
                    else:
                        await pg.execute(delete, *f.key)
                done += 1
        finally:
            await pg.execute("SELECT pg_replication_origin_session_reset()")
    await pg.execute("RESET session_replication_role")
    return done


async def repair(report: Report, members: Sequence[MemberConn], *, source: str | None = None,
                 policy: Policy | str = Policy.LAST_WRITER_WINS, dry_run: bool = True,
                 busy_timeout: float = 30.0) -> RepairResult:
    """Make the members agree on every key the report names as different.

    With `source`, that member's rows (or their absence) win; otherwise the ring's policy
    decides (lastWriterWins: newest original commit, ties by priority then name; a row
    present somewhere wins over its absence). Keys are re-read first, so keys that
    converged since the report are left alone. `dry_run` only plans. Run a verification
    afterwards to confirm.
    """
    names = [m.name for m in members]
    if source is not None and source not in names:
        raise VerifyError(f"source member {source!r} is not one of {names}")
    pol = Policy(policy)
    result = RepairResult(dry_run=dry_run, source=source, policy=pol.value)
    by_table: dict[str, list[list[str]]] = {}
    for d in report.differences:
        by_table.setdefault(d.table, []).append(d.key)
    if not by_table:
        return result
    canonical: cs.Canonical = "text" if report.canonical == "text" else "typed"
    conns = list(await asyncio.gather(*(connect(m) for m in members)))
    try:
        for table, keys in by_table.items():
            diffs, equal = await current_differences(conns, table, keys, canonical,
                                                     source or names[0])
            result.already_equal += equal
            fixes = [f for d in diffs for f in plan_fixes(d, members, source=source,
                                                          policy=pol)]
            result.fixes += fixes
            if dry_run or not fixes:
                continue
            for m in conns:
                mine = [f for f in fixes if f.member == m.name]
                if mine:
                    shape = await _table_shape(m, table)
                    result.applied += await apply_fixes(m, mine, shape, busy_timeout)
        return result
    finally:
        await close_all(conns)


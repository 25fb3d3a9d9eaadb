"""Satellites in a verification: each satellite's tables against its parent's rows that
match the satellite's filter ("parent vs satellite").

A satellite holds only the rows its filter selects, so comparing it with the whole of
its parent's table would name every row of the other campuses. Both sides are restricted
to the filter (core.satellite.filter_sql, every name and value quoted) inside the
checksum queries (`TableShape.where`), and then compared exactly as ring members are:
chunk digests, bisection down to keys, rechecks under live traffic with the parent as
reference. Rows at the satellite outside its filter (its own writes of other campuses'
rows stay there by design) are counted, not compared.

Satellites are always compared in full: their tables are small, and the dirty-key
tables incremental runs read are the ring members', forgotten as the ring's own passes
compare them. Nothing here writes at a satellite (no repair, no dirty-key bookkeeping),
and a satellite that cannot be reached is reported as such, never as equal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import replace

import asyncpg

from ..contracts.ringconfig import RingConfig, SatelliteInfo
from ..core.satellite import filter_sql
from ..core.verify import MemberConn
from ..core.verify_report import SatelliteState, SatelliteTable, SatelliteVerification, TableReport
from . import checksum as cs
from .checksum import Canonical
from .members import (
    Context,
    Member,
    ProgressFn,
    VerifyError,
    aligned_shapes,
    close_all,
    connect,
    table_shape,
)
from .recheck import recheck
from .runner import full_candidates

ALIAS = "t"  # the alias every checksum query gives the table (checksum.py)


def satellite_conn(cfg: RingConfig, sat: SatelliteInfo) -> MemberConn:
    """The satellite as a comparison side; its origin is the one its writes travel under."""
    return MemberConn.for_ring(cfg.ring, sat.name, str(sat.dsn))


async def _outside_filter(member: Member, table: str, where: str) -> int:
    """Rows of the satellite's table its filter does not select (NULL counts as not
    selected, as in the sync's filter)."""
    n = await member.pg.fetchval(f"SELECT count(*) FROM {cs.qualified(table)} {ALIAS} "
                                 f"WHERE NOT coalesce(({where}), false)")
    return int(n)


async def compare_table(parent: Member, sat: Member, table: str, where: str, *,
                        chunk_rows: int, leaf_rows: int, settle_seconds: float,
                        recheck_timeout: float, canonical: Canonical,
                        progress: ProgressFn | None, max_keys: int) -> TableReport:
    """One table, parent (reference) vs satellite, both restricted to `where`."""
    members = [parent, sat]
    shapes = aligned_shapes(
        await asyncio.gather(*(table_shape(m, table) for m in members)), members)
    shapes = [replace(s, where=where) for s in shapes]
    ctx = Context(members, shapes, canonical, shapes[0].table, progress, max_keys=max_keys)
    found = await full_candidates(ctx, chunk_rows, leaf_rows)
    diffs, unsettled = await recheck(ctx, found, settle_seconds=settle_seconds,
                                     timeout=recheck_timeout, reference=parent.name)
    return TableReport(table=ctx.table, key_columns=list(shapes[0].key), mode="full",
                       rows=ctx.rows, chunks=ctx.chunks_total,
                       chunks_differing=ctx.chunks_differing, keys_touched=ctx.keys_touched,
                       keys_rechecked=len(found), differences=diffs, unsettled=unsettled,
                       truncated=ctx.truncated, seconds=time.monotonic() - ctx.started)


async def verify_satellite(cfg: RingConfig, sat: SatelliteInfo, parent: MemberConn,
                           only: Collection[str] | None = None, *, chunk_rows: int = 100_000,
                           leaf_rows: int = 2_000, settle_seconds: float = 5.0,
                           recheck_timeout: float | None = None,
                           canonical: Canonical = "typed", max_keys: int = 100_000,
                           progress: ProgressFn | None = None) -> SatelliteVerification:
    """Compare each of the satellite's tables (those in `only`, when given) with its
    parent. A satellite without an address or that does not answer is reported with
    that state; a table that cannot be compared (missing on either side, other columns)
    is reported with the reason, and the other tables are still compared."""
    rep = SatelliteVerification(satellite=sat.name, parent=sat.parent,
                          state=SatelliteState.COMPARED)
    if not sat.dsn:
        rep.state = SatelliteState.NO_ADDRESS
        rep.message = "the ring config has no address for it yet (its instance not serving?)"
        return rep
    wanted = None if only is None else {cs.relation_name(t) for t in only}
    tables = [(cs.relation_name(t), f) for t, f in sat.tables
              if wanted is None or cs.relation_name(t) in wanted]
    timeout = recheck_timeout if recheck_timeout is not None else max(30.0, 6 * settle_seconds)
    try:
        p = await connect(parent)
    except VerifyError as exc:
        rep.state, rep.message = SatelliteState.UNREACHABLE, f"parent: {exc}"
        return rep
    s: Member | None = None
    try:
        try:
            s = await connect(satellite_conn(cfg, sat))
        except VerifyError as exc:
            rep.state, rep.message = SatelliteState.UNREACHABLE, str(exc)
            return rep
        for table, row_filter in tables:
            where = filter_sql(row_filter, ALIAS)
            entry = SatelliteTable(table=table, filter=filter_sql(row_filter))
            rep.tables.append(entry)
            try:
                if s is None:  # after a failed table: fresh sessions on both sides
                    p = await connect(parent)
                    s = await connect(satellite_conn(cfg, sat))
                entry.compare = await compare_table(
                    p, s, table, where, chunk_rows=chunk_rows, leaf_rows=leaf_rows,
                    settle_seconds=settle_seconds, recheck_timeout=timeout,
                    canonical=canonical, progress=progress, max_keys=max_keys)
                entry.outside_filter = await _outside_filter(s, table, where)
            except (VerifyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as exc:
                # A missing table, a value of the filter the column's type cannot read,
                # the satellite gone mid-comparison: this table is not verified; the
                # members' result and the other tables stand. The sessions may still
                # run the other side's query, so both are replaced before the next one.
                entry.compare, entry.outside_filter = None, None
                entry.error = (str(exc) if isinstance(exc, VerifyError)
                               else f"{type(exc).__name__}: {exc}")
                for m in (p, s):
                    if m is not None:
                        m.pg.terminate()  # at once: a query of theirs may still run
                s = None
        return rep
    finally:
        await close_all([m for m in (p, s) if m is not None])


async def verify_satellites(cfg: RingConfig, only: Collection[str] | None = None, *,
                            chunk_rows: int = 100_000, settle_seconds: float = 5.0,
                            canonical: Canonical = "typed",
                            progress: ProgressFn | None = None) -> list[SatelliteVerification]:
    """Every satellite of the ring against its parent, one after the other (a satellite
    is small; running them in turn keeps the parents' load to one comparison). With
    `only`, the satellites holding none of those tables are left out."""
    out = []
    wanted = None if only is None else {cs.relation_name(t) for t in only}
    for sat in cfg.satellites:
        if wanted is not None and not wanted & {cs.relation_name(t) for t in sat.table_names}:
            continue  # --table named none of its tables: nothing of it to say
        info = cfg.member(sat.parent)
        if not info.dsn:
            out.append(SatelliteVerification(
                satellite=sat.name, parent=sat.parent, state=SatelliteState.UNREACHABLE,
                message=f"parent {sat.parent} has no primary to connect to right now"))
            continue
        parent = MemberConn.for_ring(cfg.ring, info.name, info.dsn, info.priority)
        out.append(await verify_satellite(cfg, sat, parent, only, chunk_rows=chunk_rows,
                                          settle_seconds=settle_seconds, canonical=canonical,
                                          progress=progress))
    return out

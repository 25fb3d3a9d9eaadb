"""The applier's conflict path: rows the fast statements did not apply.

A change the fast statements left (another origin wrote its row last, a tombstone
stands for it, a unique index besides the key refuses it, or it changes the key) is
read here with the row's version and tombstone; core.conflicts decides, this module
acts and logs the decision in ringkeeper.conflicts. Kept apart from the set-based fast
path (sync/rowpath.py) because this is where members can disagree, one row at a time.
"""

from __future__ import annotations

import json
import logging
import time

import asyncpg

from ..core import names
from ..core.conflicts import (
    Action,
    Decision,
    Kind,
    Op,
    Policy,
    Version,
    decide,
    decide_clash,
    forwards,
)
from ..engines import EngineProfile
from .catalog import quote_ident
from .records import ApplyError, Change
from .session import ApplySession
from .tablemap import TableMap

# One logger for the whole applier, as before it was split into parts.
log = logging.getLogger("ringkeeper.sync.apply")

CLASH_LOG_EVERY = 10.0  # seconds between log lines about unique clashes (all are counted)
# A unique index besides the key (or an exclusion constraint) refusing a row.
CLASHES = (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError)


class ConflictPath(ApplySession):
    """The conflict path part of the Applier (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str, local: str,
                 priorities: dict[str, int], policy: Policy | str) -> None:
        super().__init__(conn, profile, ring, local, priorities, policy)
        self._clash_logged = 0.0
        self._clash_quiet = 0

    # Slow path: read the local version and tombstone, decide, act, log.
    async def _slow(self, t: TableMap, ch: Change, attempt: int = 0) -> None:
        assert self._txn is not None
        origin, _, ts = self._txn
        incoming = Version(origin=origin, committed_at=ts,
                           priority=self.priorities.get(origin, 0), deleted=ch.op == Op.DELETE)
        lookup = ch.old_key or ch.key
        known = self._txn_rows.get(t.relation, lookup)
        x = self.profile.sql.xact_commit_timestamp_origin
        row = None
        xmin = None
        if known is None or known:
            r = await self.conn.fetchrow(
                f"SELECT t.xmin::text AS xmin, x.roident, x.timestamp FROM {t.quoted} AS t "
                f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true WHERE "
                + " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                               for i, k in enumerate(t.key)), *lookup)
            if r is not None:
                xmin = r["xmin"]
                row = self.version_of(r["roident"], r["timestamp"])
        if known:  # written earlier in this transaction: the newest version by definition
            decision = Decision(Action.UPDATE if ch.op != Op.DELETE else Action.DELETE, None,
                                "same transaction")
            if row is None:
                decision = Decision(Action.INSERT if ch.op != Op.DELETE else Action.SKIP, None,
                                    "same transaction")
        else:
            tomb = None
            if row is None:
                tr = await self.conn.fetchrow(
                    f"SELECT x.roident, x.timestamp FROM ringkeeper.tombstones tb "
                    f"LEFT JOIN LATERAL {x}(tb.xmin) AS x ON true "
                    "WHERE tb.relation = $1 AND tb.key = $2::jsonb", t.relation,
                    json.dumps(list(lookup), ensure_ascii=False, separators=(",", ":")))
                if tr is not None:
                    tomb = self.version_of(tr["roident"], tr["timestamp"])
                    tomb = Version(tomb.origin, tomb.committed_at, tomb.priority, deleted=True)
            decision = decide(ch.op, incoming, row, tomb, self.policy, complete=ch.complete)
            if decision.conflict is not None and not (row and row.origin == names.SEED):
                local = row or tomb
                self._txn_conflicts.append((
                    self.ring, t.relation, json.dumps(list(lookup), ensure_ascii=False),
                    decision.conflict.value,
                    "apply_remote" if decision.action != Action.SKIP else "keep_local",
                    local.origin if local else None, local.committed_at if local else None,
                    origin, ts, decision.reason))
                kind = decision.conflict.value
                self.stats.conflicts[kind] = self.stats.conflicts.get(kind, 0) + 1
        try:
            await self.conn.execute("SAVEPOINT rk_row")
            ok = await self._act(t, ch, decision.action, lookup, xmin,
                                 relay=forwards(decision))
            await self.conn.execute("RELEASE SAVEPOINT rk_row")
        except CLASHES as e:
            await self.conn.execute("ROLLBACK TO SAVEPOINT rk_row")
            if attempt >= 3:
                raise ApplyError(f"{t.relation} key {list(lookup)}: {e}, again after "
                                 "removing the rows it clashed with") from e
            if not await self._clash(t, ch, lookup, incoming, e):
                return  # the other row wins: this change is not applied here
            ok = False  # the other row is gone: apply again
        if not ok:
            if attempt >= 3:
                raise ApplyError(f"{t.relation} key {list(lookup)} keeps changing under apply")
            await self._slow(t, ch, attempt + 1)
            return
        if decision.action in (Action.INSERT, Action.UPDATE):
            self._txn_rows.set(t.relation, ch.key, True)
            if ch.old_key:
                self._txn_rows.set(t.relation, ch.old_key, False)
        elif decision.action == Action.DELETE:
            self._txn_rows.set(t.relation, lookup, False)

    async def _clash(self, t: TableMap, ch: Change, lookup: tuple[str, ...], incoming: Version,
                     e: asyncpg.IntegrityConstraintViolationError) -> bool:
        """The change clashed on a unique index other than the key with another row
        here: decide which stays (core.conflicts.decide_clash), log it, and remove the
        other row if the change wins. True if it did (apply the change again)."""
        cols = [r["attname"] for r in await self.conn.fetch(
            "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) "
            "WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = k.attnum WHERE i.indrelid = to_regclass($1) AND i.indisunique "
            "AND NOT i.indisprimary AND i.indexrelid = (SELECT c.oid FROM pg_class c WHERE "
            "c.relname = $2 AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE "
            "oid = to_regclass($1))) ORDER BY k.ord", t.quoted,
            getattr(e, "constraint_name", None) or "")]
        if not cols or any(c not in ch.values or ch.values[c] is None for c in cols):
            raise ApplyError(f"{t.relation} key {list(ch.key)}: {e} (a constraint the "
                             "ring cannot weigh: make it the same at every member, or "
                             "repair the clashing rows)") from e
        x = self.profile.sql.xact_commit_timestamp_origin
        keys = ", ".join(f"t.{quote_ident(k)}::text AS k{i}" for i, k in enumerate(t.key))
        r = await self.conn.fetchrow(
            f"SELECT {keys}, x.roident, x.timestamp FROM {t.quoted} AS t "
            f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true WHERE "
            + " AND ".join(f"t.{quote_ident(c)} = ${i + 1}::text::{t.types[c]}"
                           for i, c in enumerate(cols)), *[ch.values[c] for c in cols])
        if r is None:
            return True  # gone meanwhile: try again
        other_key = tuple(r[f"k{i}"] for i in range(len(t.key)))
        other = self.version_of(r["roident"], r["timestamp"])
        decision = decide_clash(incoming, other, self.policy)
        assert self._txn is not None
        self._txn_conflicts.append((
            self.ring, t.relation, json.dumps(list(ch.key), ensure_ascii=False),
            Kind.UNIQUE_CLASH.value,
            "apply_remote" if decision.action != Action.SKIP else "keep_local",
            other.origin, other.committed_at, incoming.origin, incoming.committed_at,
            f"{decision.reason} (row {list(other_key)}, {e.__class__.__name__} on "
            f"{', '.join(cols)})"))
        self.stats.conflicts[Kind.UNIQUE_CLASH.value] = \
            self.stats.conflicts.get(Kind.UNIQUE_CLASH.value, 0) + 1
        now = time.monotonic()
        if now - self._clash_logged >= CLASH_LOG_EVERY:
            log.warning("%s: %s clashes with %s on %s: %s (%d more since the last such "
                        "message)", t.relation, list(ch.key), list(other_key), ", ".join(cols),
                        decision.reason, self._clash_quiet)
            self._clash_logged, self._clash_quiet = now, 0
        else:
            self._clash_quiet += 1
        gone = other_key if decision.action == Action.DELETE else lookup
        if decision.action == Action.DELETE or ch.op == Op.UPDATE:
            await self.conn.execute(
                f"DELETE FROM {t.quoted} AS t WHERE "
                + " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                               for i, k in enumerate(t.key)), *gone)
            self._txn_rows.set(t.relation, gone, False)
        return decision.action == Action.DELETE

    async def _act(self, t: TableMap, ch: Change, action: Action, lookup: tuple[str, ...],
                   xmin: str | None, *, relay: bool = False) -> bool:
        """Carry out one decision; False if the row changed since it was read (retry).
        A tombstone that `relay`s is also passed on (core.conflicts.forwards): a relay
        row, inserted and deleted under this transaction's origin, is in this member's
        WAL for the next member's link, which applies it as the delete."""
        guard = "" if xmin is None else f" AND t.xmin::text = ${len(t.key) + 1}"
        where = " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                             for i, k in enumerate(t.key))
        if action == Action.SKIP:
            return True
        if action == Action.TOMBSTONE:
            key = json.dumps(list(lookup), ensure_ascii=False, separators=(",", ":"))
            await self.conn.execute(
                "INSERT INTO ringkeeper.tombstones (relation, key) VALUES ($1, $2::jsonb) "
                "ON CONFLICT (relation, key) DO UPDATE SET key = EXCLUDED.key", t.relation, key)
            if relay:
                await self.conn.execute(
                    "INSERT INTO ringkeeper.relay (nsp, name, key) VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT DO NOTHING", t.namespace, t.name, key)
                await self.conn.execute(
                    "DELETE FROM ringkeeper.relay WHERE nsp = $1 AND name = $2 "
                    "AND key = $3::jsonb", t.namespace, t.name, key)
            return True
        if action == Action.DELETE:
            dargs: list[str] = [*lookup] + ([xmin] if xmin is not None else [])
            status: str = await self.conn.execute(
                f"DELETE FROM {t.quoted} AS t WHERE {where}{guard}", *dargs)
            return status != "DELETE 0"
        cols = [c for c in t.columns if c and c in ch.values]
        if action == Action.INSERT:
            vals = ", ".join(f"${i + 1}::text::{t.types[c]}" for i, c in enumerate(cols))
            status = await self.conn.execute(
                f"INSERT INTO {t.quoted} ({', '.join(quote_ident(c) for c in cols)}) "
                f"VALUES ({vals}) ON CONFLICT ({', '.join(quote_ident(k) for k in t.key)}) "
                "DO NOTHING", *[ch.values[c] for c in cols])
            return status != "INSERT 0 0"
        n = len(t.key) + (1 if xmin is not None else 0)
        sets = ", ".join(f"{quote_ident(c)} = ${n + i + 1}::text::{t.types[c]}"
                         for i, c in enumerate(cols))
        args: list[str | None] = [*lookup]
        if xmin is not None:
            args.append(xmin)
        args += [ch.values[c] for c in cols]
        status = await self.conn.execute(
            f"UPDATE {t.quoted} AS t SET {sets} WHERE {where}{guard}", *args)
        return status != "UPDATE 0"


def describe_conflict(kind: Kind) -> str:
    return kind.value.replace("_", " ")

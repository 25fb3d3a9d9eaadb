"""Conflict storm: does a ring under concurrent updates and deletes of the same keys end
with the same data at every member? The verifier counts what differs.

    python bench/storm.py                  # alone (about a minute); part 6 of bench/ring.py
    STORM_SECONDS=10 STORM_KEYS=20 python bench/storm.py

A ring of `ringkeeper sync` processes (STORM_MAJORS, default 15,17,18) holds STORM_KEYS
rows (default 50) of lis.samples. STORM_WRITERS writers (default 4, spread over the
members) each run, for STORM_SECONDS seconds (default 20), a loop over random keys of
that small shared key space: an UPDATE (50 %), a DELETE (25 %) or an upsert (25 %,
INSERT ... ON CONFLICT DO UPDATE, which re-creates deleted keys), STORM_RATE operations
per second each (default 100). Then the ring is left to quiesce (every member's table
checksum unchanged for 3 s, at most 120 s), and the verifier compares the members:
`storm_diverged_keys` counts the keys a full verification names (must be 0),
`storm_diverged_keys_incremental` what an incremental pass over the ring's dirty keys
names (what continuous verification would report); `storm_conflicts` counts the
conflicts the members logged (ringkeeper.conflicts), to show the storm made some.
STORM_TAMPER=1 deletes one key at member b behind the ring (under the stock-sync origin,
never forwarded) after the ring is quiet, so the count must come out 1: the check can
fail. The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "tests" / "integration"),
                str(REPO / "tools" / "devcluster")]

from integration.ringlocal import LocalRing  # noqa: E402
from ringkeeper.core.verify import MemberConn  # noqa: E402
from ringkeeper.verify import verify  # noqa: E402

STORM_SECONDS = float(os.environ.get("STORM_SECONDS", "20"))
STORM_KEYS = int(os.environ.get("STORM_KEYS", "50"))
STORM_WRITERS = int(os.environ.get("STORM_WRITERS", "4"))
STORM_RATE = float(os.environ.get("STORM_RATE", "100"))
STORM_TAMPER = os.environ.get("STORM_TAMPER", "") not in ("", "0")
STORM_QUIET_S = 3.0
STORM_QUIESCE_MAX_S = 120.0


def storm_majors() -> tuple[str, ...]:
    return tuple(m for m in os.environ.get("STORM_MAJORS", "15,17,18").split(",") if m)


async def _until(what: str, check: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _writer(conn: Any, member: str, seed: int, stop: float, ops: Counter[str],
                  errors: Counter[str]) -> None:
    rnd = random.Random(seed)
    period = 1.0 / STORM_RATE
    nxt = time.monotonic()
    while time.monotonic() < stop:
        key, roll, value = rnd.randint(1, STORM_KEYS), rnd.random(), rnd.randint(1, 10**6)
        try:
            if roll < 0.5:
                await conn.execute("UPDATE lis.samples SET status = $2, result = $3 "
                                   "WHERE id = $1", key, f"u{seed}", value / 7)
                ops["update"] += 1
            elif roll < 0.75:
                await conn.execute("DELETE FROM lis.samples WHERE id = $1", key)
                ops["delete"] += 1
            else:
                await conn.execute(
                    "INSERT INTO lis.samples (id, campus, status, result) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE "
                    "SET status = EXCLUDED.status, result = EXCLUDED.result",
                    key, member, f"i{seed}", value / 7)
                ops["upsert"] += 1
        except Exception as exc:  # counted and reported: a storm must not stop on one
            errors[type(exc).__name__] += 1
        nxt += period
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))


async def _checksums(ring: LocalRing) -> tuple[str, ...]:
    return tuple((await ring.checksums("lis.samples")).values())


async def storm(out: dict[str, Any], make_ring: Callable[..., LocalRing],
                say: Callable[[str], None]) -> None:
    ring = make_ring(storm_majors(), "storm")
    say(f"== 6. conflict storm: {STORM_WRITERS} writers over {STORM_KEYS} shared keys on a "
        f"{len(ring.names)}-member ring ({', '.join(ring.majors)}), updates, deletes and "
        f"upserts for {STORM_SECONDS:.0f}s, {STORM_RATE:g} ops/s each")
    ring.start_servers()
    for n in ring.names:
        ring.start_process(n, ring.root / f"sync-{n}.log")
    conns = {n: await ring.conn(n) for n in ring.names}
    try:
        await conns["a"].execute(
            "INSERT INTO lis.samples (id, campus, status, result) "
            "SELECT g, 'a', 'seed', g FROM generate_series(1, $1) g", STORM_KEYS)

        async def seeded() -> bool:
            for c in conns.values():
                if await c.fetchval("SELECT count(*) FROM lis.samples") != STORM_KEYS:
                    return False
            return True

        t = time.monotonic()
        await _until("the seed rows at every member", seeded, 120)
        say(f"storm: ring up, {STORM_KEYS} rows everywhere after {time.monotonic() - t:.1f}s")

        ops: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        writers = [await ring.conn(ring.names[i % len(ring.names)])
                   for i in range(STORM_WRITERS)]
        stop = time.monotonic() + STORM_SECONDS
        try:
            await asyncio.gather(*(_writer(w, ring.names[i % len(ring.names)], i + 1, stop,
                                           ops, errors)
                                   for i, w in enumerate(writers)))
        finally:
            for w in writers:
                await w.close()
        say(f"storm: {sum(ops.values()):,} operations {dict(ops)}"
            + (f", errors {dict(errors)}" if errors else ""))

        t = time.monotonic()
        last, since = await _checksums(ring), time.monotonic()
        while time.monotonic() - since < STORM_QUIET_S:
            if time.monotonic() - t > STORM_QUIESCE_MAX_S:
                break
            await asyncio.sleep(0.5)
            now = await _checksums(ring)
            if now != last:
                last, since = now, time.monotonic()
        quiesce = time.monotonic() - t - STORM_QUIET_S
        converged = len(set(last)) == 1
        say(f"storm: quiet after {quiesce:.1f}s; checksums "
            + ("equal at every member" if converged else f"differ: {last}"))

        if STORM_TAMPER:
            b = conns[ring.names[1]]
            key = await b.fetchval("SELECT min(id) FROM lis.samples")
            async with b.transaction():
                await b.execute("SELECT pg_replication_origin_session_setup($1)",
                                f"rk_{ring.ring}__seed")
                await b.execute("DELETE FROM lis.samples WHERE id = $1", key)
            await b.execute("SELECT pg_replication_origin_session_reset()")
            say(f"storm: STORM_TAMPER: deleted key {key} at {ring.names[1]} behind the ring")
        conflicts = 0
        for c in conns.values():
            conflicts += int(await c.fetchval("SELECT count(*) FROM ringkeeper.conflicts"))
        members = [MemberConn.for_ring(ring.ring, n, ring.servers[n].dsn())
                   for n in ring.names]
        t = time.monotonic()
        full = await verify(members, ["lis.samples"], mode="full", chunk_rows=1000,
                            settle_seconds=1.0)
        full_s = time.monotonic() - t
        t = time.monotonic()
        incr = await verify(members, ["lis.samples"], mode="incremental", settle_seconds=1.0)
        incr_s = time.monotonic() - t
        say(f"storm: {conflicts} conflicts logged; full verification "
            f"{len(full.differences)} differing key(s) "
            f"({full_s:.2f}s); incremental {len(incr.differences)} "
            f"({incr_s:.2f}s, {incr.tables[0].keys_touched} dirty keys)")
        if full.differences:
            say(full.render_text()[:3000])
    finally:
        for c in conns.values():
            await c.close()
        for n in list(ring.procs):
            ring.term_process(n)
    out.update({
        "storm_majors": list(ring.majors), "storm_seconds": STORM_SECONDS,
        "storm_writers": STORM_WRITERS, "storm_keys": STORM_KEYS,
        "storm_ops": dict(ops), "storm_errors": dict(errors), "storm_conflicts": conflicts,
        "storm_tampered": STORM_TAMPER,
        "storm_quiesce_s": round(quiesce, 1), "storm_checksums_equal": converged,
        "storm_diverged_keys": len(full.differences) + sum(len(t.unsettled)
                                                           for t in full.tables),
        "storm_diverged_keys_incremental": len(incr.differences),
        "storm_incremental_keys_touched": incr.tables[0].keys_touched,
        "storm_verify_full_s": round(full_s, 2), "storm_verify_incremental_s": round(incr_s, 2),
    })
    ring.destroy()


def main() -> None:
    from pgserver import unavailable

    for m in sorted(set(storm_majors())):
        if reason := unavailable(m):
            sys.exit(f"cannot run: PostgreSQL {m}: {reason}")
    t0 = time.monotonic()
    rings: list[LocalRing] = []

    def make_ring(majors: tuple[str, ...], name: str) -> LocalRing:
        rings.append(LocalRing(majors, ring=name))
        return rings[-1]

    out: dict[str, Any] = {"bench": "storm"}
    try:
        asyncio.run(storm(out, make_ring,
                          lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True)))
    finally:
        for r in rings:
            for n in list(r.procs):
                r.kill_process(n)
            r.destroy()
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

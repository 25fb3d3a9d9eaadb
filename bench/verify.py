"""Benchmark: full and incremental verification between a PostgreSQL 15 and an 18 member.

    ROWS=1000000 python bench/verify.py      # quick
    python bench/verify.py                   # 10,000,000 rows (the target)

Loads the same ROWS-row (logged) table into both servers, times a full verification,
times a naive baseline (fetch every row from both members through asyncpg and compare in
Python) on a prefix of NAIVE_ROWS rows and extrapolates its per-row rate, then changes
10,000 rows at both members, marks them dirty the way the sync sidecar does, and times an
incremental verification. Progress goes to stdout; the last line is one JSON object.
Environment: ROWS, NAIVE_ROWS (default min(ROWS, 1,000,000)), CHUNK_ROWS, CANONICAL,
MAJORS (default "15,18").
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests")]

from pgserver import PgServer, unavailable  # noqa: E402
from ringkeeper.verify import MemberConn, Progress, verify  # noqa: E402

ROWS = int(os.environ.get("ROWS", "10000000"))
NAIVE_ROWS = int(os.environ.get("NAIVE_ROWS", str(min(ROWS, 1_000_000))))
CHUNK_ROWS = int(os.environ.get("CHUNK_ROWS", "100000"))
CANONICAL = os.environ.get("CANONICAL", "typed")
MAJORS = tuple(os.environ.get("MAJORS", "15,18").split(","))
CHANGES = 10_000
LOAD_BATCH = 1_000_000
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "1GB", "max_wal_size": "16GB", "checkpoint_timeout": "1h",
            "maintenance_work_mem": "512MB", "max_parallel_workers_per_gather": "0",
            "autovacuum": "off"}

DDL = """CREATE TABLE bench (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2),
  note text, updated_at timestamptz NOT NULL)"""
LOAD = """INSERT INTO bench SELECT g, g % 1000, (g % 100000) / 100.0, 'note ' || g,
  '2024-01-01 00:00+00'::timestamptz + g * interval '1 second'
FROM generate_series($1::bigint, $2::bigint) g"""


def say(msg: str) -> None:
    print(msg, flush=True)


async def load(servers: list[PgServer]) -> None:
    conns = [await asyncpg.connect(s.dsn()) for s in servers]
    try:
        for c in conns:
            await c.execute(DDL)
        t0 = time.monotonic()

        async def fill(i: int) -> None:
            c = conns[i]
            for lo in range(1, ROWS + 1, LOAD_BATCH):
                hi = min(ROWS, lo + LOAD_BATCH - 1)
                await c.execute(LOAD, lo, hi)
                say(f"load {servers[i].name}: {hi:,}/{ROWS:,} rows "
                    f"({time.monotonic() - t0:.1f}s)")
            await c.execute("VACUUM (ANALYZE) bench")
            say(f"load {servers[i].name}: vacuumed ({time.monotonic() - t0:.1f}s)")

        await asyncio.gather(*(fill(i) for i in range(len(conns))))
    finally:
        for c in conns:
            await c.close()


async def naive(members: list[MemberConn], limit: int) -> tuple[float, int]:
    """Fetch rows 1..limit from both members in key order and compare them in Python."""
    conns = [await asyncpg.connect(m.dsn, server_settings={"TimeZone": "UTC"})
             for m in members]
    t0 = time.monotonic()
    differing = 0
    compared = 0
    try:
        batch = 20_000

        async def stream(c: Any, lo: int) -> list[Any]:
            return list(await c.fetch("SELECT * FROM bench WHERE id >= $1 AND id < $2 "
                                      "ORDER BY id", lo, lo + batch))

        for lo in range(1, limit + 1, batch):
            a, b = await asyncio.gather(stream(conns[0], lo), stream(conns[1], lo))
            ia = {r[0]: tuple(r) for r in a}
            for r in b:
                t = tuple(r)
                if ia.pop(t[0], None) != t:
                    differing += 1
            differing += len(ia)
            compared += len(a)
            if (lo // batch) % 10 == 0:
                say(f"naive: {compared:,}/{limit:,} rows ({time.monotonic() - t0:.1f}s)")
    finally:
        for c in conns:
            await c.close()
    assert differing == 0, f"naive baseline found {differing} differences"
    return time.monotonic() - t0, compared


async def change_rows(members: list[MemberConn]) -> None:
    """10,000 updates applied at both members (a converged ring), dirty at both, as the
    sidecar marks each key it applies."""
    keys = random.Random(10).sample(range(1, ROWS + 1), min(CHANGES, ROWS))
    for m in members:
        c = await asyncpg.connect(m.dsn)
        try:
            await c.execute("UPDATE bench SET amount = amount + 1, note = note || '+' "
                            "WHERE id = ANY($1::bigint[])", keys)
            await c.execute("""
                CREATE SCHEMA IF NOT EXISTS ringkeeper;
                CREATE TABLE IF NOT EXISTS ringkeeper.dirty_keys (relation text NOT NULL,
                  key jsonb NOT NULL, changed_at timestamptz NOT NULL
                  DEFAULT clock_timestamp(), PRIMARY KEY (relation, key))""")
            await c.execute("INSERT INTO ringkeeper.dirty_keys (relation, key) SELECT "
                            "'public.bench', jsonb_build_array(k::text) "
                            "FROM unnest($1::bigint[]) k ON CONFLICT DO NOTHING", keys)
        finally:
            await c.close()


def progress_printer() -> Any:
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or (p.chunks_total and p.chunks_done == p.chunks_total):
            last[0] = now
            say("verify " + p.line())

    return show


async def main() -> None:
    for m in MAJORS:
        if reason := unavailable(m):
            sys.exit(f"cannot run: {reason}")
    servers = [PgServer(m, name=f"bench-{m}", settings=SETTINGS) for m in MAJORS]
    try:
        for s in servers:
            s.start()
        say(f"servers: {', '.join(f'PostgreSQL {s.major} on :{s.port}' for s in servers)}")
        await load(servers)
        members = [MemberConn.for_ring("bench", f"m{s.major}", s.dsn()) for s in servers]

        t0 = time.monotonic()
        report = await verify(members, ["bench"], mode="full", chunk_rows=CHUNK_ROWS,
                              settle_seconds=0, canonical=CANONICAL,  # type: ignore[arg-type]
                              progress=progress_printer())
        full_s = time.monotonic() - t0
        t = report.tables[0]
        assert report.passed, report.render_text()
        assert all(n == ROWS for n in t.rows.values()), t.rows
        full_rate = ROWS / full_s
        say(f"full verification: {ROWS:,} rows on each of {len(members)} members in "
            f"{full_s:.2f}s = {full_rate:,.0f} rows/s ({t.chunks} chunks, canonical "
            f"{CANONICAL})")

        naive_s, naive_n = await naive(members, NAIVE_ROWS)
        naive_rate = naive_n / naive_s
        say(f"naive baseline: {naive_n:,} rows fetched from both members and compared in "
            f"{naive_s:.2f}s = {naive_rate:,.0f} rows/s"
            + (f" (measured on a {naive_n:,}-row prefix; per-row rate extrapolated to "
               f"{ROWS:,} rows = {ROWS / naive_rate:.1f}s)" if naive_n < ROWS else ""))

        await change_rows(members)
        t0 = time.monotonic()
        inc = await verify(members, ["bench"], mode="incremental", settle_seconds=0)
        inc_s = time.monotonic() - t0
        it = inc.tables[0]
        assert inc.passed, inc.render_text()
        say(f"incremental verification: {it.keys_touched:,} dirty keys in {inc_s:.3f}s")
        print(json.dumps({
            "bench": "verify", "rows": ROWS, "majors": list(MAJORS),
            "full_rows_per_s": round(full_rate), "naive_rows_per_s": round(naive_rate),
            "speedup_vs_naive": round(full_rate / naive_rate, 1),
            "incremental_10k_s": round(inc_s, 3)}), flush=True)
    finally:
        for s in servers:
            s.destroy()


if __name__ == "__main__":
    asyncio.run(main())

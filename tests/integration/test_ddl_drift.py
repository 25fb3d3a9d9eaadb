"""DDL drift stops one table, not the ring (issue 14, item 7; sync/parking.py).

A column is added to lis.results at one member only, while every member keeps writing
both tables. The other table keeps flowing everywhere; lis.results' changes from that
member wait (parked) at the next member, which says so in its report and in the ring's
TablesParked condition; once the same DDL runs at the other members every parked
change is applied in order and the members converge. Every acknowledged write is
recorded in a ledger and found at every member at the end; the checker is shown to
fail on a row deleted on purpose.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core.ringplan import ring_status

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.postgres

# (table, key) -> the value last acknowledged: for lis.samples the status, for
# lis.results "value|lab"
Ledger = dict[tuple[str, tuple[object, ...]], str]


class Writers:
    """One writer per member, committing small transactions to both tables until told
    to stop; every acknowledged commit goes into the ledger."""

    def __init__(self, ring: LocalRing) -> None:
        self.ring = ring
        self.ledger: Ledger = {}
        self.stop = asyncio.Event()
        self.lab_at: set[str] = set()  # members whose lis.results has the lab column
        self.acked: dict[str, int] = {}

    async def run(self, member: str, index: int) -> None:
        conn = await self.ring.conn(member)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                sid = index * 1_000_000 + n
                lab = member in self.lab_at
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO lis.samples (id, campus, status) VALUES ($1, $2, 'new')",
                        sid, member)
                    if lab:
                        await conn.execute(
                            "INSERT INTO lis.results (sample_id, test_code, value, lab) "
                            "VALUES ($1, 'GLU', $2, $3)", sid, float(n), f"lab-{member}")
                    else:
                        await conn.execute(
                            "INSERT INTO lis.results (sample_id, test_code, value) "
                            "VALUES ($1, 'GLU', $2)", sid, float(n))
                    if n > 3 and n % 3 == 0:  # an update of an earlier row of this member
                        await conn.execute("UPDATE lis.samples SET status = 'done' WHERE id = $1",
                                           sid - 3)
                        await conn.execute("UPDATE lis.results SET value = value + 0.5 "
                                           "WHERE sample_id = $1", sid - 3)
                self.ledger[("lis.samples", (sid,))] = "new"
                self.ledger[("lis.results", (sid, "GLU"))] = (
                    f"{float(n)}|{'lab-' + member if lab else ''}")
                if n > 3 and n % 3 == 0:
                    self.ledger[("lis.samples", (sid - 3,))] = "done"
                    old = self.ledger[("lis.results", (sid - 3, "GLU"))]
                    v, lb = old.split("|")
                    self.ledger[("lis.results", (sid - 3, "GLU"))] = f"{float(v) + 0.5}|{lb}"
                self.acked[member] = n
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


async def missing(ring: LocalRing, ledger: Ledger) -> dict[str, list[object]]:
    """Ledger entries not found (or with another value) at each member."""
    out: dict[str, list[object]] = {}
    for m in ring.names:
        conn = await ring.conn(m)
        try:
            has_lab = bool(await conn.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'lis.results'::regclass "
                "AND attname = 'lab' AND NOT attisdropped"))
            samples = {(r["id"],): r["status"] for r in await conn.fetch(
                "SELECT id, status FROM lis.samples")}
            lab = "coalesce(lab, '')" if has_lab else "''"
            results = {(r["sample_id"], r["test_code"]): f"{r['value']}|{r['lab']}"
                       for r in await conn.fetch(
                           f"SELECT sample_id, test_code, value, {lab} AS lab FROM lis.results")}
        finally:
            await conn.close()
        bad: list[object] = []
        for (table, key), want in ledger.items():
            have = (samples if table == "lis.samples" else results).get(key)
            if have != want:
                bad.append((table, key, want, have))
        out[m] = bad
    return out


async def _parked_rows(ring: LocalRing, member: str) -> int:
    conn = await ring.conn(member)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ringkeeper.parked"))
    finally:
        await conn.close()


def _reports(ring: LocalRing) -> dict[str, dict[str, Any]]:
    return {n: sc.state.as_dict() for n, sc in ring.sidecars.items()}


async def test_drift_parks_only_the_drifting_table_and_replays_it_in_order() -> None:
    ring = LocalRing(("17", "15", "18"))
    ring.start_servers()
    writers = Writers(ring)
    tasks: list[asyncio.Task[None]] = []
    try:
        # Writes start before the sidecars and go on throughout.
        tasks = [asyncio.create_task(writers.run(m, i + 1)) for i, m in enumerate(ring.names)]
        await asyncio.sleep(0.5)
        for n in ring.names:
            ring.start_sidecar(n)

        async def streaming() -> bool:
            return all(sc.state.links and all(lk.state == "Streaming"
                                              for lk in sc.state.links.values())
                       for sc in ring.sidecars.values())
        await wait_until("every link streams", streaming, 90)

        # Drift: a alone gains a column and writes it.
        a = await ring.conn("a")
        await a.execute("ALTER TABLE lis.results ADD COLUMN lab text")
        await a.close()
        writers.lab_at.add("a")
        drift_at = writers.acked["a"]

        # lis.samples keeps flowing from a to b and c; lis.results from a waits at b.
        async def samples_flow() -> bool:
            want = 1_000_000 + drift_at + 20
            for m in ("b", "c"):
                c = await ring.conn(m)
                try:
                    if not await c.fetchval("SELECT count(*) FROM lis.samples "
                                            "WHERE id BETWEEN $1 AND 1999999", want):
                        return False
                finally:
                    await c.close()
            return True
        await wait_until("a's samples written after the drift reach b and c", samples_flow, 60)
        assert await _parked_rows(ring, "b") > 0

        async def reported() -> bool:
            parked = [p for lk in _reports(ring)["b"]["links"] for p in lk.get("parked", [])]
            return any(p["table"] == "lis.results" and "lab" in p["reason"] for p in parked)
        await wait_until("b reports lis.results parked, naming the column", reported, 20)
        st = ring_status({"members": [{"name": n} for n in ring.names]}, _reports(ring), 1,
                         datetime.now(UTC))
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["TablesParked"]["status"] == "True", conds["TablesParked"]
        assert "lis.results at b" in conds["TablesParked"]["message"]
        assert conds["Degraded"]["status"] == "True"
        # Only that table stopped: every link still carries changes.
        assert all(lk["state"] == "Streaming" for r in _reports(ring).values()
                   for lk in r["links"])

        # The DDL reaches the others; writes go on; everything parked is applied.
        for m in ("b", "c"):
            c = await ring.conn(m)
            await c.execute("ALTER TABLE lis.results ADD COLUMN lab text")
            await c.close()
            writers.lab_at.add(m)
            await asyncio.sleep(1.0)

        async def drained() -> bool:
            return all([await _parked_rows(ring, m) == 0 for m in ring.names])
        await wait_until("every parked change applied", drained, 60)
        await asyncio.sleep(2.0)  # writes after the replay
        writers.stop.set()
        await asyncio.gather(*tasks)
        tasks = []
        async def all_found() -> bool:
            return all(not v for v in (await missing(ring, writers.ledger)).values())
        try:
            await wait_until("every acknowledged write at every member", all_found, 90)
        finally:
            gone = await missing(ring, writers.ledger)
            assert all(not v for v in gone.values()), {m: (len(v), v[:5]) for m, v in gone.items()}
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=30)
        assert len(writers.ledger) > 300
        st = ring_status({"members": [{"name": n} for n in ring.names]}, _reports(ring), 1,
                         datetime.now(UTC))
        await asyncio.sleep(6)  # one more retry round clears the reports
        st = ring_status({"members": [{"name": n} for n in ring.names]}, _reports(ring), 1,
                         datetime.now(UTC))
        assert {c["type"]: c["status"] for c in st["conditions"]}["TablesParked"] == "False"

        # The checker can fail: a row deleted on purpose is reported.
        c = await ring.conn("c")
        key = next(k for t, k in writers.ledger if t == "lis.results")
        await c.execute("DELETE FROM lis.results WHERE sample_id = $1 AND test_code = $2", *key)
        await c.close()
        gone = await missing(ring, writers.ledger)
        assert any(item[1] == key for item in gone["c"]), gone["c"][:3]
    finally:
        writers.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ring.stop_all()
        ring.destroy()

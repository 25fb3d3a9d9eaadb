"""The drill's measuring pieces against a real PostgreSQL 17 server, without a cluster:
the -rw relay (controller/drill_io.RwProxy, its address lookup replaced by the server's),
the RTO probe and the LIS load through the relay.

1. The probe's RTO is the time from the fault to the first write on a server other than
   the one writable before it: the server is killed (immediate stop) and started again
   after ~1.5 s, so the RTO is at least that long and well under 10 s.
2. The check can fail: with the fault declared but the server never restarted, every
   later write lands on the same server, and no RTO is reported.
3. The load through the relay commits, and the ledger check on the server finds nothing
   lost; a row deleted behind the load's back is counted as lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.controller import drill_io
from ringkeeper.workload import Ledger, LedgerProblem, SiteTarget, check, plan, run

pytestmark = pytest.mark.postgres
PASSWORD = "drill-secret"


@pytest.fixture
def server() -> Iterator[PgServer]:
    reason = unavailable("17")
    if reason:
        pytest.skip(reason)
    s = PgServer("17", name="drill")
    s.start()
    s.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
    s.psql("CREATE DATABASE app OWNER app")
    try:
        yield s
    finally:
        s.destroy()


async def _relay(s: PgServer, monkeypatch: pytest.MonkeyPatch) -> drill_io.RwProxy:
    async def addresses(api: Any, namespace: str, campus: str) -> list[str]:
        return [s.host]

    monkeypatch.setattr(drill_io, "rw_addresses", addresses)
    px = drill_io.RwProxy(None, "ns", "lab")  # type: ignore[arg-type]
    px.upstream_port = s.port
    await px.start()
    return px


async def _until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_rto_counts_until_another_server_writes(server: PgServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    px = await _relay(server, monkeypatch)
    probe = drill_io.Probe("lab", px.dsn(PASSWORD))
    task = asyncio.create_task(probe.run())
    try:
        await _until("probe writes", lambda: probe.writes >= 3, 20)
        before = probe.last_server
        probe.fault(killed=True)
        await asyncio.to_thread(server.stop, "immediate")
        await asyncio.sleep(1.5)
        await asyncio.to_thread(server.start)
        await _until("recovery", lambda: probe.rto is not None, 20)
        assert probe.rto is not None and 1.5 <= probe.rto < 10, probe.rto
        assert probe.last_server != before  # same address, newer postmaster start

        # 2. fault declared, nothing happens: writes go on, to the same server, no RTO
        probe.rto = None
        probe.fault(killed=True)
        writes = probe.writes
        await asyncio.sleep(2)
        assert probe.writes > writes + 3
        assert probe.rto is None
    finally:
        probe.stop.set()
        await task
        await px.close()


async def test_load_through_the_relay_and_its_ledger(server: PgServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    px = await _relay(server, monkeypatch)
    ledger = Ledger()
    dsn = px.dsn(PASSWORD)
    try:
        result = await run([SiteTarget("lab", 1, dsn)], plan(duration=4, rate=10, workers=2),
                           ledger)
        committed = sum(ledger.commits.values())
        assert committed > 20 and result.total("specimens") > 10
        conn = await asyncpg.connect(dsn)
        try:
            report = await check({"lab": conn}, ledger, holds={"lab": ["lab"]})
            assert report.passed, report.as_dict()
            key = await conn.fetchval("SELECT min(result_id) FROM lis.results")
            await conn.execute("DELETE FROM lis.results WHERE result_id = $1", key)
            report = await check({"lab": conn}, ledger, holds={"lab": ["lab"]})
            assert report.count(LedgerProblem.MISSING) == 1
        finally:
            await conn.close()
    finally:
        await px.close()

"""Real PostgreSQL, real agents, the operator's failover runner: no committed row lost."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from integration.localcampus import LocalCampus, agent_client, pg_bin, unavailable, wait_until
from ringkeeper.controller.failover import run_failover
from ringkeeper.core.ha import snapshot_to_status, sync_snapshot

pytestmark = pytest.mark.postgres

SPEC_ANY = {"synchronous": {"method": "any", "number": 1, "dataDurability": "required"},
            "failover": {"detectionDelaySeconds": 5, "selfFenceAfterSeconds": 3}}


@pytest.fixture
def root() -> Iterator[Path]:
    """A folder the unprivileged pod user can traverse (pytest's own tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ringkeeper-it-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _need(major: str) -> None:
    reason = unavailable() or (None if pg_bin(major) else f"PostgreSQL {major} not installed")
    if reason:
        pytest.skip(reason)


async def _bootstrap(c: LocalCampus, session: aiohttp.ClientSession,
                     spec: dict[str, Any]) -> None:
    agents = agent_client(session)
    c.write_campus(spec, {"targetPrimary": f"{c.name}-0"})
    for n in c.names:
        c.start(n)
    first = c.ips[c.names[0]]

    async def primary_up() -> bool:
        st = await agents.status(first)
        return bool(st and st["role"] == "primary")

    await wait_until("the first primary", primary_up, timeout=90)
    await c.store.patch_status({"currentPrimary": c.names[0]}, None)

    async def replicas_streaming() -> bool:
        st = await agents.status(first)
        standbys = [s for s in (st or {}).get("server", {}).get("standbys") or []
                    if s["application_name"] in c.names and s["state"] == "streaming"]
        # pg_basebackup's own WAL stream also shows up here; only instances count, and
        # synchronous replication must be in force before the test writes.
        return (len(standbys) == c.instances - 1
                and any(s["sync_state"] in ("sync", "quorum") for s in standbys))

    await wait_until("replicas streaming", replicas_streaming, timeout=120)


async def _record_snapshot(c: LocalCampus, session: aiohttp.ClientSession,
                           primary: str) -> None:
    campus = await c.store.read()
    raw = await agent_client(session).status(c.ips[primary])
    snap = sync_snapshot(campus["spec"], c.name, primary, raw)
    assert snap is not None
    await c.store.patch_status({"syncSnapshot": snapshot_to_status(snap)}, None)


async def _write(c: LocalCampus, primary: str, first: int, count: int) -> list[int]:
    conn = await asyncpg.connect(**c.dsn(primary), timeout=5)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY, v text)")
        acked = []
        for i in range(first, first + count):
            await conn.execute("INSERT INTO acked VALUES ($1, $2)", i, f"row {i}")
            acked.append(i)  # the commit returned: it is acknowledged
        return acked
    finally:
        await conn.close()


async def _ids(c: LocalCampus, name: str) -> set[int]:
    conn = await asyncpg.connect(**c.dsn(name), timeout=5)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM acked")}
    finally:
        await conn.close()


@pytest.mark.parametrize("major", ["15", "17", "18"])
async def test_kill_primary_promotes_complete_replica_and_old_primary_rejoins(
        root: Path, session: aiohttp.ClientSession, major: str) -> None:
    _need(major)
    c = LocalCampus(root / "campus", major)
    agents = agent_client(session)
    try:
        await _bootstrap(c, session, SPEC_ANY)
        old = c.names[0]
        acked = await _write(c, old, 0, 200)
        await _record_snapshot(c, session, old)
        c.kill(old)  # SIGKILL the agent and its server
        outcome = await run_failover(store=c.store, agents=agents, roles=c.recorder,
                                     events=c.recorder, ips=c.ips, reason="primary killed")
        new = outcome.promoted
        assert new in c.names[1:], outcome.message
        campus = await c.store.read()
        assert campus["status"]["currentPrimary"] == new
        assert campus["status"]["lastFailover"]["rtoSeconds"] >= 0
        assert c.recorder.roles[new] == "primary"
        assert c.recorder.roles[old] == "former-primary"
        # Every acknowledged commit is on the new primary.
        assert set(acked) <= await _ids(c, new)
        acked += await _write(c, new, 1000, 50)
        other = next(n for n in c.names[1:] if n != new)

        async def other_follows() -> bool:
            st = await agents.status(c.ips[new])
            names = {s["application_name"] for s in st["server"].get("standbys") or []
                     if s["state"] == "streaming"} if st else set()
            return other in names

        await wait_until("the other replica following the new primary", other_follows)
        # The old primary comes back and rejoins as a replica (pg_rewind).
        c.start(old)

        async def old_rejoined() -> bool:
            st = await agents.status(c.ips[old])
            return bool(st and st["role"] == "replica" and st["upstream"] == new)

        await wait_until("the old primary rejoining", old_rejoined, timeout=120)

        async def old_has_everything() -> bool:
            return set(acked) <= await _ids(c, old)

        await wait_until("the old primary replaying the new timeline", old_has_everything)
    except BaseException:
        for n in c.names:
            print(f"--- {n}\n{c.log(n)}\n--- {n} server\n{c.server_log(n)}")
        raise
    finally:
        c.stop_all()


async def test_refuses_when_quorum_cannot_prove_completeness(
        root: Path, session: aiohttp.ClientSession) -> None:
    """ANY 1 of 2 standbys: with the primary and one standby gone, the survivor may miss
    acknowledged commits, so nothing is promoted and the status says why."""
    _need("17")
    c = LocalCampus(root / "campus", "17", subnet=3)
    agents = agent_client(session)
    try:
        await _bootstrap(c, session, SPEC_ANY)
        await _write(c, c.names[0], 0, 20)
        await _record_snapshot(c, session, c.names[0])
        c.kill(c.names[0])
        c.kill(c.names[2])
        outcome = await run_failover(store=c.store, agents=agents, roles=c.recorder,
                                     events=c.recorder, ips=c.ips, reason="primary killed")
        assert outcome.promoted is None
        assert outcome.election is not None
        assert outcome.election.reason == "QuorumIncomplete"
        assert ("FailoverRefused", outcome.message) in c.recorder.events
        st = await agents.status(c.ips[c.names[1]])
        assert st is not None and st["role"] == "replica"
        assert (await c.store.read())["status"]["currentPrimary"] == c.names[0]
    finally:
        c.stop_all()


async def test_async_replica_is_never_promoted_under_required_durability(
        root: Path, session: aiohttp.ClientSession) -> None:
    """FIRST 1: only the synchronous standby confirmed commits; when it dies with the
    primary, the asynchronous one is refused even though it answers."""
    _need("17")
    c = LocalCampus(root / "campus", "17", subnet=4)
    agents = agent_client(session)
    spec = {**SPEC_ANY, "synchronous": {"method": "first", "number": 1,
                                        "dataDurability": "required"}}
    try:
        await _bootstrap(c, session, spec)
        await _write(c, c.names[0], 0, 20)
        await _record_snapshot(c, session, c.names[0])
        snap = (await c.store.read())["status"]["syncSnapshot"]
        (sync_standby,) = snap["confirming"]
        async_standby = next(n for n in c.names[1:] if n != sync_standby)
        c.kill(c.names[0])
        c.kill(sync_standby)
        outcome = await run_failover(store=c.store, agents=agents, roles=c.recorder,
                                     events=c.recorder, ips=c.ips, reason="primary killed")
        assert outcome.promoted is None, f"{async_standby} must not be promoted"
        assert outcome.election is not None
        assert outcome.election.reason == "NoSynchronousStandby"
    finally:
        c.stop_all()

"""Issue 15 items 2 and 3 on real servers: a one-sided cut and an asymmetric cut.

Real PostgreSQL 17 servers run by real `ringkeeper agent` processes (LocalCampus); the
operator's HA loop is played cycle by cycle with the decisions ha_cycle makes
(integration.hacuts.OperatorLoop) and the real failover runner. Every test keeps a ledger
of acknowledged commits and samples which instances acknowledge writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest

from integration.hacuts import OperatorLoop, RoleSampler, TcpProxy, Writer
from integration.localcampus import LocalCampus, agent_client, wait_until
from integration.test_agent_failover import (  # noqa: F401 (fixtures)
    _need,
    root,
    session,
)

pytestmark = pytest.mark.postgres

DETECTION = 2.0
SPEC = {"synchronous": {"method": "any", "number": 1, "dataDurability": "required"},
        "failover": {"detectionDelaySeconds": int(DETECTION), "selfFenceAfterSeconds": 3}}


def _set(c: LocalCampus, key: str, value: object) -> None:
    data = json.loads(c.file.read_text())
    data[key] = value
    tmp = c.file.with_suffix(".set")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o644)
    tmp.replace(c.file)


async def bootstrap(c: LocalCampus, http: aiohttp.ClientSession,
                    proxy: TcpProxy | None = None) -> None:
    """The first primary and two streaming replicas; with a proxy, the replicas reach
    the primary's server only through it (its pod address in the Campus is the proxy's)."""
    agents = agent_client(http)
    c.write_campus(SPEC, {"targetPrimary": c.names[0]})
    if proxy is not None:
        _set(c, "podIPs", {**c.ips, c.names[0]: proxy.host})
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
        return (len(standbys) == c.instances - 1
                and any(s["sync_state"] in ("sync", "quorum") for s in standbys))

    await wait_until("replicas streaming", replicas_streaming, timeout=120)


async def _everything_on(c: LocalCampus, w: Writer, names: list[str],
                         timeout: float = 60) -> None:
    for name in names:
        async def complete(name: str = name) -> bool:
            return not await w.missing_on(name)

        await wait_until(f"every acknowledged commit on {name}", complete, timeout=timeout)


def _dump(c: LocalCampus) -> None:
    for n in c.names:
        print(f"--- {n}\n{c.log(n)}\n--- {n} server\n{c.server_log(n)}")


async def test_primary_cut_from_its_replicas_only_is_replaced_within_the_delay(
        root: Path, session: aiohttp.ClientSession) -> None:  # noqa: F811
    """Item 2: replication runs through a proxy that black-holes every byte. The primary
    still answers the operator and its clients; under ANY 1 its commits wait. It must be
    replaced within detection delay + 5 s, by a replica holding every acknowledged commit,
    and never acknowledge a write beside the new primary."""
    _need("17")
    c = LocalCampus(root / "campus", "17", subnet=12)
    old = c.names[0]
    proxy = TcpProxy("127.12.17.9", c.ips[old])
    await proxy.start()
    op = OperatorLoop(c, session, DETECTION)
    writer = Writer(c)
    sampler = RoleSampler(c, old)
    try:
        await bootstrap(c, session, proxy)
        await writer.start()
        sampler.start()
        await op.run_for(3.0)  # healthy cycles: snapshot and instances recorded
        assert len(writer.acked) >= 10, "writes before the cut"
        assert not op.outcomes, f"failed over a healthy primary: {op.outcomes}"
        before = len(writer.acked)
        t_cut = time.monotonic()
        proxy.cut()
        t_done, outcome = await op.until_failover(timeout=DETECTION + 20)
        took = t_done - t_cut
        print(f"cut -> failover done {took:.2f}s; {outcome.message}")
        assert outcome.promoted in c.names[1:], outcome.message
        assert took <= DETECTION + 5.0, f"{took:.1f}s from the cut to the new primary"
        reasons = [m for r, m in c.recorder.events if r == "FailoverStarted"]
        assert len(reasons) == 1, c.recorder.events
        new = outcome.promoted
        await wait_until("commits on the new primary",
                         lambda: _true(len(writer.acked) >= before + 20), timeout=30)
        outage = writer.outage_after(t_cut)
        print(f"write outage after the cut: {outage}")
        assert outage is not None and outage <= DETECTION + 5.0 + 2.0
        # The old primary is fenced (stopped): it serves nothing, even once the cut heals.
        agents = agent_client(session)

        async def old_stepped_down() -> bool:
            st = await agents.status(c.ips[old])  # fenced, or already rewound and following
            return bool(st and (st["fenced"] or st["role"] == "replica"))

        await wait_until("the old primary fenced", old_stepped_down, timeout=10)
        proxy.heal()
        await _everything_on(c, writer, [new, *[n for n in c.names[1:] if n != new]])

        async def rejoined() -> bool:
            st = await agents.status(c.ips[old])
            return bool(st and st["role"] == "replica" and st["upstream"] == new)

        await wait_until("the old primary rejoining", rejoined, timeout=60)
        await writer.finish()
        await sampler.finish()
        await _everything_on(c, writer, c.names)
        print(f"{len(writer.acked)} acknowledged; {sampler.rounds} sampling rounds; "
              f"violations {sampler.violations}")
        assert sampler.rounds >= 20
        assert sampler.violations == []
        assert {n for _, n in sampler.acks} >= {old, new}, "the sampler saw both primaries"
    except BaseException:
        _dump(c)
        raise
    finally:
        writer.stop.set()
        sampler.stop.set()
        await proxy.stop()
        c.stop_all()


async def test_asymmetric_cut_elects_a_replica_that_can_promote_and_never_stops_it(
        root: Path, session: aiohttp.ClientSession) -> None:  # noqa: F811
    """Item 3: the primary is cut from the API server and the operator (it still reaches
    its peers and clients, so it keeps serving), and one replica is cut from the API
    server (each of its Campus reads hangs 2 s). The pause must reach both replicas
    together, the election must settle on a replica that can promote, and the instance
    promoted must never be stopped or failed over again."""
    _need("17")
    c = LocalCampus(root / "campus", "17", subnet=13)
    old, lame, other = c.names
    op = OperatorLoop(c, session, DETECTION)
    writer = Writer(c)
    sampler = RoleSampler(c, old)
    try:
        await bootstrap(c, session)
        await writer.start()
        sampler.start()
        await op.run_for(3.0)  # healthy cycles: status.instances gives peers' addresses
        assert not op.outcomes
        _set(c, "apiCut", [old, lame])
        op.ips[old] = "127.13.17.250"  # nothing listens there: the operator's calls fail
        t_cut = time.monotonic()
        t_done, outcome = await op.until_failover(timeout=DETECTION + 20)
        print(f"cut -> failover done {t_done - t_cut:.2f}s; {outcome.message}")
        assert outcome.promoted in (lame, other), outcome.message
        new = outcome.promoted
        assert t_done - t_cut <= DETECTION + 5.0 + 2.0
        agents = agent_client(session)
        st = await agents.status(c.ips[new])
        assert st is not None and st["role"] == "primary", st
        started = [m for r, m in c.recorder.events if r == "FailoverStarted"]
        print(f"election: {started}; promoted on the operator's word: "
              f"{st['promotedOnWord']}")
        # The replica cut from the API server wins only when strictly ahead (it is then the
        # only one known complete) and then promotes on the operator's word.
        assert st["promotedOnWord"] == (new == lame), st
        pid = c.server_pid(new)
        # The operator keeps cycling through the cut: nothing stops the new primary.
        await op.run_for(8.0)
        assert c.server_pid(new) == pid, "the promoted instance's server was restarted"
        assert len(op.outcomes) == 1, [o.message for _, o in op.outcomes]
        refused = [m for r, m in c.recorder.events if r == "FailoverRefused"]
        assert refused == [], refused
        st = await agents.status(c.ips[new])
        assert st is not None and st["role"] == "primary" and not st["fenced"], st
        n = len(writer.acked)
        await wait_until("commits on the new primary",
                         lambda: _true(len(writer.acked) >= n + 20), timeout=30)
        # Heal: the old primary reads the Campus, steps down and rejoins.
        _set(c, "apiCut", [])
        op.ips[old] = c.ips[old]

        async def rejoined() -> bool:
            st = await agents.status(c.ips[old])
            return bool(st and st["role"] == "replica" and st["upstream"] == new)

        await wait_until("the old primary rejoining", rejoined, timeout=60)
        assert c.server_pid(new) == pid
        await writer.finish()
        await sampler.finish()
        await _everything_on(c, writer, c.names)
        print(f"{len(writer.acked)} acknowledged; {sampler.rounds} sampling rounds; "
              f"violations {sampler.violations}")
        assert sampler.violations == []
    except BaseException:
        _dump(c)
        raise
    finally:
        writer.stop.set()
        sampler.stop.set()
        c.stop_all()


async def _true(value: object) -> object:
    return value

"""The ring drills' faults and measurements: campusLoss and syncCrash (docs/drills.md).

campusLoss fences every instance of one campus through the Campus annotation its agents
obey (core.drill_faults says what to write and how it is undone); syncCrash ends every
database session of one campus's sync sidecar at once, at its own primary and at every
other member (its replication streams), which is what the databases see when the
sidecar dies mid-stream. Both only use what the operator is granted on any cluster
(patch campuses, get secrets, list pods). The ring's recovery is read from the
ReplicationRing's status and, for syncCrash, from the sources' pg_stat_replication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from kubernetes_asyncio import client

from ..adapters import resources
from ..adapters.resources import KubeApiError
from ..api.v1alpha1.drill import Scenario
from ..contracts.conninfo import Target, build_dsn
from ..core import manifests
from ..core.annotations import FENCED
from ..core.drill_faults import (
    DRILL_FENCED,
    bypass_links,
    bypass_streaming,
    feeding,
    fence_annotations,
    fenced_by,
    ring_converged,
    unfence_annotations,
)
from ..core.names import campus_instances
from ..core.ringplan import primary_address
from ..engines import profile_for

log = logging.getLogger("ringkeeper.drill")
GROUP, VERSION = "ringkeeper.io", "v1alpha1"
TIMEOUT = 3.0
SYNC_APP = "ringkeeper-sync"  # the application_name of every sidecar session
# The ring daemon rewrites the ring's status every 2 s: a status read sooner after a
# stream came back may predate the crash, so it proves nothing about convergence.
STATUS_PERIOD = 2.5
# The sidecar's own sessions reach its primary over the pod's Unix socket (no address);
# its streams from other members come from its pod's address.
KILL_LOCAL = ("SELECT pid, backend_type, pg_terminate_backend(pid) FROM pg_stat_activity "
              "WHERE application_name = $1 AND client_addr IS NULL "
              "AND pid <> pg_backend_pid()")
KILL_REMOTE = ("SELECT pid, backend_type, pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = $1 AND client_addr = $2::inet")
STREAMING_NOW = ("SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 "
                 "AND client_addr = $2::inet AND state = 'streaming'")
# How long a syncCrash waits for the sidecar to stream from every other member before
# its fault: a link paused for a copy or restarting (the drill's own load creates tables)
# has no session to end, and a crash of nothing proves nothing.
STREAMS_WAIT = 30.0
# What a member's sidecar sessions look like there, named when the awaited stream is
# missing (the wait's message says what was found instead of only "not streaming").
SYNC_WALSENDERS = ("SELECT coalesce(host(client_addr), 'local') || ' ' || state "
                   "FROM pg_stat_replication WHERE application_name = $1 ORDER BY 1")
STREAMING_AGAIN = ("SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 "
                   "AND client_addr = $2::inet AND state = 'streaming' "
                   "AND pid <> ALL($3::int[])")


@dataclass
class RingFacts:
    """The target ring as the drill reads it: members (ring member names, in order), the
    campus of each, the topology and the status's links."""

    members: list[str]
    campus_of: dict[str, str]
    topology: str
    links: list[dict[str, Any]]

    def member_of(self, campus: str) -> str:
        return next(m for m, c in self.campus_of.items() if c == campus)


async def read_ring(api: client.ApiClient, ns: str, name: str) -> RingFacts:
    ring = await resources.read_custom(api, ns, "replicationrings", name)
    spec = ring.get("spec") or {}
    members = [str(m["name"]) for m in spec.get("members") or []]
    campus_of = {str(m["name"]): str(m["campusRef"]["name"])
                 for m in spec.get("members") or [] if (m.get("campusRef") or {}).get("name")}
    return RingFacts(members, campus_of, str(spec.get("topology") or "ring"),
                     list((ring.get("status") or {}).get("links") or []))


async def _superuser_dsn(api: client.ApiClient, ns: str, campus: str) -> tuple[str, str]:
    """(DSN to the campus's current primary as its superuser, the primary's address),
    as the ring's sidecars reach it. Raises ValueError when it has no primary address."""
    body = await resources.read_campus(api, ns, campus)
    host = primary_address(body)
    if not host:
        raise ValueError(f"Campus {campus} has no primary address to reach")
    spec = body["spec"]
    port = profile_for(spec.get("engine", "postgresql"), str(spec["version"])).default_port
    sec = manifests.secret_name(campus, "superuser")
    user = await resources.secret_value(api, ns, sec, "username")
    pw = await resources.secret_value(api, ns, sec, "password")
    return build_dsn(Target(host=host, port=port, database="app", user=user,
                            password=pw)), host


async def _query(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=TIMEOUT)
    try:
        return list(await asyncio.wait_for(conn.fetch(sql, *args), TIMEOUT))
    finally:
        conn.terminate()


async def _patch_annotations(api: client.ApiClient, ns: str, campus: str,
                             make: Any) -> Any:
    """Read the Campus, compute the annotations with `make` and patch them against the
    version read (a concurrent edit is read again, never overwritten)."""
    for _ in range(5):
        body = await resources.read_campus(api, ns, campus)
        meta = body["metadata"]
        patch = make(dict(meta.get("annotations") or {}),
                     campus_instances(campus, body.get("spec") or {}))
        if patch is None:
            return None
        try:
            await resources.patch_campus(api, ns, campus, {"metadata": {
                "annotations": patch, "resourceVersion": meta.get("resourceVersion")}})
        except (KubeApiError, client.ApiException) as exc:
            if exc.status == 409:
                continue
            raise
        return patch
    raise ValueError(f"Campus {campus} kept changing while its fence was written")


async def fence(api: client.ApiClient, ns: str, campus: str, drill: str) -> list[str]:
    """Fence every instance of `campus` (its agents stop their servers); the list."""
    patch = await _patch_annotations(
        api, ns, campus, lambda ann, inst: fence_annotations(ann, inst, drill))
    return list(json.loads(patch[FENCED]))


async def unfence(api: client.ApiClient, ns: str, campus: str, drill: str) -> bool:
    """Lift this drill's fence from `campus`; False when it held none."""
    try:
        done = await _patch_annotations(
            api, ns, campus, lambda ann, inst: unfence_annotations(ann, inst, drill))
    except KubeApiError as exc:
        if exc.status == 404:
            return False
        raise
    return done is not None


async def unfence_all(api: client.ApiClient, ns: str, drill: str) -> list[str]:
    """Lift this drill's fence wherever it is (the finalizer's and a run's last word:
    works from the Campus annotations alone, after an operator restart too)."""
    found = await client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, "campuses")
    lifted = []
    for c in found.get("items") or []:
        ann = (c.get("metadata") or {}).get("annotations") or {}
        if DRILL_FENCED in ann and await unfence(api, ns, c["metadata"]["name"], drill):
            lifted.append(str(c["metadata"]["name"]))
    return lifted


async def fenced_campuses(api: client.ApiClient, ns: str, drill: str) -> list[str]:
    """The Campuses holding a fence this drill added (found from their annotations
    alone: what an operator restarted mid-run must lift)."""
    found = await client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, "campuses")
    return sorted(str(c["metadata"]["name"]) for c in found.get("items") or []
                  if fenced_by((c.get("metadata") or {}).get("annotations") or {}, drill))


async def await_streams(api: client.ApiClient, ns: str, campus: str, others: list[str],
                        timeout: float = STREAMS_WAIT) -> list[str]:
    """Wait until `campus`'s sidecar streams from every campus of `others` (those that feed
    it; at most `timeout`); the ones it still does not stream from, each with the sync
    walsenders it serves instead (or why it could not be asked)."""
    deadline = time.monotonic() + timeout
    while True:
        missing: list[str] = []
        try:
            _, addr = await _superuser_dsn(api, ns, campus)
        except (KubeApiError, client.ApiException, ValueError) as exc:
            missing = [f"{campus}: {type(exc).__name__}: {str(exc)[:150]}"]
            addr = None
        for other in others if addr is not None else []:
            try:
                odsn, _ = await _superuser_dsn(api, ns, other)
                rows = await _query(odsn, STREAMING_NOW, SYNC_APP, addr)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
                    ValueError, KubeApiError, client.ApiException) as exc:
                missing.append(f"{other}: {type(exc).__name__}: {str(exc)[:150]}")
                continue
            if not rows or int(rows[0][0]) < 1:
                missing.append(other)
        if not missing or time.monotonic() >= deadline:
            return [await _seen_instead(api, ns, m, addr) if m in others else m
                    for m in missing]
        await asyncio.sleep(0.5)


async def _seen_instead(api: client.ApiClient, ns: str, other: str, addr: str | None) -> str:
    """`other`, and the sync walsenders it serves instead of one to `addr`."""
    try:
        odsn, _ = await _superuser_dsn(api, ns, other)
        seen = [str(r[0]) for r in await _query(odsn, SYNC_WALSENDERS, SYNC_APP)]
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
            ValueError, KubeApiError, client.ApiException) as exc:
        return f"{other} (its walsenders unread: {type(exc).__name__})"
    return f"{other} (its sync walsenders, wanted {addr}: {', '.join(seen) or 'none'})"


async def kill_sync_sessions(api: client.ApiClient, ns: str, campus: str,
                             others: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """End every session of `campus`'s sync sidecar: its streams at every other campus's
    primary, all at once, then its own at its primary. (walsender pids ended per other
    campus, problems.) Streams first: a sidecar whose local sessions end closes its
    streams itself, and the ones it closed first were then not found to end (the demo's
    syncCrash of yuecheng found none at wangjiangshan, twice, after ending 3 local ones)."""
    dsn, addr = await _superuser_dsn(api, ns, campus)
    problems: list[str] = []
    dsns: dict[str, str] = {}
    for other in others:  # every address and password read before the first kill
        try:
            dsns[other] = (await _superuser_dsn(api, ns, other))[0]
        except ValueError as exc:
            problems.append(f"{other}: {type(exc).__name__}: {str(exc)[:150]}")
    got = await asyncio.gather(*(_query(d, KILL_REMOTE, SYNC_APP, addr)
                                 for d in dsns.values()), return_exceptions=True)
    rows = await _query(dsn, KILL_LOCAL, SYNC_APP)
    walsenders: dict[str, list[int]] = {campus: []}
    local = len(rows)
    for other, res in zip(dsns, got, strict=True):
        if isinstance(res, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                            TimeoutError)):
            problems.append(f"{other}: {type(res).__name__}: {str(res)[:150]}")
            continue
        if isinstance(res, BaseException):
            raise res
        walsenders[other] = [int(r["pid"]) for r in res if r["backend_type"] == "walsender"]
    log.info("drill: ended %d local session(s) of %s's sidecar and streams %s", local,
             campus, walsenders)
    walsenders[campus] = [-1] * local  # counted, never looked up (local sessions)
    return walsenders, problems


async def streaming_again(api: client.ApiClient, ns: str, campus: str,
                          killed: dict[str, list[int]]) -> bool:
    """Every member whose stream to `campus`'s sidecar was ended streams to it again, on a
    new walsender."""
    _, addr = await _superuser_dsn(api, ns, campus)
    for other, pids in killed.items():
        if other == campus or not pids:
            continue
        odsn, _ = await _superuser_dsn(api, ns, other)
        rows = await _query(odsn, STREAMING_AGAIN, SYNC_APP, addr, pids)
        if not rows or int(rows[0][0]) < 1:
            return False
    return True


@dataclass
class RingDrill:
    """One ring drill's fault and what it measured (seconds from the fault, or from the
    fault's end for the return and the convergence)."""

    scenario: Scenario
    ring: str
    campus: str  # the campus lost, or whose sidecar crashed
    fault_mono: float | None = None
    healed_mono: float | None = None
    killed: dict[str, list[int]] = field(default_factory=dict)
    fault_error: str | None = None
    bypass_s: float | None = None
    link_back_s: float | None = None
    converged_s: float | None = None
    bypass_needed: list[str] = field(default_factory=list)
    seen_broken: bool = False  # the ring's status showed the fault (campusLoss)
    not_streaming: list[str] = field(default_factory=list)  # before a syncCrash's fault
    returned_s: float | None = None  # campusLoss: its first write after the lift

    async def prepare(self, api: client.ApiClient, ns: str, campuses: list[str]) -> None:
        """Before a syncCrash: wait for the sidecar's streams (await_streams) from the
        campuses that feed it (its ring predecessor; in a mesh every other one: waiting
        for a member that never streams to it took the whole wait in a ring of four), so
        the fault ends live sessions; what never streamed is named in the fault's message."""
        if self.scenario == Scenario.SYNC_CRASH:
            facts = await read_ring(api, ns, self.ring)
            sources = {facts.campus_of.get(m) for m in feeding(
                facts.members, facts.topology, facts.member_of(self.campus))}
            others = [c for c in campuses if c != self.campus and c in sources]
            self.not_streaming = [f"not streaming from {m} after {STREAMS_WAIT:g} s"
                                  for m in await await_streams(api, ns, self.campus, others)]

    async def inject(self, api: client.ApiClient, ns: str, drill: str,
                     campuses: list[str]) -> str:
        facts = await read_ring(api, ns, self.ring)
        lost = facts.member_of(self.campus)
        self.bypass_needed = [f"{a}->{b}" for a, b in
                              bypass_links(facts.members, facts.topology, lost)]
        if self.scenario == Scenario.CAMPUS_LOSS:
            fenced = await fence(api, ns, self.campus, drill)
            self.fault_mono = time.monotonic()
            return (f"fenced every instance of {self.campus} ({', '.join(fenced)}): their "
                    "servers stop")
        others = [c for c in campuses if c != self.campus]
        self.fault_mono = time.monotonic()
        self.killed, problems = await kill_sync_sessions(api, ns, self.campus, others)
        problems = [*self.not_streaming, *problems]
        streams = sum(len(p) for c, p in self.killed.items() if c != self.campus)
        local = len(self.killed.get(self.campus, []))
        if not streams:
            self.fault_error = (f"no replication stream of {self.campus}'s sync sidecar "
                                f"was found at {', '.join(others)} (is the ring streaming?)"
                                + (f"; {'; '.join(problems)}" if problems else ""))
        return (f"ended {local} session(s) of {self.campus}'s sync sidecar at its primary "
                f"and {streams} of its replication stream(s) at "
                f"{', '.join(others)}" + (f"; not reached: {'; '.join(problems)}"
                                          if problems else ""))

    async def heal(self, api: client.ApiClient, ns: str, drill: str) -> str:
        lifted = await unfence(api, ns, self.campus, drill)
        self.healed_mono = time.monotonic()
        return (f"fence of {self.campus} lifted: its instances start again" if lifted
                else f"{self.campus} held no fence of this drill")

    async def observe(self, api: client.ApiClient, ns: str) -> list[tuple[str, str]]:
        """Read the ring (and, for syncCrash, the streams) once; the events it saw."""
        if self.fault_mono is None:
            return []
        now, said = time.monotonic(), []
        facts = await read_ring(api, ns, self.ring)
        lost = facts.member_of(self.campus)
        if (self.scenario == Scenario.CAMPUS_LOSS and self.bypass_s is None
                and self.bypass_needed and self.healed_mono is None
                and bypass_streaming(facts.links, facts.members, facts.topology, lost)):
            self.bypass_s = now - self.fault_mono
            said.append(("RingBypassed", f"{', '.join(self.bypass_needed)} carries changes "
                         f"{self.bypass_s:.1f} s after the loss"))
        if (self.scenario == Scenario.SYNC_CRASH and self.link_back_s is None
                and not self.fault_error and await self._streaming_again(api, ns)):
            self.link_back_s = now - self.fault_mono
            said.append(("LinkStreaming", f"{self.campus}'s sidecar streams again "
                         f"{self.link_back_s:.1f} s after the crash"))
        whole = ring_converged(facts.links, facts.members, facts.topology)
        self.seen_broken = self.seen_broken or not whole
        # A campus loss counts as healed only once the status showed it and then whole
        # again: a status written before the loss would otherwise pass for convergence.
        if self.scenario == Scenario.CAMPUS_LOSS:
            start = self.healed_mono if self.seen_broken else None
        elif self.link_back_s is not None and (
                self.seen_broken or now - self.fault_mono >= self.link_back_s + STATUS_PERIOD):
            start = self.fault_mono
        else:
            start = None
        if start is not None and self.converged_s is None and whole:
            self.converged_s = now - start
            said.append(("RingConverged", f"every link of ring {self.ring} streams, "
                         f"{self.converged_s:.1f} s after the "
                         f"{'fence lifted' if self.healed_mono else 'crash'}"))
        return said

    async def _streaming_again(self, api: client.ApiClient, ns: str) -> bool:
        """A database that cannot be asked this second is "not yet" (said in the log),
        not the end of the run: the limit judges a stream that never comes back."""
        try:
            return await streaming_again(api, ns, self.campus, self.killed)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
                ValueError) as exc:
            log.warning("drill: cannot read the streams to %s's sidecar: %s: %s",
                        self.campus, type(exc).__name__, str(exc)[:200])
            return False

    def figures(self) -> dict[str, Any]:
        return {"campus": self.campus, "ring": self.ring,
                "bypassLinks": self.bypass_needed, "bypassSeconds": _r(self.bypass_s),
                "linkBackSeconds": _r(self.link_back_s),
                "convergedSeconds": _r(self.converged_s),
                "returnedSeconds": _r(self.returned_s), "faultError": self.fault_error,
                "streamsEnded": {c: len(p) for c, p in self.killed.items()}}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)

"""The Satellite partition drill's I/O: read the target, write at both sides, watch the
Satellite's status, and check both ledgers (decisions in core.drill_satellite).

Each side (the Satellite, its parent Campus) gets a writer through its own `-rw` (an
RwProxy, as the campus drills use): one transaction at a time into the drill's table,
inserts of its own keys and updates of its own acknowledged rows. Its ledger keeps, per
key, the versions its last acknowledged write may have left (two when an update's
acknowledgement was lost: that key is then left alone), and the time of every
acknowledgement (the satellite's RTO is the longest gap in them around the fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from kubernetes_asyncio import client
from pydantic import ValidationError

from ..adapters import resources
from ..adapters.resources import KubeApiError
from ..api.v1alpha1 import GROUP, VERSION
from ..api.v1alpha1.drill import TargetKind
from ..api.v1alpha1.satellite import SatelliteSpec
from ..api.validation import problems_of
from ..core.drill import DrillCampus, Measured
from ..core.drill_faults import partition_policy
from ..core.drill_satellite import (
    DRILL_DDL,
    DRILL_QUALIFIED,
    SatelliteLoss,
    SatelliteTarget,
    longest_gap,
    satellite_converged,
    satellite_lost,
)
from ..core.manifests import CAMPUS_LABEL, SATELLITE_LABEL
from ..core.satellite import filter_sql, rings_naming
from . import drill_io as io
from .satellite import POLL_SECONDS

CONNECT_TIMEOUT = 3.0
UPDATE_SHARE = 0.3
MAX_RATE = 100.0
# The check is repeated this long while something is missing: the load's last writes
# cross the link after it stops (a real loss stays missing and is counted).
SETTLE = 60.0  # per side: the drill proves the link, the LIS load proves throughput


async def read_satellite(api: client.ApiClient, ns: str, name: str
                         ) -> tuple[bool, tuple[DrillCampus, ...], SatelliteTarget | None]:
    """Whether the Satellite exists, its parent as the run's one campus, and the facts
    the planner judges (parent exists and in a ring, the drill's table kept, streaming)."""
    try:
        sat = await resources.read_custom(api, ns, "satellites", name)
    except KubeApiError as exc:
        if exc.status == 404:
            return False, (), None
        raise
    try:
        spec = SatelliteSpec.model_validate(sat.get("spec") or {})
    except ValidationError as exc:
        # Admission refuses such a spec; one that got past it is a refusal with its
        # reason here, not an error of every cycle.
        why = "; ".join(str(p) for p in problems_of(exc))[:300]
        return True, (), SatelliteTarget(name=name, parent="", parent_exists=False,
                                          parent_rings=(), tables=(), invalid=why)
    parent = spec.parent_ref.name
    try:
        pst = (await resources.read_custom(api, ns, "campuses", parent)).get("status") or {}
        parent_exists = True
    except KubeApiError as exc:
        if exc.status != 404:
            raise
        pst, parent_exists = {}, False
    rings: tuple[str, ...] = ()
    if parent_exists:
        found = await client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, ns, "replicationrings")
        rings = rings_naming(list(found.get("items") or []), parent)
    st = sat.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions") or [])
    table = next((t for t in spec.tables if t.name == DRILL_QUALIFIED), None)
    primary = pst.get("currentPrimary")
    campus = DrillCampus(parent, pst.get("phase") == "Ready" and bool(primary), primary)
    return True, ((campus,) if parent_exists else ()), SatelliteTarget(
        name=name, parent=parent, parent_exists=parent_exists, parent_rings=rings,
        tables=tuple(t.name for t in spec.tables),
        row_filter=table.filter if table else None, ready=ready,
        converged=satellite_converged(st))


INSERT = f"INSERT INTO {DRILL_QUALIFIED} (id, site, v) VALUES ($1, $2, 0)"
UPDATE = f"UPDATE {DRILL_QUALIFIED} SET v = $2, at = now() WHERE id = $1 AND v = $3"


@dataclass
class SideWriter:
    """Writes at one side until `stop`; `acked` is its ledger (key -> allowed versions)."""

    side: str
    dsn: str = field(repr=False)
    base: int  # this run's and this side's key range (no clash with earlier runs)
    sites: tuple[str, ...]  # the `site` values it cycles through (a filter may pick one)
    rate: float
    acked: dict[int, frozenset[int]] = field(default_factory=dict)
    ack_times: list[float] = field(default_factory=list)
    commits: int = 0
    errors: int = 0
    last_error: str = ""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, seconds: float) -> None:
        rng, n, conn = random.Random(self.base), 0, None
        current: dict[int, int] = {}  # keys still written (not in doubt) -> version
        end = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < end:
            key, v, insert = 0, 0, True
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
                    await asyncio.wait_for(conn.execute(DRILL_DDL), CONNECT_TIMEOUT)
                if current and rng.random() < UPDATE_SHARE:
                    key = rng.choice(list(current))
                    v, insert = current[key] + 1, False
                    done = await asyncio.wait_for(
                        conn.execute(UPDATE, key, v, v - 1), CONNECT_TIMEOUT)
                    if done != "UPDATE 1":
                        raise ValueError(f"update of {key} at version {v - 1} found no row")
                else:
                    key, n = self.base + n, n + 1
                    await asyncio.wait_for(conn.execute(
                        INSERT, key, self.sites[n % len(self.sites)]), CONNECT_TIMEOUT)
                self.acked[key], current[key] = frozenset({v}), v
                self.ack_times.append(time.monotonic())
                self.commits += 1
            except Exception as exc:  # not acknowledged: in doubt, never counted as kept
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if not insert:  # it may have committed: either version, key left alone
                    self.acked[key] = frozenset({v - 1, v})
                    current.pop(key, None)
                if conn is not None:
                    conn.terminate()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0 / self.rate)
        if conn is not None:
            conn.terminate()

    def figures(self) -> dict[str, Any]:
        return {"commits": self.commits, "errors": self.errors, "keys": len(self.acked),
                "lastError": self.last_error or None}


async def _versions(dsn: str, keys: list[int], where: str = "TRUE") -> dict[int, int]:
    """key -> version of the drill table's rows among `keys` (and the filter `where`,
    rendered by core.satellite.filter_sql from the typed RowFilter)."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        rows = await asyncio.wait_for(conn.fetch(
            f"SELECT id, v FROM {DRILL_QUALIFIED} WHERE id = ANY($1::bigint[]) AND ({where})",
            keys), 30)
        return {int(r[0]): int(r[1]) for r in rows}
    finally:
        conn.terminate()


@dataclass
class SatRun:
    """One Satellite partition: its writers, the cut's times and what it measured."""

    target: SatelliteTarget
    writers: dict[str, SideWriter] = field(default_factory=dict)  # satellite, parent
    fault_mono: float | None = None
    healed_mono: float | None = None
    seen_cut: bool = False  # the status showed the link down during the cut
    converged_s: float | None = None
    loss: SatelliteLoss | None = None
    check_error: str | None = None
    settle_s: float | None = None  # how long the check waited for the last writes

    def start(self, dsns: dict[str, str], rate: float, seconds: float
              ) -> asyncio.Task[Any]:
        """The load: both writers for `seconds`, each on its own key range."""
        stamp = int(time.time()) << 24
        t = self.target
        self.writers = {
            t.name: SideWriter(t.name, dsns[t.name], stamp | (1 << 23), (t.name,), rate),
            t.parent: SideWriter(t.parent, dsns[t.parent], stamp, (t.parent, t.name), rate)}
        return asyncio.ensure_future(asyncio.gather(
            *(w.run(seconds) for w in self.writers.values())))

    @property
    def writing(self) -> bool:
        return all(w.commits for w in self.writers.values())

    def wrote_after_fault(self) -> bool:
        acks = self.writers[self.target.name].ack_times if self.writers else []
        return self.fault_mono is not None and any(a > self.fault_mono for a in acks)

    def rto(self) -> float | None:
        """The longest gap in the satellite's acknowledged writes from the fault to the
        heal (to now while the cut lasts)."""
        if self.fault_mono is None:
            return None
        end = self.healed_mono or time.monotonic()
        return longest_gap(self.writers[self.target.name].ack_times, self.fault_mono, end)

    async def observe(self, api: client.ApiClient, ns: str) -> list[tuple[str, str]]:
        """Read the Satellite's status once: the cut seen, then whole again after the heal
        (a status written before the cut must not pass for convergence)."""
        if self.fault_mono is None or self.converged_s is not None:
            return []
        st = (await resources.read_custom(api, ns, "satellites", self.target.name)
              ).get("status") or {}
        whole = satellite_converged(st)
        if not whole and not self.seen_cut:
            self.seen_cut = True
            return [("SatelliteCut", f"Satellite {self.target.name}'s status says it is "
                     f"not streaming with {self.target.parent} (connected "
                     f"{st.get('connected')}, backlog {st.get('backlogRows')} rows)")]
        since = None if self.healed_mono is None else time.monotonic() - self.healed_mono
        # A cut the status never showed (shorter than its polling): only a reading taken
        # a full polling period after the heal is fresh enough to say it is whole.
        if whole and since is not None and (self.seen_cut or since >= POLL_SECONDS + 2):
            self.converged_s = since
            return [("SatelliteConverged", f"Satellite {self.target.name} connected, "
                     f"backlog 0 and streaming both ways {self.converged_s:.1f} s after "
                     "the heal")]
        return []

    async def check(self, dsns: dict[str, str]) -> None:
        """Both ledgers against both sides; the filter evaluated at the parent (where the
        parent's rows are) decides which of them belong at the satellite."""
        t = self.target
        none = SideWriter("", "", 0, ("",), 1.0)  # a run whose load never started
        sat = self.writers.get(t.name, none).acked
        par = self.writers.get(t.parent, none).acked
        self.loss, self.check_error = None, None
        try:
            keys = sorted({*sat, *par})
            at_sat = await _versions(dsns[t.name], keys)
            at_par = await _versions(dsns[t.parent], keys)
            chosen = await _versions(dsns[t.parent], sorted(par), filter_sql(t.row_filter))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                TimeoutError) as exc:
            self.check_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            return
        self.loss = satellite_lost(sat, par, at_sat, at_par, set(chosen))

    def figures(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)
        return {"satellite": self.target.name, "parent": self.target.parent,
                "satelliteRtoSeconds": r(self.rto()), "convergedSeconds": r(self.converged_s),
                "cutSeenInStatus": self.seen_cut, "checkSettleSeconds": r(self.settle_s),
                "writers": {s: w.figures() for s, w in self.writers.items()}}


async def dsns(api: client.ApiClient, ns: str, proxies: dict[str, io.RwProxy]
               ) -> dict[str, str]:
    return {unit: px.dsn(await io.app_password(api, ns, unit)) for unit, px in proxies.items()}


async def start_sat(api: client.ApiClient, ns: str, sat: SatRun,
                    proxies: dict[str, io.RwProxy], rate: float, seconds: float
                    ) -> asyncio.Task[Any]:
    """Proxies to both sides' -rw (into `proxies`, closed with the run) and the load."""
    for unit in (sat.target.name, sat.target.parent):
        px = io.RwProxy(api, ns, unit)
        await px.start()
        proxies[unit] = px
    return sat.start(await dsns(api, ns, proxies), min(rate, MAX_RATE), seconds)


async def cut(api: client.ApiClient, ns: str, drill: str, uid: str, sat: SatRun) -> str:
    """The partition: a NetworkPolicy selecting the Satellite's pod that refuses its
    parent's pods both ways (and lets every other peer, the API server too, through)."""
    t = sat.target
    ips = await io.campus_pod_ips(api, ns, t.parent, CAMPUS_LABEL)
    body = partition_policy(drill, uid, ns, t.name, t.parent, ips, CAMPUS_LABEL,
                            select_label=SATELLITE_LABEL)
    await io.create_policy(api, ns, body)
    sat.fault_mono = time.monotonic()
    return (f"NetworkPolicy {body['metadata']['name']} cuts Satellite {t.name} "  # type: ignore[index]
            f"from its parent {t.parent} ({', '.join(ips) or 'no pod address'})")


async def measure_sat(sat: SatRun, proxies: dict[str, io.RwProxy], api: client.ApiClient,
                      ns: str, load: asyncio.Task[Any] | None) -> Measured:
    """Stop the load, check both ledgers: what the planner judges. A check that could
    not run counts every commit as lost (nothing is proven kept)."""
    if load is not None and not load.done():
        for w in sat.writers.values():
            w.stop.set()
        with contextlib.suppress(BaseException):
            await load
    where = await dsns(api, ns, proxies)
    began = time.monotonic()
    while True:  # the last writes before the load stopped may still be on their way
        await sat.check(where)
        if (sat.loss is not None and sat.loss.lost == 0) or \
                time.monotonic() - began >= SETTLE:
            break
        await asyncio.sleep(1.0)
    sat.settle_s = time.monotonic() - began
    committed = sum(w.commits for w in sat.writers.values())
    lost = sat.loss.lost if sat.loss is not None else committed
    stopped = [f"{s}: {w.last_error}" for s, w in sat.writers.items() if not w.commits]
    return Measured(sat.rto(), lost, committed, "; ".join(stopped) or None,
                    sat.converged_s, None, lost if sat.loss is not None else None)


def sat_result(sat: SatRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """(load figures, check report) for the run's report."""
    checked: dict[str, Any] = ({"error": sat.check_error} if sat.check_error else
                               sat.loss.as_dict() if sat.loss else {})
    return sat.figures(), checked


async def read_target(api: client.ApiClient, ns: str, kind: TargetKind, name: str
                      ) -> tuple[bool, tuple[DrillCampus, ...], SatelliteTarget | None]:
    """The target as the planner reads it: a Satellite (read_satellite) or campuses."""
    if kind == TargetKind.SATELLITE:
        return await read_satellite(api, ns, name)
    exists, campuses = await io.target(api, ns, kind, name)
    return exists, campuses, None

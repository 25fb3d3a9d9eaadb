"""`python -m ringkeeper_devcluster.satdemo`: the satellite part of `make demo`.

The Satellite (examples/hospital-group-local/satellite.yaml) is applied by the demo just
before this runs. It waits for the satellite's database (its `-rw` endpoint), creates
its table there (a satellite's tables are not created for it: the ring demo's DDL of
lis.samples, which has no foreign key, so the filtered subset never points at a row the
filter leaves out; and, as `app`, the Satellite partition drill's own table, there and at
every ring member, for make demo's satsplit drill), and writes at the satellite and at
two ring members (its parent and one other) from then on, with a ledger of every
acknowledged commit, until the satellite has streamed both ways for `--seconds`. Then it
waits for the satellite to be Online with no backlog and checks the ledger: every
acknowledged satellite commit at every ring member with its last acknowledged value; the
ring's rows inside the satellite's filter at the satellite with theirs, and those outside
it (or moved out of it by an update) not there. The result goes to a JSON file the demo's
summary judges (demosummary.py); the exit code is 1 when anything is missing, stale or
misplaced, or the satellite never streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from kubernetes_asyncio import client

from ringkeeper.adapters import resources
from ringkeeper.adapters.kube import api_client
from ringkeeper.core.drill_satellite import DRILL_DDL, DRILL_QUALIFIED
from ringkeeper.core.ringplan import primary_address

from .ringdemo import SAMPLES, connect, say

TABLE = "lis.samples"
Row = tuple[str, str]  # (campus, status): the columns the ledger follows


def inside_values(satellite: dict[str, Any]) -> frozenset[str]:
    """The campus values the satellite's filter on lis.samples keeps. The demo's check is
    written for a filter of one `campus In|Equals (...)` term: anything else is refused
    rather than checked wrongly."""
    table = next((t for t in satellite["spec"]["tables"] if t["name"] == TABLE), None)
    terms = ((table or {}).get("filter") or {}).get("all") or []
    if table is None or len(terms) != 1 or terms[0].get("column") != "campus" or \
            terms[0].get("op") not in ("In", "Equals"):
        raise SystemExit(f"satdemo: the satellite must keep {TABLE} filtered by one term "
                         f"campus In|Equals (...); its spec has {table}")
    return frozenset(str(v) for v in terms[0].get("values") or [])


def problems(ring_ledger: dict[int, Row], sat_ledger: dict[int, Row],
             found: dict[str, dict[int, Row]], satellite: str, inside: frozenset[str]
             ) -> dict[str, list[str]]:
    """What the ledgers say is wrong, by kind: `lost` (a satellite commit missing or
    stale at a ring member, or a ring row inside the filter missing or stale at the
    satellite) and `misplaced` (a ring row outside the filter at the satellite). `found`
    maps every ring member and the satellite to its rows. Empty lists when all holds."""
    lost: list[str] = []
    misplaced: list[str] = []
    for member, rows in found.items():
        if member == satellite:
            continue
        for key, row in sat_ledger.items():
            if rows.get(key) != row:
                lost.append(f"{member}: satellite id {key} is {rows.get(key)}, acked {row}")
    at_sat = found[satellite]
    for key, row in ring_ledger.items():
        if row[0] in inside and at_sat.get(key) != row:
            lost.append(f"{satellite}: ring id {key} is {at_sat.get(key)}, acked {row}")
        elif row[0] not in inside and key in at_sat:
            misplaced.append(f"{satellite}: ring id {key} is {at_sat[key]}, outside the "
                             f"filter (acked {row})")
    for key, row in sat_ledger.items():
        if at_sat.get(key) != row:
            lost.append(f"{satellite}: own id {key} is {at_sat.get(key)}, acked {row}")
    return {"lost": lost, "misplaced": misplaced}


@dataclass
class Writer:
    """One transaction at a time: inserts of its own ids (campus from `campuses` in
    turn), and updates of its own acknowledged rows (a new status; for the ring's
    writers some move the row to `move_to`, out of the filter). `ledger` holds per id the
    last acknowledged (campus, status); an id whose last write's outcome is unknown (no
    acknowledgement, an error) is dropped from it: it may or may not have committed."""

    unit: str
    connect: Callable[[], Awaitable[asyncpg.Connection]]
    base: int
    campuses: tuple[str, ...]
    move_to: str | None
    rate: float
    ledger: dict[int, Row] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    commits: int = 0
    errors: int = 0

    async def run(self) -> None:
        rng = random.Random(self.base)
        conn: asyncpg.Connection | None = None
        n = 0
        while not self.stop.is_set():
            key = 0
            try:
                if conn is None:
                    conn = await self.connect()
                if self.ledger and rng.random() < 0.3:
                    key = rng.choice(list(self.ledger))
                    campus = self.ledger[key][0]
                    if self.move_to and rng.random() < 0.3:
                        campus = self.move_to
                    row = (campus, f"{self.unit}-{self.commits}")
                    await asyncio.wait_for(conn.execute(
                        f"UPDATE {TABLE} SET campus = $2, status = $3 WHERE id = $1",
                        key, *row), 5)
                else:
                    key = self.base + n
                    row = (self.campuses[n % len(self.campuses)], "collected")
                    n += 1
                    await asyncio.wait_for(conn.execute(
                        f"INSERT INTO {TABLE} VALUES ($1, $2, $3, 'GLU', $4, $5, now())",
                        key, row[0], f"P{rng.randrange(10000):05d}", row[1],
                        rng.random() * 10), 5)
                self.ledger[key] = row
                self.commits += 1
            except Exception:  # not acknowledged: its outcome is unknown; reconnect
                self.errors += 1
                self.ledger.pop(key, None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
                await asyncio.sleep(0.5)
            await asyncio.sleep(1 / self.rate)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def satellite_address(api: client.ApiClient, ns: str, name: str) -> str | None:
    """The ready address behind the satellite's `-rw` Service, None while it has none."""
    slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={name}-rw")
    ready = sorted(a for s in slices.items for ep in s.endpoints or []
                   if ep.conditions is None or ep.conditions.ready for a in ep.addresses)
    return ready[0] if ready else None


async def connect_satellite(api: client.ApiClient, ns: str, name: str) -> asyncpg.Connection:
    host = await satellite_address(api, ns, name)
    if host is None:
        raise RuntimeError(f"satellite {name} has no ready -rw endpoint")
    s = await client.CoreV1Api(api).read_namespaced_secret(f"{name}-superuser", ns)
    data = s.data or {}
    conn: asyncpg.Connection = await asyncpg.connect(
        host=host, port=5432, database="app", timeout=5,
        user=base64.b64decode(data["username"]).decode(),
        password=base64.b64decode(data["password"]).decode())
    return conn


async def connect_app(api: client.ApiClient, ns: str, unit: str, host: str | None
                      ) -> asyncpg.Connection:
    """A connection as the user `app` (secret `<unit>-app`): the Satellite partition
    drill writes its table as `app`, so `app` must own it where it is created."""
    if host is None:
        raise RuntimeError(f"{unit} has no address to connect to")
    s = await client.CoreV1Api(api).read_namespaced_secret(f"{unit}-app", ns)
    conn: asyncpg.Connection = await asyncpg.connect(
        host=host, port=5432, database="app", user="app", timeout=5,
        password=base64.b64decode((s.data or {})["password"]).decode())
    return conn


async def create_drill_table(api: client.ApiClient, ns: str, unit: str, host: str | None
                             ) -> None:
    conn = await connect_app(api, ns, unit, host)
    try:
        await conn.execute(DRILL_DDL)
    finally:
        await conn.close()


async def rows_at(conn_f: Callable[[], Awaitable[asyncpg.Connection]]) -> dict[int, Row]:
    conn = await conn_f()
    try:
        return {r["id"]: (r["campus"], r["status"])
                for r in await conn.fetch(f"SELECT id, campus, status FROM {TABLE}")}
    finally:
        await conn.close()


def streaming(status: dict[str, Any]) -> bool:
    cond: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Streaming"), {})
    return status.get("connected") is True and cond.get("status") == "True"


async def wait_status(api: client.ApiClient, ns: str, name: str, what: str,
                      ok: Callable[[dict[str, Any]], bool], timeout: float
                      ) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = (await resources.read_custom(api, ns, "satellites", name)).get("status") or {}
        if ok(st):
            return st
        await asyncio.sleep(1)
    cond: dict[str, Any] = next(
        (c for c in st.get("conditions") or [] if c.get("type") == "Streaming"), {})
    say(f"satellite {name}: not {what} after {timeout:.0f}s (phase {st.get('phase')}, "
        f"connected {st.get('connected')}, Streaming {cond.get('reason')}: "
        f"{cond.get('message')})")
    return None


async def main(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Run the satellite step, filling `result` (what the summary reads) as it goes."""
    ns, name = args.namespace, args.satellite
    t0 = time.monotonic()
    result.update(satellite=name, namespace=ns, streamed=False, lost=None, misplaced=None)
    async with await api_client() as api:
        sat = await resources.read_custom(api, ns, "satellites", name)
        parent = str(sat["spec"]["parentRef"]["name"])
        inside = inside_values(sat)
        result["parent"] = parent
        ring = await resources.read_custom(api, ns, "replicationrings", args.ring)
        members = [str(m["campusRef"]["name"]) for m in ring["spec"]["members"]]
        if parent not in members:
            raise SystemExit(f"satdemo: {name}'s parent {parent} is not in ring {args.ring}")
        other = next(m for m in members if m != parent)
        deadline = time.monotonic() + args.timeout
        while await satellite_address(api, ns, name) is None:
            if time.monotonic() > deadline:
                say(f"satellite {name}: no ready {name}-rw endpoint after {args.timeout:.0f}s")
                return 1
            await asyncio.sleep(1)
        say(f"satellite {name}: database serving {time.monotonic() - t0:.0f}s after it was "
            f"applied; creating {TABLE} there (its parent {parent} copies its rows of "
            f"campus {', '.join(sorted(inside))} into it), and the partition drill's table "
            f"{DRILL_QUALIFIED} as app there and at every ring member (before anything "
            "writes it: the ring carries it, ring.yaml)")
        for m in members:
            await create_drill_table(api, ns, m, primary_address(
                await resources.read_campus(api, ns, m)))
        while True:
            try:
                conn = await connect_satellite(api, ns, name)
                try:
                    await conn.execute(SAMPLES)
                finally:
                    await conn.close()
                await create_drill_table(api, ns, name, await satellite_address(api, ns, name))
                break
            except (OSError, asyncpg.PostgresError, TimeoutError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)

        def sat_conn() -> Awaitable[asyncpg.Connection]:
            return connect_satellite(api, ns, name)

        def member_conn(c: str) -> Callable[[], Awaitable[asyncpg.Connection]]:
            return lambda: connect(api, ns, c)

        # Inside and outside the filter at the ring: the parent writes its own campus's
        # rows (inside), the other member its own (outside) and some of the parent's;
        # each moves some of its rows out of the filter (to `other`) by an update.
        out_value = other if other not in inside else "elsewhere"
        writers = [
            Writer(name, sat_conn, 70_000_000, (name,), None, args.rate),
            Writer(parent, member_conn(parent), 50_000_000, (parent,), out_value, args.rate),
            Writer(other, member_conn(other), 60_000_000, (other, other, parent), out_value,
                   args.rate)]
        tasks = [asyncio.create_task(w.run()) for w in writers]
        say(f"writing {args.rate:.0f} transactions/s each at {name}, {parent} and {other} "
            "from now on; waiting for the satellite to stream both ways")
        try:
            joined = await wait_status(api, ns, name, "streaming both ways", streaming,
                                       args.timeout)
            if joined is not None:
                result["streamed"] = True
                result["join_seconds"] = round(time.monotonic() - t0, 1)
                say(f"satellite {name}: streaming both ways with {parent} "
                    f"{result['join_seconds']:.0f}s after it was applied (phase "
                    f"{joined.get('phase')}, backlog {joined.get('backlogRows')} rows); "
                    f"writing on for {args.seconds:.0f}s")
                await asyncio.sleep(args.seconds)
        finally:
            for w in writers:
                w.stop.set()
            await asyncio.gather(*tasks)
        sat_w, ring_w = writers[0], writers[1:]
        result["acked_satellite"] = sat_w.commits
        result["acked_ring"] = sum(w.commits for w in ring_w)
        result["refused"] = sum(w.errors for w in writers)
        if not result["streamed"]:
            return 1
        t_stop = time.monotonic()
        online = await wait_status(
            api, ns, name, "Online with no backlog",
            lambda s: streaming(s) and s.get("phase") == "Online" and s.get("backlogRows") == 0,
            90)
        result["backlog_rows"] = None if online is None else online.get("backlogRows")
        ring_ledger = {k: v for w in ring_w for k, v in w.ledger.items()}
        found: dict[str, list[str]] = {}
        check_deadline = time.monotonic() + 60
        while True:
            rows = {c: await rows_at(member_conn(c)) for c in members}
            rows[name] = await rows_at(sat_conn)
            found = problems(ring_ledger, sat_w.ledger, rows, name, inside)
            if not any(found.values()) or time.monotonic() > check_deadline:
                break
            await asyncio.sleep(1)
        result["converged_seconds"] = round(time.monotonic() - t_stop, 1)
        result["lost"], result["misplaced"] = len(found["lost"]), len(found["misplaced"])
        result["first_problems"] = (found["lost"] + found["misplaced"])[:10]
        result["keys_satellite"] = len(sat_w.ledger)
        result["keys_ring_inside"] = sum(1 for c, _ in ring_ledger.values() if c in inside)
        result["keys_ring_outside"] = len(ring_ledger) - result["keys_ring_inside"]
    say(f"ledger: {result['acked_satellite']} satellite commits ({result['keys_satellite']} "
        f"rows) checked at {len(members)} ring members, {result['keys_ring_inside']} ring "
        f"rows inside the filter at {name}, {result['keys_ring_outside']} outside not there: "
        f"{result['lost']} lost or stale, {result['misplaced']} misplaced "
        f"({result['converged_seconds']:.1f}s after the writers stopped)")
    for p in result["first_problems"]:
        say(f"  {p}")
    ok = online is not None and not result["lost"] and not result["misplaced"]
    return 0 if ok else 1


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--namespace", default="lis")
    p.add_argument("--satellite", default="xindeng")
    p.add_argument("--ring", default="lis-ring", help="the ring of the satellite's parent")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="writing on after the satellite streams both ways")
    p.add_argument("--rate", type=float, default=10.0, help="transactions/s per writer")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--out", required=True, help="the JSON result for the summary")
    args = p.parse_args()
    result: dict[str, Any] = {}
    rc = 1
    try:
        rc = asyncio.run(main(args, result))
    finally:  # written whatever happened: a missing or partial result fails the summary
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    sys.exit(rc)


if __name__ == "__main__":
    cli()

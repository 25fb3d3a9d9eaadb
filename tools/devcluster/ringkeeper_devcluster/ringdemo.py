"""`python -m ringkeeper_devcluster.ringdemo`: the ring part of `make demo`.

Creates the LIS tables at every campus and starts writing there at once, while the ring
is still being set up, and keeps writing at every campus after it streams (some writes
collide on purpose), with a ledger of every acknowledged commit. Prints the per-link lag
table while it runs and ends with a convergence check: identical checksums at every
member and every acknowledged transaction found at every member.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import time
from typing import Any

import asyncpg
from kubernetes_asyncio import client

from ringkeeper.adapters import resources
from ringkeeper.adapters.kube import api_client
from ringkeeper.core.ringplan import primary_address

from .workload import wait_ready

# lis.samples alone is also the demo satellite's table (satdemo.py creates it there).
SAMPLES = """
CREATE SCHEMA IF NOT EXISTS lis;
CREATE TABLE IF NOT EXISTS lis.samples (
    id bigint PRIMARY KEY, campus text NOT NULL, patient text, test_code text,
    status text NOT NULL, result numeric(12, 3), collected_at timestamptz NOT NULL);
"""
SCHEMA = SAMPLES + """
CREATE TABLE IF NOT EXISTS lis.results (
    sample_id bigint NOT NULL, test_code text NOT NULL, value double precision,
    flag text, PRIMARY KEY (sample_id, test_code));
"""
CHECKSUM = ("SELECT (SELECT count(*) FROM lis.samples)::text || ' rows, ' || "
            "(SELECT count(*) FROM lis.results)::text || ' results, md5 ' || "
            "left(md5(coalesce((SELECT string_agg(s::text, '|' ORDER BY id) FROM lis.samples s),"
            " '') || coalesce((SELECT string_agg(r::text, '|' ORDER BY sample_id, test_code) "
            "FROM lis.results r), '')), 12)")


def say(text: str) -> None:
    print(f"    [{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def connect(api: client.ApiClient, ns: str, campus: str) -> asyncpg.Connection:
    obj = await resources.read_campus(api, ns, campus)
    host = primary_address(obj)
    if host is None:
        raise RuntimeError(f"campus {campus} has no primary")
    s = await client.CoreV1Api(api).read_namespaced_secret(f"{campus}-superuser", ns)
    data = s.data or {}
    conn: asyncpg.Connection = await asyncpg.connect(
        host=host, port=5432, database="app", timeout=5,
        user=base64.b64decode(data["username"]).decode(),
        password=base64.b64decode(data["password"]).decode())
    return conn


def lag_table(status: dict[str, Any]) -> list[str]:
    rows = [f"{'link':<28} {'state':<11} {'lag s':>7} {'lag bytes':>10} {'rows/s':>8} "
            f"{'conflicts':>9}"]
    for lk in status.get("links") or []:
        lag = lk.get("lagSeconds")
        rows.append(f"{lk['from'] + ' -> ' + lk['to']:<28} {lk['state']:<11} "
                    f"{(f'{lag:.2f}' if lag is not None else '-'):>7} "
                    f"{lk.get('lagBytes') if lk.get('lagBytes') is not None else '-':>10} "
                    f"{lk.get('rowsPerSecond') or 0:>8.1f} {lk.get('conflicts') or 0:>9}")
    return rows


async def writer(api: client.ApiClient, ns: str, campus: str, index: int, stop: asyncio.Event,
                 rate: float, shared: list[int]) -> list[int]:
    """Write until `stop`; returns the sample ids whose COMMIT was acknowledged (the ledger)."""
    rnd = random.Random(index)
    conn = await connect(api, ns, campus)
    acked: list[int] = []
    try:
        next_id = index * 10_000_000
        while not stop.is_set():
            next_id += 1
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO lis.samples VALUES ($1, $2, $3, 'GLU', 'collected', $4, now())",
                    next_id, campus, f"P{rnd.randrange(10000):05d}", rnd.random() * 10)
                await conn.execute("INSERT INTO lis.results VALUES ($1, 'GLU', $2, 'N')",
                                   next_id, rnd.random() * 10)
                if rnd.random() < 0.2:  # the same shared samples verified at several campuses
                    await conn.execute(
                        "UPDATE lis.samples SET status = $2, result = $3 WHERE id = $1",
                        rnd.choice(shared), f"verified@{campus}", rnd.random() * 10)
            acked.append(next_id)  # the commit returned: acknowledged
            await asyncio.sleep(1 / rate)
    finally:
        await conn.close()
    return acked


async def missing_at(api: client.ApiClient, ns: str, campus: str, ids: list[int]) -> int:
    conn = await connect(api, ns, campus)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM lis.samples s JOIN lis.results r ON r.sample_id = s.id "
            "WHERE s.id = ANY($1::bigint[])", ids)
    finally:
        await conn.close()
    return len(ids) - int(found)


async def main(args: argparse.Namespace) -> int:
    ns, ring = args.namespace, args.ring
    async with await api_client() as api:
        obj = await resources.read_custom(api, ns, "replicationrings", ring)
        campuses = [m["campusRef"]["name"] for m in obj["spec"]["members"]]
        # Writers start at each campus as soon as its tables exist, long before the ring
        # streams: the ring must carry what was written while it was being set up.
        stop = asyncio.Event()
        tasks: list[asyncio.Task[list[int]]] = []
        t_first = time.monotonic()
        for i, c in enumerate(campuses):
            await wait_ready(api, ns, c, timeout=240, settle=False)
            conn = await connect(api, ns, c)
            try:
                await conn.execute(SCHEMA)
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            if not tasks:
                t_first = time.monotonic()
            tasks.append(asyncio.create_task(writer(api, ns, c, i + 1, stop, args.rate,
                                                    list(range(1, 51)))))
            say(f"campus {c}: PostgreSQL {version.split()[0]}, LIS tables ready, writing "
                f"{args.rate:.0f} transactions/s from now on (20% update shared samples)")
        # Shared samples that every campus will update: created once, carried by the ring.
        conn = await connect(api, ns, campuses[0])
        try:
            await conn.execute("INSERT INTO lis.samples SELECT g, $1, 'P00000', 'HB', 'new', 0,"
                               " now() FROM generate_series(1, 50) g ON CONFLICT DO NOTHING",
                               campuses[0])
        finally:
            await conn.close()
        deadline = time.monotonic() + 180
        while True:
            st = (await resources.read_custom(api, ns, "replicationrings", ring)).get(
                "status") or {}
            conds = {c["type"]: c for c in st.get("conditions") or []}
            if conds.get("Ready", {}).get("status") == "True":
                break
            if time.monotonic() > deadline:
                say(f"ring not Ready: {conds.get('Degraded', {}).get('message')}")
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                return 1
            await asyncio.sleep(2)
        say(f"ring {ring} Ready: {st.get('healthyLinks')} links streaming, "
            f"{time.monotonic() - t_first:.0f}s after the first campus began writing; "
            f"writing on for {args.seconds:.0f}s")
        loop = asyncio.get_running_loop()
        loop.call_later(args.seconds, stop.set)
        while not stop.is_set():
            await asyncio.sleep(3)
            st = (await resources.read_custom(api, ns, "replicationrings", ring)).get(
                "status") or {}
            print(f"    [{time.strftime('%H:%M:%S')}] ring {ring}: {st.get('healthyLinks')} "
                  f"healthy, max lag {st.get('maxLagSeconds')}s", flush=True)
            for line in lag_table(st):
                print("        " + line, flush=True)
        ledger = [i for t in await asyncio.gather(*tasks) for i in t]
        written = len(ledger)
        say(f"{written} transactions committed across the campuses; waiting for convergence")
        deadline = time.monotonic() + 120
        sums: dict[str, str] = {}
        while time.monotonic() < deadline:
            for c in campuses:
                conn = await connect(api, ns, c)
                try:
                    sums[c] = str(await conn.fetchval(CHECKSUM))
                finally:
                    await conn.close()
            if len(set(sums.values())) == 1:
                break
            await asyncio.sleep(2)
        for c, s in sums.items():
            say(f"{c:<14} {s}")
        lost = {c: await missing_at(api, ns, c, ledger) for c in campuses}
        say("ledger: " + ", ".join(f"{c} misses {n}" for c, n in lost.items())
            + f" of {written} acknowledged transactions")
        same = len(set(sums.values())) == 1 and not any(lost.values())
        conflicts = 0
        for c in campuses:
            conn = await connect(api, ns, c)
            try:
                conflicts += int(await conn.fetchval("SELECT count(*) FROM ringkeeper.conflicts"))
            finally:
                await conn.close()
    print()
    print(f"ring summary: {len(campuses)} campuses, {written} transactions written, "
          f"{conflicts} conflicts resolved and logged, converged = {'yes' if same else 'NO'}")
    return 0 if same else 1


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--namespace", default="lis")
    p.add_argument("--ring", default="lis-ring")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=20.0)
    sys.exit(asyncio.run(main(p.parse_args())))


if __name__ == "__main__":
    cli()

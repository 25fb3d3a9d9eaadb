"""A satellite's initial copies on real servers (issue 17): it joins a parent that already
holds rows, under live writes at the parent, the ring and the satellite.

A ring of two members (a: PostgreSQL 17, b: 18) holds rows written at a and at b before
the satellite s (17, a's, filter campus In (a, s)) is added to the config; s holds rows of
its own, written before it joined. Writers at a, b and s (test_convergence.writer, on
shared keys: conflicting updates, deletes, out-of-line values) run before, during and
after the join. Afterwards every acknowledged write is where it belongs: at s every row
of a's that the filter selects (the copy down, through the spool), at a and b every row
of s's (the copy up, under s's origin); the filtered checksums agree; no write was
applied twice at s or a; and the checker fails on a row dropped on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

from pgserver import PgServer, free_port, unavailable

from .ringlocal import SCHEMA, LocalRing, wait_until
from .test_convergence import Write, fetch, writer
from .test_satellite_sync import (
    AUDIT,
    FILTER_CAMPUSES,
    FILTERED_SUM,
    IN_FILTER,
    latest_writes,
    ledger_problems,
    scalar,
    start_sidecar,
    status_of,
)

pytestmark = pytest.mark.postgres

for _m in ("17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)


async def test_satellite_joins_a_parent_with_rows_under_live_writes() -> None:
    ring = LocalRing(("17", "18"))
    ring.start_servers()
    sat = PgServer("17", name="s")
    keys = 200
    try:
        sat.start()
        sat.psql(SCHEMA)
        ring.servers["s"] = sat
        for n in ("a", "b", "s"):
            ring.servers[n].psql(AUDIT)
        port = free_port()
        start_sidecar(ring, "a", ring.root / "a.log", port)
        start_sidecar(ring, "b", ring.root / "b.log")

        async def ring_streaming() -> bool:
            with contextlib.suppress(OSError, ValueError):
                links = status_of(port)["links"]
                return bool(links) and all(lk["state"] == "Streaming" for lk in links)
            return False

        await wait_until("ring a, b streaming", ring_streaming, 60)
        # Rows before the satellite exists in the config: at a and at b (in and out of
        # the filter), and at s its own (never seen by the ring yet).
        ring.servers["a"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g % 2 = 0 "
            f"THEN 'a' ELSE 'b' END, 'seed' FROM generate_series(0, {keys - 1}) g")
        ring.servers["a"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g % 3 = 0 "
            "THEN 'b' ELSE 'a' END, 'pre-a' FROM generate_series(10000, 17999) g")
        ring.servers["b"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g % 2 = 0 "
            "THEN 'a' ELSE 'b' END, 'pre-b' FROM generate_series(20000, 23999) g")
        sat.psql("INSERT INTO lis.samples (id, campus, status) SELECT g, 's', 'pre-s' "
                 "FROM generate_series(30000, 31499) g")
        await ring.wait_converged(timeout=60)

        async def write_all(seconds: float, seed: int) -> list[Write]:
            until = time.monotonic() + seconds
            ledgers = await asyncio.gather(*(writer(ring, n, keys, until, seed + i)
                                             for i, n in enumerate(("a", "b", "s"))))
            return [w for ledger in ledgers for w in ledger]

        # Writers everywhere; the satellite joins 3 s in, while they write.
        writing = asyncio.create_task(write_all(16, 40))
        await asyncio.sleep(3)
        cfg = json.loads(ring.config_path.read_text())
        cfg["satellites"] = {"s": {
            "parent": "a", "engine": "postgresql", "version": "17", "dsn": sat.dsn(),
            "tables": [{"name": "lis.samples", "filter": {"all": [
                {"column": "campus", "op": "In", "values": list(FILTER_CAMPUSES)}]}}]}}
        tmp = ring.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        tmp.replace(ring.config_path)
        seen: set[str] = set()
        copy: dict[str, Any] = {}
        copy_up: dict[str, Any] = {}

        async def copies_done() -> bool:
            with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
                s0 = status_of(port)["satellites"][0]
                copy.update(s0["copy"])
                copy_up.update(s0["copyUp"])
                seen.update({copy["state"], copy_up["state"]})
                return bool(copy["state"] == "Done" and copy_up["state"] == "Done")
            return False

        try:
            await wait_until("both initial copies done", copies_done, 90)
        except AssertionError:
            print("status:", copy, copy_up)
            print((ring.root / "a.log").read_text()[-3000:])
            raise
        writes = await writing
        print(f"copy down {copy}; copy up {copy_up}; states seen {sorted(seen)}")
        writes += await write_all(4, 60)
        t0 = time.monotonic()
        await ring.wait_converged(timeout=120)

        async def s_matches_a() -> bool:
            want = await scalar(ring, "a", FILTERED_SUM.format(where=IN_FILTER))
            return bool(await scalar(ring, "s", FILTERED_SUM.format(where="TRUE")) == want)

        await wait_until("s has a's filtered rows", s_matches_a, 120)
        await asyncio.sleep(2)
        await ring.wait_converged(timeout=60)
        assert await s_matches_a()
        print(f"converged {time.monotonic() - t0:.1f} s after the writers stopped; "
              f"{len(writes)} acknowledged writes")
        # The copies: every filtered pre-join row of a's and b's is at s, s's at a and b.
        pre = {n: await scalar(ring, n, "SELECT count(*) FROM lis.samples WHERE id >= 10000 "
                               f"AND ({IN_FILTER})") for n in ("a", "b", "s")}
        assert pre == {"a": 5334 + 2000 + 1500, "b": 5334 + 2000 + 1500,
                       "s": 5334 + 2000 + 1500}, pre
        assert copy["rowsCopied"] >= 5334 + 2000 and copy["percent"] == 100.0, copy
        assert copy_up["rowsCopied"] >= 1500, copy_up
        latest = latest_writes(writes)
        assert {w.member for w in writes} == {"a", "b", "s"}
        at_a: dict[int, tuple[str, str]] = {}
        for n in ("a", "b", "s"):
            have = {r["id"]: (r["status"], r["campus"]) for r in await fetch(
                ring, n, "SELECT id, status, campus FROM lis.samples")}
            at_a = at_a or have
            problems = ledger_problems(latest, have, None if n != "s" else
                                       {k: c for k, (_, c) in at_a.items()})
            assert problems == [], f"{n}: {problems[:10]}"
        # Every row at s is at a and b, as it is at s.
        for n in ("a", "b"):
            have_s = await scalar(ring, "s", FILTERED_SUM.format(where="TRUE"))
            assert await scalar(ring, n, FILTERED_SUM.format(where=IN_FILTER)) == have_s, n
        # The checker fails on a row dropped on purpose (at s, and at a).
        have_s = {r["id"]: (r["status"], r["campus"]) for r in await fetch(
            ring, "s", "SELECT id, status, campus FROM lis.samples")}
        dropped = next(k for k in have_s if k in latest)
        del have_s[dropped]
        campus_a = {k: c for k, (_, c) in at_a.items()}
        assert ledger_problems(latest, have_s, campus_a) == [
            f"key {dropped}: want {latest[dropped].status} ({latest[dropped].member}), "
            "have None"], "the checker missed a row dropped on purpose"
        del at_a[dropped]
        assert ledger_problems(latest, at_a), "the checker missed a row dropped at a"
        assert await scalar(ring, "a", "SELECT count(*) FROM ringkeeper.satellite_spool") == 0
        # Nothing applied twice at the satellite or at its parent: the rows both copied
        # and streamed count as one write (the bulk path's premise is strictly older,
        # as the conflict rules: an equal version is skipped, not written again).
        twice = {n: await fetch(ring, n, "SELECT id, status, pg_xact_commit_timestamp("
                                "xid::text::xid) AS at, count(*) FROM audit.applied "
                                "GROUP BY 1, 2, 3 HAVING count(*) > 1 LIMIT 5")
                 for n in ("s", "a")}
        assert not any(twice.values()), f"applied twice with the same version: {twice}"
    finally:
        for name in list(ring.procs):
            ring.kill_process(name)
        ring.destroy()

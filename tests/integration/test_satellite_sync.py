"""Satellite store-and-forward on real servers (issue 17, step 2).

A ring of two members (a: PostgreSQL 17, b: 18) and a satellite s (17) of a, whose
one table is filtered to campus In (a, s). The sidecars run as `ringkeeper sync`
processes; the satellite is reached through a TCP proxy the test cuts. Writers at a, b
and s keep a ledger of every acknowledged commit (test_convergence.writer) before,
during and after the cut, with conflicting updates and deletes of shared keys; a's
sidecar is SIGKILLed while it drains its spool into s. Afterwards every acknowledged
write is where it belongs, the spool is empty, the parent's slot for s was confirmed
during the outage, and an audit trigger shows no write applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pgserver import PgServer, free_port, unavailable

from .ringlocal import SCHEMA, LocalRing, wait_until
from .test_convergence import Write, fetch, writer

pytestmark = pytest.mark.postgres

for _m in ("17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

FILTER_CAMPUSES = ("a", "s")
IN_FILTER = "campus IN ('a', 's')"
# Every insert or update of lis.samples, logged once per application (ALWAYS: it fires
# for changes the ring applies too). A write applied twice shows as one (id, status,
# origin commit time) logged by two transactions.
AUDIT = """
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.applied (n bigserial PRIMARY KEY, id bigint, status text,
                                          op text, xid xid8 DEFAULT pg_current_xact_id());
CREATE OR REPLACE FUNCTION audit.log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit.applied (id, status, op) VALUES (NEW.id, NEW.status, TG_OP);
RETURN NULL; END $$;
CREATE TRIGGER audit_applied AFTER INSERT OR UPDATE ON lis.samples
    FOR EACH ROW EXECUTE FUNCTION audit.log();
ALTER TABLE lis.samples ENABLE ALWAYS TRIGGER audit_applied;
CREATE TABLE IF NOT EXISTS audit.fill (id bigserial PRIMARY KEY, pad text);
"""
FILTERED_SUM = ("SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
                "ORDER BY id)), '') FROM lis.samples t WHERE {where}")


class Cuttable:
    """A TCP proxy to one server that the test cuts (every connection reset, new ones
    refused) and heals: the satellite's network, as its parent's sidecar sees it."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.cut = False
        self.port = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.cut:
            w.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.transport.abort()
            return
        pair = (w, uw)
        self._pairs.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self._pairs.discard(pair)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for w, uw in list(self._pairs):
                w.transport.abort()
                uw.transport.abort()

    async def close(self) -> None:
        self.set_cut(True)
        if self._server is not None:
            self._server.close()


def latest_writes(writes: list[Write]) -> dict[int, Write]:
    """The write each key ends with under last-writer-wins (commit time, then name:
    priorities are equal, and a satellite weighs as its parent)."""
    latest: dict[int, Write] = {}
    for w in writes:
        have = latest.get(w.key)
        if have is None or (w.at, w.member) > (have.at, have.member):
            latest[w.key] = w
    return latest


def ledger_problems(latest: dict[int, Write], rows: dict[int, tuple[str, str]],
                    campus: dict[int, str] | None = None) -> list[str]:
    """Every key's last acknowledged write found in `rows` (id -> (status, campus)).
    With `campus` (the row's campus in the ring, whose statuses the ledger checked),
    only rows whose campus is in the satellite's filter are expected, others absent
    (a writer's update may leave the campus as it was)."""
    out = []
    for k, w in latest.items():
        inside = campus is None or campus.get(k) in FILTER_CAMPUSES
        expected = not w.deleted and inside
        have = rows.get(k)
        if expected and (have is None or have[0] != w.status):
            out.append(f"key {k}: want {w.status} ({w.member}), have {have}")
        if not expected and have is not None and w.deleted:
            out.append(f"key {k}: deleted last by {w.member}, yet present {have}")
        if not expected and have is not None and not inside:
            out.append(f"key {k}: out of the filter ({campus and campus.get(k)}), yet "
                       f"present {have}")
    return out


def status_of(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def start_sidecar(ring: LocalRing, name: str, log: Path, status_port: int = 0) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "ringkeeper", "sync", "--member", name, "--local-dsn",
            ring.servers[name].dsn(), "--ring-file", str(ring.config_path),
            "--status-address", "127.0.0.1", "--status-port", str(status_port)]
    with log.open("ab") as out:
        ring.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)


async def scalar(ring: LocalRing, member: str, sql: str) -> Any:
    rows = await fetch(ring, member, sql)
    return rows[0][0] if rows else None


async def test_satellite_store_and_forward_through_an_outage_and_a_kill() -> None:
    ring = LocalRing(("17", "18"))
    ring.start_servers()
    sat = PgServer("17", name="s")
    proxy = Cuttable(0)
    keys = 200
    try:
        sat.start()
        sat.psql(SCHEMA)
        ring.servers["s"] = sat
        for n in ("a", "b", "s"):
            ring.servers[n].psql(AUDIT)
        proxy.target = sat.port
        await proxy.start()
        port = free_port()
        start_sidecar(ring, "a", ring.root / "a.log", port)
        start_sidecar(ring, "b", ring.root / "b.log")

        async def ring_streaming() -> bool:
            with contextlib.suppress(OSError, ValueError):
                links = status_of(port)["links"]
                return bool(links) and all(lk["state"] == "Streaming" for lk in links)
            return False

        # The satellite joins a running ring: the config changes under the sidecars (links
        # restart with the satellite's origin, origins are made where they apply).
        await wait_until("ring a, b streaming", ring_streaming, 60)
        cfg = json.loads(ring.config_path.read_text())
        cfg["satellites"] = {"s": {
            "parent": "a", "engine": "postgresql", "version": "17",
            "dsn": sat.dsn().replace(f":{sat.port}/", f":{proxy.port}/"),
            "tables": [{"name": "lis.samples", "filter": {"all": [
                {"column": "campus", "op": "In", "values": list(FILTER_CAMPUSES)}]}}]}}
        tmp = ring.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        tmp.replace(ring.config_path)

        async def satellite_streaming() -> bool:
            with contextlib.suppress(OSError, ValueError):
                sats = status_of(port)["satellites"]
                return bool(sats) and sats[0]["connected"] and \
                    sats[0]["up"]["state"] == "Streaming" and \
                    sats[0]["down"]["state"] == "Streaming"
            return False

        await wait_until("satellite s connected", satellite_streaming, 60)
        ring.servers["a"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g % 2 = 0 "
            f"THEN 'a' ELSE 'b' END, 'seed' FROM generate_series(0, {keys - 1}) g")

        async def s_matches_a() -> bool:
            want = await scalar(ring, "a", FILTERED_SUM.format(where=IN_FILTER))
            return bool(await scalar(ring, "s", FILTERED_SUM.format(where="TRUE")) == want)

        await ring.wait_converged(timeout=60)
        await wait_until("seed rows at s (filtered)", s_matches_a, 60)

        async def write_all(seconds: float, seed: int) -> list[Write]:
            until = time.monotonic() + seconds
            ledgers = await asyncio.gather(*(writer(ring, n, keys, until, seed + i)
                                             for i, n in enumerate(("a", "b", "s"))))
            return [w for ledger in ledgers for w in ledger]

        writes = await write_all(5, 10)
        # The cut: s keeps taking writes; a and b too, on the same keys.
        proxy.set_cut(True)
        slot = "rk_lis_a_to_s"
        wal_at_cut = await scalar(ring, "a", "SELECT pg_current_wal_lsn()::text")
        flushed_at_cut = await scalar(ring, "a", "SELECT confirmed_flush_lsn::text FROM "
                                      f"pg_replication_slots WHERE slot_name = '{slot}'")
        writes += await write_all(10, 20)
        # Large transactions (spooled and applied in parts of 2,000 rows) on every side,
        # on keys the writers do not touch: at a in the filter, at b out of it (deletes of
        # keys at s), at s its own; checked by the checksums below.
        ring.servers["a"].psql("INSERT INTO lis.samples (id, campus, status) SELECT g, 'a', "
                               "'big-a' FROM generate_series(10000, 14999) g")
        ring.servers["b"].psql("INSERT INTO lis.samples (id, campus, status) SELECT g, 'b', "
                               "'big-b' FROM generate_series(20000, 22999) g")
        sat.psql("INSERT INTO lis.samples (id, campus, status) SELECT g, 's', 'big-s' "
                 "FROM generate_series(30000, 32499) g")
        # 40 MB of WAL at the parent during the outage (a table outside the ring).
        ring.servers["a"].psql("INSERT INTO audit.fill (pad) SELECT repeat(md5(g::text), 32) "
                               "FROM generate_series(1, 40000) g")
        moved_sql = f"""
            SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal_at_cut}')::bigint AS written,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained,
                   confirmed_flush_lsn > '{flushed_at_cut}' AS moved
              FROM pg_replication_slots WHERE slot_name = '{slot}'"""
        rows: list[Any] = []

        async def wal_released() -> bool:
            # A slot's restart point moves at the next running-transactions record (a
            # checkpoint or the bgwriter's logs one): ask for one now.
            ring.servers["a"].psql("SELECT pg_log_standby_snapshot()")
            rows[:] = await fetch(ring, "a", moved_sql)
            return bool(rows[0]["moved"] and rows[0]["retained"] < 8 * 2**20)

        with contextlib.suppress(Exception):  # the asserts below say what it was
            await wait_until("the parent's slot for s releases WAL", wal_released, 30)
        spooled = await scalar(ring, "a", "SELECT count(*) FROM ringkeeper.satellite_spool")
        sat_lag = await scalar(ring, "s", "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), "
                               "confirmed_flush_lsn)::bigint FROM pg_replication_slots "
                               "WHERE slot_name = 'rk_lis_s_to_a'")
        st = status_of(port)["satellites"][0]
        print(f"outage: parent WAL written {rows[0]['written'] / 2**20:.1f} MB, retained by "
              f"{slot} {rows[0]['retained'] / 2**20:.2f} MB, spool {spooled} rows, "
              f"satellite backlog {sat_lag} bytes; status {st['connected']=} "
              f"{st['parentBacklogRows']=} {st['satelliteBacklogBytes']=}")
        assert rows[0]["moved"], "the parent's slot for s was not confirmed during the outage"
        assert rows[0]["written"] > 40 * 2**20
        assert rows[0]["retained"] < 8 * 2**20, rows[0]
        assert spooled > 0 and sat_lag > 0
        assert st["connected"] is False and st["parentBacklogRows"] > 0
        # Heal, and kill a's sidecar while it drains its spool into s.
        proxy.set_cut(False)

        async def draining() -> bool:
            n = await scalar(ring, "a", "SELECT count(*) FROM ringkeeper.satellite_spool")
            return bool(n < spooled)

        await wait_until("spool draining", draining, 60)
        os.killpg(ring.procs["a"].pid, signal.SIGKILL)
        ring.procs.pop("a").wait(10)
        left = await scalar(ring, "a", "SELECT count(*) FROM ringkeeper.satellite_spool")
        print(f"SIGKILL of a's sidecar with {left} spool rows left")
        start_sidecar(ring, "a", ring.root / "a.log", port)
        writes += await write_all(5, 30)
        t0 = time.monotonic()
        await ring.wait_converged(timeout=120)
        try:
            await wait_until("s has a's filtered rows", s_matches_a, 120)
        except AssertionError:
            want = {r["id"]: tuple(r) for r in await fetch(
                ring, "a", f"SELECT id, status, campus FROM lis.samples WHERE {IN_FILTER}")}
            have = {r["id"]: tuple(r) for r in await fetch(
                ring, "s", "SELECT id, status, campus FROM lis.samples")}
            diff = {k: (want.get(k), have.get(k)) for k in set(want) | set(have)
                    if want.get(k) != have.get(k)}
            print("a (filtered) vs s:", len(diff), sorted(diff.items())[:10])
            for k in sorted(diff)[:3]:
                print(k, sorted((w for w in writes if w.key == k), key=lambda w: w.at)[-3:])
                for n in ("a", "s"):
                    print(n, await fetch(ring, n, "SELECT id, status, campus, pg_xact_commit_"
                                         "timestamp(xmin) FROM lis.samples WHERE id = $1", k))
                    print(n, [(r["kind"], r["resolution"], r["local_origin"],
                               r["local_committed_at"], r["remote_origin"],
                               r["remote_committed_at"]) for r in await fetch(
                        ring, n, "SELECT * FROM ringkeeper.conflicts WHERE "
                        "key = $1::jsonb ORDER BY id", json.dumps([str(k)]))][-4:])
                    print(n, await fetch(ring, n, "SELECT * FROM audit.applied WHERE id = $1 "
                                         "ORDER BY n DESC LIMIT 3", k))
            raise
        await asyncio.sleep(2)
        print(f"converged {time.monotonic() - t0:.1f} s after the writers stopped; "
              f"{len(writes)} acknowledged writes")
        assert await s_matches_a()
        counts = {n: await scalar(ring, n, "SELECT count(*) FROM lis.samples WHERE id >= 10000")
                  for n in ("a", "b", "s")}
        assert counts == {"a": 10500, "b": 10500, "s": 7500}, counts
        latest = latest_writes(writes)
        assert sum(w.member == "s" for w in writes) > 50
        at_a: dict[int, tuple[str, str]] = {}
        for n in ("a", "b", "s"):
            have = {r["id"]: (r["status"], r["campus"]) for r in await fetch(
                ring, n, "SELECT id, status, campus FROM lis.samples")}
            at_a = at_a or have
            problems = ledger_problems(latest, have, None if n != "s" else
                                       {k: c for k, (_, c) in at_a.items()})
            assert problems == [], f"{n}: {problems[:10]}"
        # The checker fails on a row dropped on purpose.
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
        # Conflicts with the satellite's writes were logged.
        logged = 0
        for n in ("a", "s"):
            logged += await scalar(ring, n, "SELECT count(*) FROM ringkeeper.conflicts WHERE "
                                   "'s' IN (local_origin, remote_origin)")
        assert logged > 0
        assert await scalar(ring, "a", "SELECT count(*) FROM ringkeeper.satellite_spool") == 0
        # Nothing applied twice at the satellite or at its parent.
        for n in ("s", "a"):
            # A write is (key, status, commit time at its origin: the applied copy keeps
            # it); statuses repeat between the writer phases, commit times do not.
            twice = await fetch(ring, n, "SELECT id, status, pg_xact_commit_timestamp("
                                "xid::text::xid) AS at, count(*) FROM audit.applied "
                                "GROUP BY 1, 2, 3 HAVING count(*) > 1 LIMIT 5")
            assert twice == [], f"{n}: applied twice: {twice}"

        async def reported() -> bool:
            with contextlib.suppress(OSError, ValueError):
                s0 = status_of(port)["satellites"][0]
                return bool(s0["connected"] and s0["parentBacklogRows"] == 0)
            return False

        await wait_until("status: connected, no backlog", reported, 30)
    finally:
        for name in list(ring.procs):
            ring.kill_process(name)
        await proxy.close()
        ring.destroy()

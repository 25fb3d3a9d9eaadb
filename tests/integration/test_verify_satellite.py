"""`ringkeeper verify` with a satellite (issue 17), on real servers: a ring of two
members (a: PostgreSQL 17, b: 18) with their sync sidecars, and a satellite s (17) of a
keeping lis.samples filtered to campus In (a, s) and lis.results whole.

Rows in and out of the filter are written at a, b and s (s's own rows of another campus
stay at s and go up). Once s holds its rows, `ringkeeper verify` passes with a
"parent vs satellite" section whose row counts are the filtered ones. A satellite that
does not answer, or whose table does not exist at the parent, is reported as not
verified (exit 2), never as equal; the parent's sidecar finds such a table by name (the
Satellite's TableMissingAtParent condition). Then one of s's rows is changed behind the ring's back:
verify names exactly that key at s and exits 1, and `--repair --yes` leaves s alone. The
same comparison with the filter dropped names every parent row outside the filter as
missing at s: the filter is what makes the clean run pass, and the check can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pgserver import PgServer, free_port, unavailable
from ringkeeper.contracts.ringconfig import RingConfig, SatelliteInfo
from ringkeeper.core.satsync import Streaming, streaming_of
from ringkeeper.core.verify import MemberConn
from ringkeeper.core.verify_report import SatelliteState
from ringkeeper.sync.satellite import missing_tables
from ringkeeper.verify.satellites import verify_satellite
from waiting import await_until as wait_until

from .ringlocal import CHECKSUM, SCHEMA, LocalRing
from .test_convergence import fetch

pytestmark = pytest.mark.postgres

for _m in ("17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

IN_FILTER = "campus IN ('a', 's')"
FILTER = {"all": [{"column": "campus", "op": "In", "values": ["a", "s"]}]}
FILTERED = ("SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
            "ORDER BY id)), '') FROM lis.samples t WHERE " + IN_FILTER)


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringkeeper", "verify", "lis", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": "/nonexistent"})
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def with_satellite(cfg: dict[str, Any], dsn: str, extra: tuple[str, ...] = (),
                   results_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"name": "lis.results"}
    if results_filter is not None:
        results["filter"] = results_filter
    tables: list[dict[str, Any]] = [{"name": "lis.samples", "filter": FILTER}, results]
    tables += [{"name": t} for t in extra]
    return {**cfg, "satellites": {"s": {"parent": "a", "engine": "postgresql",
                                        "version": "17", "dsn": dsn, "tables": tables}}}


def write(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


async def scalar(ring: LocalRing, member: str, sql: str) -> Any:
    rows = await fetch(ring, member, sql)
    return rows[0][0] if rows else None


async def test_verify_compares_a_satellite_with_its_parents_filtered_rows(
        tmp_path: Path) -> None:
    ring = LocalRing(("17", "18"))
    ring.start_servers()
    sat = PgServer("17", name="s")
    try:
        sat.start()
        sat.psql(SCHEMA)
        ring.servers["s"] = sat
        base = json.loads(ring.config_path.read_text())
        write(ring.config_path, with_satellite(base, sat.dsn()))
        for n in ring.names:
            ring.start_sidecar(n)
        # In and out of the filter at a and b; s's own rows, one campus outside it.
        ring.servers["a"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g <= 100 "
            "THEN 'a' ELSE 'b' END, 'at-a' FROM generate_series(1, 200) g;"
            "INSERT INTO lis.results SELECT g, 'GLU', g * 0.5, 'ok' "
            "FROM generate_series(1, 50) g")
        ring.servers["b"].psql(
            "INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN g <= 1060 "
            "THEN 'b' ELSE 's' END, 'at-b' FROM generate_series(1001, 1100) g")
        sat.psql("INSERT INTO lis.samples (id, campus, status) SELECT g, CASE WHEN "
                 "g <= 2030 THEN 's' ELSE 'zz' END, 'at-s' FROM generate_series(2001, 2035) g")
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=90)

        async def s_has_its_rows() -> bool:
            return bool(
                await scalar(ring, "s", FILTERED) == await scalar(ring, "a", FILTERED)
                and await scalar(ring, "s", CHECKSUM["lis.results"])
                == await scalar(ring, "a", CHECKSUM["lis.results"])
                and await scalar(ring, "a", "SELECT count(*) FROM lis.samples") == 335)

        await wait_until("s holds a's filtered rows and s's rows are at a", s_has_its_rows,
                         120)
        assert await scalar(ring, "s", "SELECT count(*) FROM lis.samples") == 175

        # 1. Clean: the satellite section compares the filtered rows only.
        code, out, err = await cli("--ring-file", str(ring.config_path), "--full",
                                   "--settle-seconds", "1", "--report",
                                   str(tmp_path / "clean.json"))
        assert code == 0, out + err
        data = json.loads((tmp_path / "clean.json").read_text())
        [s] = data["satellites"]
        assert (s["satellite"], s["parent"], s["state"]) == ("s", "a", "Compared"), s
        by = {t["table"]: t for t in s["tables"]}
        assert by["lis.samples"]["compare"]["rows"] == {"a": 170, "s": 170}
        assert by["lis.samples"]["outside_filter"] == 5  # s's own 'zz' rows
        assert by["lis.samples"]["filter"] == """("campus" IN ('a', 's'))"""
        assert by["lis.results"]["compare"]["rows"] == {"a": 50, "s": 50}
        assert all(t["compare"]["differences"] == [] and t["error"] is None
                   for t in s["tables"])
        assert "  a vs s: PASSED" in out.splitlines()
        # The parent's sidecar looked its tables up at a: none missing.
        entry = ring.sidecars["a"].satellites.reports["s"].as_dict()
        assert entry["missingAtParent"] == [], entry
        assert streaming_of(entry)[0] is not Streaming.TABLE_MISSING_AT_PARENT

        await ring.stop_all()
        # 2. Not reachable, or a table missing at the parent: not verified, exit 2.
        down = write(tmp_path / "down.json", with_satellite(
            base, sat.dsn().replace(f":{sat.port}/", f":{free_port()}/")))
        code, out, err = await cli("--ring-file", str(down), "--full", "--settle-seconds",
                                   "1", "--report", str(tmp_path / "down-r.json"))
        assert code == 2, out + err
        [s] = json.loads((tmp_path / "down-r.json").read_text())["satellites"]
        assert s["state"] == "Unreachable" and s["tables"] == [], s
        assert "a vs s: NOT VERIFIED (Unreachable: cannot connect to member s" in out
        sat.psql("CREATE TABLE lis.extra (id int PRIMARY KEY)")
        # (and a filter value lis.results' key column cannot read: that table is not
        # verified either, with PostgreSQL's reason)
        extra = write(tmp_path / "extra.json", with_satellite(
            base, sat.dsn(), ("lis.extra",), {"all": [
                {"column": "sample_id", "op": "Equals", "values": ["not-a-number"]}]}))
        code, out, err = await cli("--ring-file", str(extra), "--full", "--settle-seconds",
                                   "1", "--report", str(tmp_path / "extra-r.json"))
        assert code == 2, out + err
        [s] = json.loads((tmp_path / "extra-r.json").read_text())["satellites"]
        assert [t["table"] for t in s["tables"]] == ["lis.samples", "lis.results",
                                                      "lis.extra"]
        assert s["tables"][2]["compare"] is None
        assert s["tables"][2]["error"] == "table lis.extra does not exist on member a"
        assert s["tables"][0]["compare"]["differences"] == []
        assert s["tables"][1]["compare"] is None
        assert s["tables"][1]["error"].startswith("InvalidTextRepresentationError: "), s
        # The sidecar's lookup of the same (names as bind parameters, quoted by format):
        # the Satellite's Streaming condition would say TableMissingAtParent.
        conn = await ring.conn("a")
        try:
            missing = await missing_tables(conn, ("lis.samples", "lis.extra", 'x"y.z',
                                                  "lis.results"))
        finally:
            await conn.close()
        assert missing == ("lis.extra", 'x"y.z')
        reason, message = streaming_of({**entry, "missingAtParent": list(missing)})
        assert reason is Streaming.TABLE_MISSING_AT_PARENT and "lis.extra" in message

        # 3. Behind the ring's back: one of s's rows in the filter changes, and one
        # outside it (not compared: s's rows outside its filter are its own business).
        sat.psql("UPDATE lis.samples SET status = 'tampered' WHERE id = 42;"
                 "UPDATE lis.samples SET status = 'tampered' WHERE id = 2033")
        code, out, err = await cli("--ring-file", str(ring.config_path), "--settle-seconds",
                                   "1", "--report", str(tmp_path / "diff.json"))
        assert code == 1, out + err
        rep = json.loads((tmp_path / "diff.json").read_text())
        assert rep["mode"] == "incremental"  # satellites are compared in full anyway
        assert all(t["differences"] == [] for t in rep["tables"])  # the members agree
        [s] = rep["satellites"]
        [d] = [d for t in s["tables"] for d in t["compare"]["differences"]]
        assert (d["table"], d["key"], d["reference"], d["differs_on"]) == (
            "lis.samples", ["42"], "a", ["s"]), d
        assert d["versions"]["s"]["values"]["status"] == "tampered"
        assert d["versions"]["a"]["values"]["status"] == "at-a"
        assert "  a vs s: 1 differing key(s)" in out.splitlines()
        line = next(x for x in out.splitlines() if x.strip().startswith("lis.samples  42"))
        assert "differs" in line and " s " in line
        assert "does not repair satellites" in err

        # 4. --repair never touches a satellite.
        code, out, err = await cli("--ring-file", str(ring.config_path), "--full",
                                   "--settle-seconds", "1", "--repair", "--yes",
                                   "--report", str(tmp_path / "repair.json"))
        assert code == 1, out + err
        assert sat.psql("SELECT status FROM lis.samples WHERE id = 42") == "tampered"

        # 5. The check can fail: with the filter dropped from the comparison, every row
        # of a outside the filter is named missing at s.
        cfg = RingConfig.load(ring.config_path)
        info = cfg.satellites[0]
        unfiltered = SatelliteInfo(name=info.name, parent=info.parent, dsn=info.dsn,
                                   tables=(("lis.samples", None),))
        parent = MemberConn.for_ring("lis", "a", ring.servers["a"].dsn())
        broken = await verify_satellite(cfg, unfiltered, parent, settle_seconds=1)
        assert broken.state is SatelliteState.COMPARED and not broken.passed
        [t] = broken.tables
        assert t.compare is not None
        gone = {int(x.key[0]) for x in t.compare.differences if x.missing_on == ["s"]}
        assert gone == set(range(101, 201)) | set(range(1001, 1061))
        assert sorted(int(x.key[0]) for x in t.compare.differences if x.differs_on) == [42, 2033]
    finally:
        for name in list(ring.procs):
            ring.kill_process(name)
        if ring.tasks:
            await ring.stop_all()
        ring.destroy()

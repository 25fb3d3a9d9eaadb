"""Satellite bench (issue 17): an outage with writes on both sides, then the catch-up.

Local servers, like tests/integration/test_satellite_sync.py: a ring of two members
(a: PostgreSQL RING_MAJORS[0], b: RING_MAJORS[1]) whose `ringkeeper sync` sidecars run as
processes, and a satellite s (SAT_MAJOR) of a with lis.samples filtered to campus In (a, s),
reached by a's sidecar through a TCP proxy the bench cuts.

1. Cut s off. Write OFFLINE_ROWS rows at s and OFFLINE_ROWS at the ring (half at a, half
   at b), all inside s's filter so every one must travel: s -> a -> b and a, b -> s.
   Writers commit TXN_ROWS rows per transaction; every acknowledged commit goes into a
   ledger (its key range and value). During the outage a sampler reads, on the parent a,
   the WAL its slot for s retains (pg_current_wal_lsn() - restart_lsn of rk_lis_a_to_s);
   `parent_wal_retained_mb` is the maximum seen. The bgwriter's running-transactions
   record (every 15 s with activity) is what lets restart_lsn move: nothing forces it.
2. Heal. `catchup_s` runs from the heal to the moment every ledger row is at a, b and s
   with its value, the parent's spool is empty and the satellite's slot lag is below
   core.satsync.SYNCED_BYTES (both backlogs empty). `catchup_rows_per_s` is
   2 * OFFLINE_ROWS / catchup_s (both directions' rows).
3. `lost`: ledger rows missing or different at any of a, b, s (must be 0). The checker
   is shown to fail first: the same check over a copy of s's rows with one dropped
   must count exactly 1.

`offline_hours` is the outage as measured (cut to heal): a bench cannot wait days. The
retained WAL does not grow with the outage's length because the parent confirms its slot
for s as it spools, so the figure measured over minutes holds for days; the spool grows
instead (`parent_spool_mb`, the table's size at the heal).

`satellite_rss_mb`: the peak, sampled every SAMPLE_S, of the sum of VmHWM (peak resident)
over every process of the satellite's PostgreSQL (postmaster and all its children) plus
the VmHWM of the Ringkeeper process serving it (a's sidecar, whole: it also runs a's ring
links, so this is an upper bound of the satellite's share). VmHWM counts shared buffers
once per process that touched them, so the sum overstates; `satellite_pss_mb` is the peak
of the same processes' summed Pss (shared pages divided among their users), the fairer
figure.

Where the time goes: during the catch-up the bench samples pg_stat_activity on a and s
(active statements of the sidecar's sessions) and the CPU seconds of each process group
(a's sidecar, b's sidecar, s's server, a's server, b's server); both are printed, and the
JSON carries the CPU split. Knobs: OFFLINE_ROWS (100000), TXN_ROWS (1000), RING_MAJORS
(17,18), SAT_MAJOR (17), OUTAGE_MIN_S (30: the least outage,
the bench stays cut after the writes until then, so the parent spools under the cut),
CATCHUP_TIMEOUT (1200), SAMPLE_S (0.5). Progress goes to stdout; the last line is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "tests" / "integration")]

from integration.ringlocal import SCHEMA, LocalRing  # noqa: E402
from integration.test_satellite_sync import Cuttable, start_sidecar, status_of  # noqa: E402
from pgserver import PgServer, free_port  # noqa: E402
from ringkeeper.core.satsync import SYNCED_BYTES  # noqa: E402

OFFLINE_ROWS = int(os.environ.get("OFFLINE_ROWS", "100000"))
TXN_ROWS = int(os.environ.get("TXN_ROWS", "1000"))
RING_MAJORS = tuple(os.environ.get("RING_MAJORS", "17,18").split(","))
SAT_MAJOR = os.environ.get("SAT_MAJOR", "17")
OUTAGE_MIN_S = float(os.environ.get("OUTAGE_MIN_S", "30"))
CATCHUP_TIMEOUT = float(os.environ.get("CATCHUP_TIMEOUT", "1200"))
SAMPLE_S = float(os.environ.get("SAMPLE_S", "0.5"))
FILTER = ("a", "s")
SLOT = "rk_lis_a_to_s"
UP_SLOT = "rk_lis_s_to_a"
BASE = 1_000_000_000  # bench keys start here, far from anything else
T0 = time.monotonic()
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


# -- the ledger -----------------------------------------------------------------------
Ledger = list[tuple[int, int, str]]  # acknowledged commits: (first key, last key, status)


def expected_rows(ledger: Ledger) -> dict[int, str]:
    return {k: status for lo, hi, status in ledger for k in range(lo, hi + 1)}


def ledger_lost(want: dict[int, str], have: dict[int, str]) -> int:
    """Ledger rows missing from `have` or with another value there."""
    return sum(1 for k, v in want.items() if have.get(k) != v)


async def write_rows(dsn: str, member: str, campus: str, first: int, rows: int,
                     ledger: Ledger) -> None:
    """`rows` rows in transactions of TXN_ROWS; each commit is in the ledger once the
    server acknowledged it (an error ends the writer: the bench then fails loudly)."""
    conn = await asyncpg.connect(dsn)
    status = f"off-{member}"
    try:
        for lo in range(first, first + rows, TXN_ROWS):
            hi = min(lo + TXN_ROWS, first + rows) - 1
            await conn.execute(
                "INSERT INTO lis.samples (id, campus, patient, status, result, flags) "
                "SELECT g, $3, 'p' || (g % 5000), $4, (g % 1000) / 7.0, ARRAY['bench'] "
                "FROM generate_series($1::bigint, $2::bigint) g", lo, hi, campus, status)
            ledger.append((lo, hi, status))
    finally:
        await conn.close()


async def rows_at(dsn: str, lo: int, hi: int) -> dict[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        recs = await conn.fetch("SELECT id, status FROM lis.samples WHERE id BETWEEN $1 AND $2",
                                lo, hi)
    finally:
        await conn.close()
    return {r["id"]: r["status"] for r in recs}


# -- processes --------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{d}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def postmaster(srv: PgServer) -> int:
    return int((srv.data / "postmaster.pid").read_text().split()[0])


def status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # incl. waited children
    return total / TICK


# -- the bench --------------------------------------------------------------------------
async def bench() -> dict[str, Any]:
    ring = LocalRing(RING_MAJORS)
    sat = PgServer(SAT_MAJOR, name="s")
    proxy = Cuttable(0)
    loop = asyncio.get_running_loop()
    # The proxy's pipes are cancelled at the end: not an error worth a traceback.
    loop.set_exception_handler(lambda lp, ctx: None if isinstance(
        ctx.get("exception"), asyncio.CancelledError) else lp.default_exception_handler(ctx))
    try:
        ring.start_servers()
        sat.start()
        sat.psql(SCHEMA)
        ring.servers["s"] = sat
        proxy.target = sat.port
        await proxy.start()
        port = free_port()
        start_sidecar(ring, "a", ring.root / "a.log", port)
        start_sidecar(ring, "b", ring.root / "b.log")
        say(f"ring a ({RING_MAJORS[0]}), b ({RING_MAJORS[1]}), satellite s ({SAT_MAJOR}); "
            f"logs in {ring.root}")

        async def wait(what: str, check: Any, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                    if await check():
                        return
                await asyncio.sleep(0.2)
            raise RuntimeError(f"timed out after {timeout:.0f}s: {what}")

        async def ring_streaming() -> bool:
            links = status_of(port)["links"]
            return bool(links) and all(lk["state"] == "Streaming" for lk in links)

        await wait("ring a, b streaming", ring_streaming, 90)
        cfg = json.loads(ring.config_path.read_text())
        cfg["satellites"] = {"s": {
            "parent": "a", "engine": "postgresql", "version": SAT_MAJOR,
            "dsn": sat.dsn().replace(f":{sat.port}/", f":{proxy.port}/"),
            "tables": [{"name": "lis.samples", "filter": {"all": [
                {"column": "campus", "op": "In", "values": list(FILTER)}]}}]}}
        tmp = ring.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        tmp.replace(ring.config_path)

        async def sat_streaming() -> bool:
            s0 = status_of(port)["satellites"][0]
            return bool(s0["connected"] and s0["up"]["state"] == "Streaming"
                        and s0["down"]["state"] == "Streaming")

        await wait("satellite s connected", sat_streaming, 90)
        say("satellite streaming; cutting it off")

        pids = {"sidecar_a": lambda: tree(ring.procs["a"].pid),
                "sidecar_b": lambda: tree(ring.procs["b"].pid),
                "server_s": lambda: tree(postmaster(sat)),
                "server_a": lambda: tree(postmaster(ring.servers["a"])),
                "server_b": lambda: tree(postmaster(ring.servers["b"]))}
        peak = {"hwm_kb": 0, "pss_kb": 0, "retained": 0}
        phase = {"name": "outage"}
        statements: Counter[str] = Counter()
        a_dsn, s_dsn = ring.servers["a"].dsn(), sat.dsn()

        async def sampler() -> None:
            a_conn = await asyncpg.connect(a_dsn)
            s_conn = await asyncpg.connect(s_dsn)
            try:
                while True:
                    serving = pids["server_s"]() + pids["sidecar_a"]()
                    peak["hwm_kb"] = max(peak["hwm_kb"],
                                         sum(status_kb(p, "VmHWM") for p in serving))
                    peak["pss_kb"] = max(peak["pss_kb"], sum(pss_kb(p) for p in serving))
                    if phase["name"] == "outage":
                        r = await a_conn.fetchval(
                            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                            " FROM pg_replication_slots WHERE slot_name = $1", SLOT)
                        peak["retained"] = max(peak["retained"], int(r or 0))
                    else:
                        for where, c in (("a", a_conn), ("s", s_conn)):
                            for q in await c.fetch(
                                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
                                    " AS q FROM pg_stat_activity WHERE state = 'active' "
                                    "AND pid <> pg_backend_pid() AND backend_type = "
                                    "'client backend'"):
                                statements[f"{where}: {q['q']}"] += 1
                    await asyncio.sleep(SAMPLE_S)
            finally:
                await a_conn.close()
                await s_conn.close()

        proxy.set_cut(True)
        t_cut = time.monotonic()
        sample_task = asyncio.create_task(sampler())
        ledger: Ledger = []
        half = OFFLINE_ROWS // 2
        await asyncio.gather(
            write_rows(sat.dsn(), "s", "s", BASE, OFFLINE_ROWS, ledger),
            write_rows(ring.servers["a"].dsn(), "a", "a", BASE + OFFLINE_ROWS, half, ledger),
            write_rows(ring.servers["b"].dsn(), "b", "a", BASE + OFFLINE_ROWS + half,
                       OFFLINE_ROWS - half, ledger))
        say(f"offline writes acknowledged: {sum(hi - lo + 1 for lo, hi, _ in ledger)} rows "
            f"in {len(ledger)} transactions, {time.monotonic() - t_cut:.1f}s after the cut")
        await asyncio.sleep(max(0.0, OUTAGE_MIN_S - (time.monotonic() - t_cut)))
        a = await asyncpg.connect(a_dsn)
        try:
            spool_rows = await a.fetchval("SELECT count(*) FROM ringkeeper.satellite_spool")
            spool_mb = await a.fetchval(
                "SELECT pg_total_relation_size('ringkeeper.satellite_spool')") / 2**20
        finally:
            await a.close()
        st = status_of(port)["satellites"][0]
        say(f"before the heal: parent spool {spool_rows} rows ({spool_mb:.1f} MB), slot "
            f"{SLOT} retained at most {peak['retained'] / 2**20:.2f} MB, status connected="
            f"{st['connected']} parentBacklogRows={st['parentBacklogRows']} "
            f"satelliteBacklogBytes={st['satelliteBacklogBytes']}")
        if st["connected"]:
            raise RuntimeError("the parent's sidecar says s is connected during the cut")
        offline_s = time.monotonic() - t_cut
        phase["name"] = "catchup"
        cpu0 = {k: cpu_s(f()) for k, f in pids.items()}
        proxy.set_cut(False)
        t_heal = time.monotonic()
        say("healed")
        want = expected_rows(ledger)
        lo, hi = BASE, BASE + 2 * OFFLINE_ROWS
        dsns = {n: ring.servers[n].dsn() for n in ("a", "b", "s")}

        async def caught_up() -> bool:
            counts = {}
            for n, dsn in dsns.items():
                c = await asyncpg.connect(dsn)
                try:
                    counts[n] = await c.fetchval(
                        "SELECT count(*) FROM lis.samples WHERE id BETWEEN $1 AND $2", lo, hi)
                    if n == "a":
                        counts["spool"] = await c.fetchval(
                            "SELECT count(*) FROM ringkeeper.satellite_spool")
                    if n == "s":
                        counts["up_lag"] = await c.fetchval(
                            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                            "::bigint FROM pg_replication_slots WHERE slot_name = $1", UP_SLOT)
                finally:
                    await c.close()
            say(f"catch-up: {counts}")
            return all(counts[n] == len(want) for n in dsns) and counts["spool"] == 0 and \
                (counts["up_lag"] or 0) < SYNCED_BYTES

        deadline = time.monotonic() + CATCHUP_TIMEOUT
        done = False
        while time.monotonic() < deadline and not done:
            done = await caught_up()
            if not done:
                await asyncio.sleep(0.5)
        catchup_s = time.monotonic() - t_heal
        cpu = {k: round(cpu_s(f()) - cpu0[k], 1) for k, f in pids.items()}
        sample_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sample_task
        have = {n: await rows_at(dsn, lo, hi) for n, dsn in dsns.items()}
        lost = {n: ledger_lost(want, rows) for n, rows in have.items()}
        # The checker must see a row dropped on purpose.
        some = next(iter(have["s"]))
        dropped = dict(have["s"])
        del dropped[some]
        if ledger_lost(want, dropped) != lost["s"] + (1 if some in want else 0):
            raise RuntimeError("the ledger checker missed a row dropped on purpose")
        say(f"checker self-test: one row dropped at s -> lost {ledger_lost(want, dropped)}")
        say(f"lost per place: {lost}; caught up: {done} in {catchup_s:.1f}s")
        say(f"CPU seconds during the catch-up: {cpu}")
        say("active statements sampled during the catch-up (count x SAMPLE_S seconds):")
        for q, n in statements.most_common(8):
            say(f"  {n:5d}  {q}")
        total = 2 * OFFLINE_ROWS
        return {
            "bench": "satellite",
            "offline_hours": round(offline_s / 3600, 5),
            "offline_s": round(offline_s, 1),
            "offline_rows": OFFLINE_ROWS,
            "offline_rows_total": total,
            "catchup_rows_per_s": round(total / catchup_s) if done else 0,
            "catchup_s": round(catchup_s, 1) if done else None,
            "caught_up": done,
            "parent_wal_retained_mb": round(peak["retained"] / 2**20, 2),
            "parent_spool_mb": round(spool_mb, 1),
            "parent_spool_rows": spool_rows,
            "satellite_rss_mb": round(peak["hwm_kb"] / 1024, 1),
            "satellite_pss_mb": round(peak["pss_kb"] / 1024, 1),
            "catchup_cpu_s": cpu,
            "lost": sum(lost.values()),
            "txn_rows": TXN_ROWS,
        }
    finally:
        for name in list(ring.procs):
            ring.kill_process(name)
        await proxy.close()
        ring.destroy()


def main() -> None:
    result = asyncio.run(bench())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

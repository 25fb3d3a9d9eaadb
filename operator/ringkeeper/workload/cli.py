"""`ringkeeper workload lis` and `ringkeeper workload check`: the LIS workload from the
command line, against any servers reachable by DSN (a local ring, a cluster's campuses
through a port-forward, a drill's members).

DSNs carry passwords, so they go to asyncpg only: never to a shell, never printed (only
site and member names are). `NAME=env:VAR` reads the DSN from an environment variable so
it need not sit in the process list. Names are DNS-1123 labels, checked before any use,
and reach SQL only as bind parameters.

Exit codes: `lis` 0 when the run finished (errors are counted in the summary), 2 when it
could not start; `check` 0 when every acknowledged write is where it should be, 1 when
anything is missing, stale or disagrees, 2 when the check could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from .check import CheckReport, check
from .flow import Mix
from .generator import DEFAULT_SECONDS, RunResult, SiteTarget, plan, run
from .keys import valid_site_name
from .ledger import Ledger, LedgerError
from .schema import SCHEMA, SiteClash, schema_name


class Usage(Exception):
    """A command line that cannot be run: one line, exit 2."""


def parse_dsn(text: str) -> tuple[str, str]:
    name, sep, dsn = text.partition("=")
    if not sep:
        raise Usage(f"--dsn {name!r}: expected NAME=postgresql://... or NAME=env:VAR")
    try:
        valid_site_name(name)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    if dsn.startswith("env:"):
        var = dsn[4:]
        if var not in os.environ:
            raise Usage(f"--dsn {name}: environment variable {var!r} is not set")
        dsn = os.environ[var]
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise Usage(f"--dsn {name}: not a postgresql:// URL")
    return name, dsn


def _dsns(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, dsn = parse_dsn(item)
        if name in out:
            raise Usage(f"--dsn {name} given twice")
        out[name] = dsn
    return out


def _numbers(items: list[str], names: list[str]) -> dict[str, int]:
    numbers = {n: i for i, n in enumerate(names, 1)}
    for item in items:
        name, _, num = item.partition("=")
        if name not in numbers or not num.isdigit():
            raise Usage(f"--site-number {item!r}: expected NAME=N for a site given by --dsn")
        numbers[name] = int(num)
    return numbers


def _fraction(text: str) -> float:
    x = float(text)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="workload", metavar="WORKLOAD", required=True)
    lis = sub.add_parser(
        "lis", help="write a laboratory (LIS) day at every site, keeping a ledger",
        description="Create the lis schema at every site and write patients, visits, orders, "
        "specimens, results, reviews and reports there at the given pace; corrections made "
        "from two sites at once create cross-campus conflicts. Progress goes to stderr, one "
        "JSON summary line to stdout. Default: a large hospital's day (20,000 specimens, "
        f"about 300,000 results) in {DEFAULT_SECONDS / 60:g} minutes.")
    lis.add_argument("--dsn", action="append", required=True, metavar="SITE=URL",
                     help="a site and its server (repeatable); URL or env:VAR")
    lis.add_argument("--site-number", action="append", default=[], metavar="SITE=N",
                     help="the site's number in the keys (default: its position in --dsn); "
                     "unique in the ring, kept in lis.sites")
    lis.add_argument("--specimens", type=int, help="specimens over all sites (0: no limit)")
    lis.add_argument("--duration", type=float, help="seconds to run at most")
    lis.add_argument("--rate", type=float, help="specimens per second over all sites "
                     "(0: as fast as the servers go)")
    lis.add_argument("--workers", type=int, default=4, help="connections per site (default 4)")
    lis.add_argument("--corrections", type=_fraction, default=Mix.correction,
                     help=f"share of specimens with a corrected result (default {Mix.correction})")
    lis.add_argument("--conflicts", type=_fraction, default=Mix.conflict,
                     help="share of corrections also made at once from another site "
                     f"(default {Mix.conflict})")
    lis.add_argument("--seed", type=int, help="random seed, for a repeatable mix")
    lis.add_argument("--ledger", type=Path, help="write every acknowledged commit to this "
                     "new JSON-lines file")
    lis.add_argument("--append", action="store_true",
                     help="continue an existing --ledger (only one of the same servers)")
    lis.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                     help="seconds between progress lines on stderr (default 5)")
    lis.add_argument("--schema", type=_schema, default=SCHEMA,
                     help=f"schema to create the tables in (default {SCHEMA}; drills use "
                     "ringkeeper_drill, never the hospital's own)")
    lis.set_defaults(func=run_lis)

    chk = sub.add_parser(
        "check", help="prove every acknowledged commit of a ledger is on the members",
        description="Read a ledger written by `workload lis --ledger` and look up every key at "
        "every member: missing rows, stale versions, deleted rows that came back and contested "
        "rows the members disagree on are reported. Exit 0: all there, 1: problems.")
    chk.add_argument("--ledger", type=Path, required=True)
    chk.add_argument("--dsn", action="append", required=True, metavar="MEMBER=URL",
                     help="a member that should hold the data (repeatable); URL or env:VAR")
    chk.add_argument("--own", action="store_true",
                     help="members are independent servers named like the sites: each holds "
                     "only its own site's writes (default: a ring, every member holds all)")
    chk.add_argument("--wait", type=float, default=0.0, metavar="S",
                     help="re-check every 2 s for up to S seconds while replication catches up")
    chk.add_argument("--examples", type=int, default=20, help="problems to show (default 20)")
    chk.add_argument("--schema", type=_schema, default=SCHEMA,
                     help=f"the schema the workload wrote (default {SCHEMA})")
    chk.set_defaults(func=run_check)


def _schema(text: str) -> str:
    try:
        return schema_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _progress(r: RunResult) -> None:
    print(f"workload lis: {r.elapsed:6.1f}s specimens={r.total('specimens')} "
          f"results={r.total('results')} commits={r.total('commits')} "
          f"corrections={r.total('corrections')}+{r.total('cross_site_corrections')} "
          f"errors={sum(sum(c.values()) for c in r.errors.values())}", file=sys.stderr,
          flush=True)


def run_lis(args: argparse.Namespace) -> int:
    try:
        dsns = _dsns(args.dsn)
        numbers = _numbers(args.site_number, list(dsns))
        sites = [SiteTarget(n, numbers[n], d, args.schema) for n, d in dsns.items()]
        the_plan = plan(args.specimens, args.duration, args.rate, args.workers,
                        Mix(correction=args.corrections, conflict=args.conflicts), args.seed)
    except (Usage, ValueError) as exc:
        print(f"ringkeeper workload lis: {exc}", file=sys.stderr)
        return 2
    try:
        ledger = Ledger(args.ledger, append=args.append)
    except (OSError, LedgerError) as exc:
        print(f"ringkeeper workload lis: ledger: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(sites, the_plan, ledger, _progress, args.progress_every))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
            SiteClash, LedgerError) as exc:
        print(f"ringkeeper workload lis: could not start: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    finally:
        ledger.close()
    summary: dict[str, Any] = {
        "workload": "lis", "plan": {"specimens": the_plan.specimens,
                                    "duration_s": the_plan.duration, "rate": the_plan.rate,
                                    "workers": the_plan.workers},
        **result.as_dict(), "ledger": {"path": str(args.ledger) if args.ledger else None,
                                       "keys": len(ledger), "sites": ledger.summary()}}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


async def _check(dsns: dict[str, str], ledger: Ledger, own: bool, wait: float,
                 examples: int, schema: str = SCHEMA) -> CheckReport:
    conns: dict[str, Any] = {}
    try:
        for name, dsn in dsns.items():
            conns[name] = await asyncpg.connect(dsn, timeout=10)
        holds = {m: {m} for m in conns} if own else None
        deadline = time.monotonic() + wait
        while True:
            report = await check(conns, ledger, holds, examples, schema)
            if report.passed or time.monotonic() >= deadline:
                return report
            await asyncio.sleep(2)
    finally:
        for c in conns.values():
            await c.close()


def run_check(args: argparse.Namespace) -> int:
    try:
        dsns = _dsns(args.dsn)
        ledger = Ledger.load(args.ledger)
        report = asyncio.run(_check(dsns, ledger, args.own, args.wait, args.examples,
                                    args.schema))
    except (Usage, LedgerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"ringkeeper workload check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    out = report.as_dict()
    for member, m in out["members"].items():
        print(f"workload check: {member}: checked={m['checked']} ok={m['ok']} "
              + " ".join(f"{k}={m[k]}" for k in ("missing", "stale", "unexpected",
                                                    "disagree")), file=sys.stderr)
    for f in out["examples"]:
        print(f"workload check: {f['member']}: {f['problem']} {f['table']} key {f['key']} "
              f"(found rev {f['found']}, allowed {f['allowed']})", file=sys.stderr)
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0 if report.passed else 1
